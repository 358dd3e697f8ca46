"""Option values: what the configuration says, in the octets RFC 2132 and its successors want.

Each encoder takes the configuration's text form and raises ValueError naming what is wrong, so
`[dhcp]` is checked when the config is loaded, not when the first client asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from netpost.dhcp.packet import Option, printable


def addresses(values: Sequence[str]) -> bytes:
    """A list of IPv4 addresses (options 3, 6, 42...)."""
    return b"".join(IPv4Address(v.strip()).packed for v in values)


def u32(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "big")


def u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{value} does not fit in 16 bits")
    return value.to_bytes(2, "big")


def domain_labels(name: str) -> list[bytes]:
    """RFC 1035 3.1 labels of a domain name (no root label), ValueError when not one."""
    name = name.strip().rstrip(".")
    if not name:
        raise ValueError("empty domain name")
    labels = [label.encode("idna") if not label.isascii() else label.encode()
              for label in name.split(".")]
    for label in labels:
        if not 1 <= len(label) <= 63:
            raise ValueError(f"{name!r}: each label needs 1 to 63 octets")
    if sum(len(label) + 1 for label in labels) + 1 > 255:
        raise ValueError(f"{name!r} is longer than 255 octets")
    return labels


def search_list(names: Sequence[str]) -> bytes:
    """RFC 3397 2: the names in RFC 1035 wire form, with RFC 1035 4.1.4 compression
    (a pointer is an offset into the option's own value)."""
    out = bytearray()
    seen: dict[tuple[bytes, ...], int] = {}  # a suffix of labels -> where it was written
    for name in names:
        labels = tuple(label.lower() for label in domain_labels(name))
        for i in range(len(labels)):
            suffix = labels[i:]
            if suffix in seen:
                out += (0xC000 | seen[suffix]).to_bytes(2, "big")
                break
            if len(out) < 0x4000:
                seen[suffix] = len(out)
            out += bytes((len(labels[i]),)) + labels[i]
        else:
            out += b"\0"
    return bytes(out)


def parse_search_list(value: bytes) -> list[str]:
    """The names of an RFC 3397 value (for tests and `netpost leases show`); ValueError."""
    names: list[str] = []
    i = 0
    while i < len(value):
        labels: list[str] = []
        pos, jumps, end = i, 0, None
        while True:
            if pos >= len(value):
                raise ValueError("name runs past the end")
            length = value[pos]
            if length & 0xC0 == 0xC0:
                if pos + 1 >= len(value) or jumps > 64:
                    raise ValueError("bad compression pointer")
                if end is None:
                    end = pos + 2
                pos = ((length & 0x3F) << 8) | value[pos + 1]
                jumps += 1
                continue
            if length == 0:
                if end is None:
                    end = pos + 1
                break
            labels.append(printable(value[pos + 1:pos + 1 + length]))
            pos += 1 + length
        names.append(".".join(labels))
        i = end
    return names


def static_routes(routes: Sequence[str]) -> bytes:
    """RFC 3442: "DEST/PREFIX via ROUTER" each; the destination's significant octets only."""
    out = bytearray()
    for route in routes:
        dest_text, sep, router_text = route.partition(" via ")
        if not sep:
            raise ValueError(f"route {route!r}: expected 'NETWORK/PREFIX via ROUTER'")
        network = IPv4Network(dest_text.strip(), strict=True)
        router = IPv4Address(router_text.strip())
        significant = (network.prefixlen + 7) // 8
        out += bytes((network.prefixlen,)) + network.network_address.packed[:significant]
        out += router.packed
    return bytes(out)


@dataclass(frozen=True)
class ClientFQDN:
    """RFC 4702 2: option 81 as a client sends it."""

    flags: int
    name: str


def parse_client_fqdn(value: bytes) -> ClientFQDN | None:
    """Option 81's flags and name (wire or deprecated ASCII encoding); None when malformed."""
    if len(value) < 3:
        return None
    flags, name = value[0], value[3:]
    if flags & 0x04:  # E: canonical wire format (RFC 4702 2.3.1)
        labels: list[str] = []
        i = 0
        while i < len(name) and name[i] != 0:
            length = name[i]
            if length > 63 or i + 1 + length > len(name):
                return None
            labels.append(printable(name[i + 1:i + 1 + length]))
            i += 1 + length
        return ClientFQDN(flags, ".".join(labels))
    return ClientFQDN(flags, printable(name))


# --- options given by code in the configuration ("arbitrary options") --------------------------

# The type of each option [dhcp] knows by number; others take "hex:..." or a string.
_ADDRESS_LISTS = {Option.ROUTER, Option.DNS_SERVERS, Option.NTP_SERVERS, 4, 5, 7, 9, 41, 44, 45,
                  48, 49, 65, 69, 70, 71, 72, 73, 74, 75, 76}
_SINGLE_ADDRESSES = {Option.SUBNET_MASK, Option.BROADCAST_ADDRESS, 16, 32}
_U32 = {2, 24, 35, 38}
_U16 = {Option.INTERFACE_MTU, 13, 22}
_TEXT = {Option.DOMAIN_NAME, Option.HOSTNAME, 14, 17, 18, 40, 47, 64, 66, 67}
_U8 = {19, 20, 23, 27, 29, 30, 31, 34, 36, 37, 39, 46}


def option_value(code: int, value: object) -> bytes:
    """The octets of option `code` from a config value: "hex:0a0b..." always works; known
    codes also take their natural form (addresses, numbers, text, lists)."""
    if not 1 <= code <= 254 or code in (Option.OVERLOAD, Option.MESSAGE_TYPE,
                                        Option.SERVER_IDENTIFIER, Option.LEASE_TIME,
                                        Option.RENEWAL_TIME, Option.REBINDING_TIME,
                                        Option.RELAY_AGENT_INFORMATION):
        raise ValueError(f"option {code} cannot be set in the configuration")
    if isinstance(value, str) and value.startswith("hex:"):
        return bytes.fromhex(value[4:].replace(":", "").replace(" ", ""))
    if code == Option.DOMAIN_SEARCH:
        return search_list(_strings(value, code))
    if code == Option.CLASSLESS_STATIC_ROUTE:
        return static_routes(_strings(value, code))
    if code in _ADDRESS_LISTS or code in _SINGLE_ADDRESSES:
        values = _strings(value, code)
        if code in _SINGLE_ADDRESSES and len(values) != 1:
            raise ValueError(f"option {code} takes one address")
        return addresses(values)
    if code in _U32 or code in _U16 or code in _U8:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"option {code} takes a number")
        size = 4 if code in _U32 else 2 if code in _U16 else 1
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"option {code}: {value} does not fit in {size} octets")
        return value.to_bytes(size, "big")
    if isinstance(value, str):
        if code not in _TEXT and not value.isprintable():
            raise ValueError(f"option {code}: use \"hex:...\" for binary values")
        return value.encode()
    raise ValueError(f"option {code}: give a string, or \"hex:...\" for raw octets")


def _strings(value: object, code: int) -> list[str]:
    if isinstance(value, str):
        return [v for v in (p.strip() for p in value.split(",")) if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"option {code} takes a string or a list of strings")
