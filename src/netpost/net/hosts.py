"""Host addresses compared as hosts (pure; the FTP engine and the channels both use it)."""

from __future__ import annotations

import ipaddress


def same_host(a: str, b: str) -> bool:
    """Do two textual addresses name the same host?  IPv4-mapped IPv6 equals its IPv4 address,
    zone ids are ignored, and each address is compared in its canonical form."""
    return _canonical(a) == _canonical(b)


def _canonical(text: str) -> str:
    text = text.split("%", 1)[0].lower()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
