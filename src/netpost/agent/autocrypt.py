"""Autocrypt Level 1 (https://autocrypt.org/level1.html), opt-in with `autocrypt = true`:
outgoing mail carries the sender's key in an `Autocrypt:` header (section 2.1), and a
message read with one teaches the key ring the sender's key when it has none for that
address yet (a simplified section 2.3: no peer state table, a key already there wins).
"""

from __future__ import annotations

import base64
from email.message import EmailMessage
from email.utils import parseaddr

from netpost.agent import AgentError
from netpost.agent.pgp import Keyring, cert_addresses


def header_value(keyring: Keyring, address: str) -> str | None:
    """`addr=...; prefer-encrypt=mutual; keydata=...` for our key, or None without one."""
    try:
        keyring.secret_for(address)
    except AgentError:
        return None
    cert = keyring.cert_for(address)
    data = base64.b64encode(bytes(cert)).decode("ascii")
    # whitespace in keydata is ignored (section 2.1): short pieces let the header fold
    # between them, where one long word would be turned into RFC 2047 encoded words
    pieces = [data[:40]] + [data[i:i + 72] for i in range(40, len(data), 72)]
    return f"addr={address}; prefer-encrypt=mutual; keydata={' '.join(pieces)}"


def add_header(msg: EmailMessage, keyring: Keyring, address: str) -> None:
    value = header_value(keyring, address)
    if value is not None:
        del msg["Autocrypt"]
        msg["Autocrypt"] = value


def parse_header(value: str) -> tuple[str, bytes] | None:
    """(addr, key octets) of an Autocrypt header value; None if it is not one we take
    (an unknown critical attribute, section 2.1)."""
    attrs: dict[str, str] = {}
    for item in "".join(value.split()).split(";"):
        name, sep, val = item.partition("=")
        if sep:
            attrs[name.strip().lower()] = val.strip()
    if "addr" not in attrs or "keydata" not in attrs:
        return None
    if any(not k.startswith("_") and k not in ("addr", "keydata", "prefer-encrypt")
           for k in attrs):
        return None
    try:
        return attrs["addr"].lower(), base64.b64decode(attrs["keydata"], validate=True)
    except ValueError:
        return None


def learn(msg: EmailMessage, keyring: Keyring) -> str | None:
    """Import the sender's key from the message's Autocrypt header, when it names the From
    address and the key ring has no key for it; a note for the reader, or None."""
    values = msg.get_all("Autocrypt") or []
    sender = parseaddr(str(msg.get("From", "")))[1].lower()
    if len(values) != 1 or not sender:  # section 2.3: more than one header: none counts
        return None
    parsed = parse_header(str(values[0]))
    if parsed is None or parsed[0] != sender:
        return None
    if any(sender in cert_addresses(c) for c in keyring.certs()):
        return None
    try:
        lines = keyring.add(parsed[1])
    except AgentError:
        return None
    if not any(sender in cert_addresses(c) for c in keyring.find(sender)):
        return None
    return "Autocrypt: " + "; ".join(lines)
