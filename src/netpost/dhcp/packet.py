"""DHCPv4 messages: the RFC 2131 format with RFC 2132 options, sans I/O.

`decode` turns a UDP payload into a `Message`; `encode` turns one back into octets.  Options
are kept as one value per code, in the order they first appear:

- RFC 3396: an option longer than 255 octets is sent as several instances of the same code,
  which the receiver concatenates (in the order options field, file, sname);
- RFC 2131 4.1 / RFC 2132 9.3: option 52 (overload) says the `file` and/or `sname` fields
  carry options too; decoding folds those into `options`, so overload is a detail of the wire
  form only (`encode` uses it again when a reply does not fit the client's maximum size).

Any octets give either a `Message` or `PacketError`, never another exception, and
`encode(decode(x))` is stable: decoding it again gives the same message.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address

# RFC 2131 2: op
BOOTREQUEST = 1
BOOTREPLY = 2

MAGIC_COOKIE = b"\x63\x82\x53\x63"  # RFC 2131 3: 99.130.83.99
FIXED_SIZE = 236  # op .. file, before the cookie
MIN_SIZE = FIXED_SIZE + len(MAGIC_COOKIE)
DEFAULT_MAX_SIZE = 576  # RFC 2131 2: a client must accept messages of up to 576 octets
IP_UDP_HEADERS = 28  # RFC 2132 9.10: option 57 counts the IP and UDP headers too
BROADCAST_FLAG = 0x8000  # RFC 2131 2, figure 2
SNAME_SIZE = 64
FILE_SIZE = 128

ZERO = IPv4Address(0)
_ZERO_PACKED = bytes(4)
_NO_SNAME = bytes(64)  # an sname or file field of NULs only: most requests'
_NO_FILE = bytes(128)
BROADCAST = IPv4Address("255.255.255.255")

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")


class MessageType(enum.IntEnum):
    """RFC 2132 9.6: option 53."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Option(enum.IntEnum):
    """The option codes netpost reads or writes (RFC 2132 unless noted)."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS_SERVERS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    INTERFACE_MTU = 26
    BROADCAST_ADDRESS = 28
    NTP_SERVERS = 42
    REQUESTED_ADDRESS = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_IDENTIFIER = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58  # T1
    REBINDING_TIME = 59  # T2
    VENDOR_CLASS = 60
    CLIENT_IDENTIFIER = 61
    RAPID_COMMIT = 80  # RFC 4039
    CLIENT_FQDN = 81  # RFC 4702
    RELAY_AGENT_INFORMATION = 82  # RFC 3046
    DOMAIN_SEARCH = 119  # RFC 3397
    CLASSLESS_STATIC_ROUTE = 121  # RFC 3442
    END = 255


_MESSAGE_TYPES = {int(kind): kind for kind in MessageType}

# RFC 2132 9.3: which of file and sname carry options.
OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2


class PacketError(ValueError):
    """The octets are not a DHCP message netpost can read; the text says why."""


@dataclass(frozen=True)
class Message:
    """One DHCP message (RFC 2131 2, figure 1). `options`: code -> value, first-seen order,
    long options already concatenated (RFC 3396), without 0 (pad), 52 (overload), 255 (end)."""

    op: int
    xid: int
    chaddr: bytes  # the client hardware address, `hlen` octets
    htype: int = 1  # 1: Ethernet
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO
    yiaddr: IPv4Address = ZERO
    siaddr: IPv4Address = ZERO
    giaddr: IPv4Address = ZERO
    sname: bytes = b""  # without trailing NULs
    file: bytes = b""  # without trailing NULs
    options: Mapping[int, bytes] = field(default_factory=dict)

    # -- the options a server looks at -------------------------------------------------------

    # Encoded `options` (without END), when whoever made the message had them already (the
    # engine keeps each subnet's option block encoded); `encode` then writes these octets
    # instead of encoding `options` again.  They must say exactly what `options` says.
    wire_options: bytes | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # 0.0.0.0 is always the one shared ZERO (decode and make_message's callers give it
        # too), so that the engine tests an address field with `is ZERO`.
        for name in ("ciaddr", "yiaddr", "siaddr", "giaddr"):
            if getattr(self, name) == ZERO:
                object.__setattr__(self, name, ZERO)

    @property
    def message_type(self) -> MessageType | None:
        value = self.options.get(Option.MESSAGE_TYPE)
        if value is None or len(value) != 1:
            return None
        return _MESSAGE_TYPES.get(value[0])

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)

    def address_option(self, code: int) -> IPv4Address | None:
        value = self.options.get(code)
        return IPv4Address(value) if value is not None and len(value) == 4 else None

    @property
    def requested_address(self) -> IPv4Address | None:
        return self.address_option(Option.REQUESTED_ADDRESS)

    @property
    def server_identifier(self) -> IPv4Address | None:
        return self.address_option(Option.SERVER_IDENTIFIER)

    @property
    def client_identifier(self) -> bytes | None:
        """RFC 2132 9.14 / RFC 4361: opaque; two octets or more."""
        value = self.options.get(Option.CLIENT_IDENTIFIER)
        return value if value is not None and len(value) >= 2 else None

    @property
    def parameter_request_list(self) -> bytes:
        return bytes(self.options.get(Option.PARAMETER_REQUEST_LIST, b""))

    @property
    def lease_time(self) -> int | None:
        value = self.options.get(Option.LEASE_TIME)
        return int.from_bytes(value, "big") if value is not None and len(value) == 4 else None

    @property
    def max_message_size(self) -> int:
        """RFC 2132 9.10: the largest reply this client takes (576 at least)."""
        value = self.options.get(Option.MAX_MESSAGE_SIZE)
        if value is None or len(value) != 2:
            return DEFAULT_MAX_SIZE
        return max(DEFAULT_MAX_SIZE, int.from_bytes(value, "big"))

    @property
    def hostname(self) -> str | None:
        value = self.options.get(Option.HOSTNAME)
        return printable(value) if value else None

    @property
    def hardware_address(self) -> str:
        """chaddr as "aa:bb:cc:dd:ee:ff"."""
        return self.chaddr.hex(":")


_new = object.__new__
_set = object.__setattr__


def make_message(op: int, xid: int, chaddr: bytes, htype: int, hops: int, secs: int,
                 flags: int, ciaddr: IPv4Address, yiaddr: IPv4Address, siaddr: IPv4Address,
                 giaddr: IPv4Address, sname: bytes, file: bytes, options: Mapping[int, bytes],
                 wire_options: bytes | None = None) -> Message:
    """Message(...) with every field given, in a third of the time: the frozen dataclass's
    __init__ sets its 15 fields one `object.__setattr__` at a time (decode and the engine
    make four per DORA).  An address of 0.0.0.0 must be `ZERO` itself, as __post_init__
    makes it."""
    message: Message = _new(Message)
    _set(message, "__dict__", {
        "op": op, "xid": xid, "chaddr": chaddr, "htype": htype, "hops": hops, "secs": secs,
        "flags": flags, "ciaddr": ciaddr, "yiaddr": yiaddr, "siaddr": siaddr,
        "giaddr": giaddr, "sname": sname, "file": file, "options": options,
        "wire_options": wire_options})
    return message


def printable(value: bytes) -> str:
    """Text from a client for logs and the lease table: ASCII, controls replaced."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in value.rstrip(b"\0"))


# --- decoding ----------------------------------------------------------------------------------


def _scan_options(data: bytes, into: dict[int, bytes], start: int = 0) -> None:
    """Add each option of one field (from `start`) to `into` (RFC 3396: instances
    concatenate)."""
    i = start
    n = len(data)
    while i < n:
        code = data[i]
        if code == 255:  # END
            return
        if code == 0:  # PAD
            i += 1
            continue
        if i + 1 >= n:
            raise PacketError(f"option {code} has no length octet")
        end = i + 2 + data[i + 1]
        if end > n:
            raise PacketError(f"option {code} runs past the end of its field")
        known = into.get(code)
        into[code] = data[i + 2:end] if known is None else known + data[i + 2:end]
        i = end
    # A field without an END option: tolerated (many clients pad the options field instead).


_ADDRESSES: dict[bytes, IPv4Address] = {}  # the non-zero addresses seen lately (relays, ...)
_ADDRESSES_KEPT = 1024


def _address(packed: bytes) -> IPv4Address:
    """Most address fields of a request are 0.0.0.0, and giaddr is one of a few relays: one
    shared object each (addresses are immutable)."""
    if packed == _ZERO_PACKED:
        return ZERO
    known = _ADDRESSES.get(packed)
    if known is None:
        if len(_ADDRESSES) >= _ADDRESSES_KEPT:
            _ADDRESSES.clear()
        known = _ADDRESSES[packed] = IPv4Address(packed)
    return known


def packed(address: IPv4Address) -> bytes:
    """`address.packed`, without making new octets for 0.0.0.0."""
    return _ZERO_PACKED if address is ZERO else address.packed


def decode(data: bytes) -> Message:
    """The message in `data` (a UDP payload), or PacketError."""
    if type(data) is not bytes:
        data = bytes(data)  # option values are slices of it: immutable ones
    if len(data) < MIN_SIZE:
        raise PacketError(f"{len(data)} octets is shorter than a DHCP message ({MIN_SIZE})")
    if data[FIXED_SIZE:MIN_SIZE] != MAGIC_COOKIE:
        raise PacketError("no DHCP magic cookie (a BOOTP message?)")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = _HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise PacketError(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > 16:
        raise PacketError(f"hlen {hlen} is longer than chaddr (16)")
    found: dict[int, bytes] = {}
    _scan_options(data, found, MIN_SIZE)
    # RFC 2131 4.1: the options field first, then file, then sname.
    overload_value = found.pop(Option.OVERLOAD, None)
    if overload_value is not None:
        overload = overload_value[0] if len(overload_value) == 1 else 0
        if not 1 <= overload <= 3:
            raise PacketError(f"option overload value {overload_value.hex()} is not 1, 2 or 3")
        if overload & OVERLOAD_FILE:
            _scan_options(file, found)
            file = b""
        if overload & OVERLOAD_SNAME:
            _scan_options(sname, found)
            sname = b""
        found.pop(Option.OVERLOAD, None)  # an overload inside file/sname is meaningless
    return make_message(
        op, xid, chaddr[:hlen], htype, hops, secs, flags,
        _address(ciaddr), _address(yiaddr), _address(siaddr), _address(giaddr),
        b"" if sname == _NO_SNAME else sname.rstrip(b"\0"),
        b"" if file == _NO_FILE else file.rstrip(b"\0"),
        found,
    )


# --- encoding ----------------------------------------------------------------------------------


def encode_options(options: Mapping[int, bytes]) -> bytes:
    """The options as `encode` writes them (relay agent information last), without END: what
    `Message.wire_options` holds."""
    return b"".join(piece for code, value in _ordered(options)
                    for piece in option_instances(code, value))


def option_instances(code: int, value: bytes) -> list[bytes]:
    """The wire form of one option: several instances when longer than 255 (RFC 3396)."""
    if not value:
        return [bytes((code, 0))]
    return [bytes((code, len(value[i:i + 255]))) + value[i:i + 255]
            for i in range(0, len(value), 255)]


_NOT_WRITTEN = frozenset((Option.PAD, Option.END, Option.OVERLOAD,
                          Option.RELAY_AGENT_INFORMATION))


def _ordered(options: Mapping[int, bytes]) -> list[tuple[int, bytes]]:
    """Options in their order, with relay agent information last (RFC 3046 2.1)."""
    items = [(code, value) for code, value in options.items() if code not in _NOT_WRITTEN]
    agent = options.get(Option.RELAY_AGENT_INFORMATION)
    if agent is not None:
        items.append((Option.RELAY_AGENT_INFORMATION, agent))
    return items


def _fill(items: list[tuple[int, bytes]], room: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """As many options as fit in `room` octets, then END; an option that does not fit whole
    is split, its tail left for the next field (RFC 3396 5); what is left over."""
    out = bytearray()
    rest = list(items)
    room -= 1  # the END option
    while rest:
        code, value = rest[0]
        free = room - len(out) - 2
        if free < (1 if value else 0):
            break
        take = min(len(value), 255, free)
        out += bytes((code, take)) + value[:take]
        if take == len(value):
            rest.pop(0)
        else:
            rest[0] = (code, value[take:])
    return bytes(out) + b"\xff", rest


def encode(message: Message, max_size: int | None = None) -> bytes:
    """The octets of `message`.  With `max_size` (the client's limit, RFC 2132 9.10, IP and
    UDP headers included) options that do not fit go into `file` and `sname` (overload) when
    those are empty; PacketError if they still do not fit."""
    sname, file = message.sname, message.file
    if len(sname) > SNAME_SIZE or len(file) > FILE_SIZE:
        raise PacketError("sname or file is longer than its field")
    if len(message.chaddr) > 16:
        raise PacketError("chaddr is longer than 16 octets")
    wire = message.wire_options
    body = (encode_options(message.options) if wire is None else wire) + b"\xff"
    room = None if max_size is None else max_size - IP_UDP_HEADERS - MIN_SIZE
    if room is not None and len(body) > room:
        items = _ordered(message.options)
        overload = 0
        # 3 octets for the overload option itself; then file, then sname (RFC 2131 4.1).
        head, rest = _fill(items, room - 3)
        if rest and not file:
            file, rest = _fill(rest, FILE_SIZE)
            overload |= OVERLOAD_FILE
        if rest and not sname:
            sname, rest = _fill(rest, SNAME_SIZE)
            overload |= OVERLOAD_SNAME
        if rest or not overload:
            raise PacketError(f"the options do not fit in {max_size} octets")
        body = bytes((Option.OVERLOAD, 1, overload)) + head
    header = _HEADER.pack(
        message.op, message.htype, len(message.chaddr), message.hops, message.xid & 0xFFFFFFFF,
        message.secs & 0xFFFF, message.flags & 0xFFFF, packed(message.ciaddr),
        packed(message.yiaddr), packed(message.siaddr), packed(message.giaddr),
        message.chaddr, sname, file)  # struct pads the last three with NULs
    return header + MAGIC_COOKIE + body


# --- client identity (RFC 2131 4.2, RFC 4361) ----------------------------------------------------


def client_key(message: Message) -> bytes:
    """What identifies a client's binding: its client identifier (option 61; RFC 4361's
    IAID + DUID form is just as opaque) when it sends one, else hardware type and chaddr."""
    client_id = message.client_identifier
    if client_id is not None:
        return b"id:" + client_id
    return b"hw:" + bytes((message.htype,)) + message.chaddr


def describe_key(key: bytes) -> str:
    """A client key as people read it: "01:aa:bb:..." (client id) or the MAC."""
    if key.startswith(b"hw:"):
        return key[4:].hex(":")
    if key.startswith(b"id:"):
        return "id " + key[3:].hex(":")
    return key.hex(":")


# --- relay agent information (RFC 3046) ----------------------------------------------------------

AGENT_CIRCUIT_ID = 1
AGENT_REMOTE_ID = 2


def relay_suboptions(value: bytes) -> dict[int, bytes]:
    """RFC 3046 2.0: the sub-options of option 82 (empty when malformed)."""
    out: dict[int, bytes] = {}
    i = 0
    while i + 2 <= len(value):
        code, length = value[i], value[i + 1]
        if i + 2 + length > len(value):
            return {}
        out[code] = value[i + 2:i + 2 + length]
        i += 2 + length
    return out if i == len(value) else {}


# --- the summary line of the protocol trace ------------------------------------------------------


def summary(data: bytes) -> str:
    """ "DHCPDISCOVER xid=0x1234abcd chaddr=aa:bb:... ciaddr=... yiaddr=..." for the trace."""
    try:
        m = decode(data)
    except PacketError as exc:
        return f"<malformed: {exc}>"
    kind = m.message_type
    name = f"DHCP{kind.name}" if kind is not None else ("BOOTREQUEST" if m.op == BOOTREQUEST
                                                         else "BOOTREPLY")
    parts = [name, f"xid=0x{m.xid:08x}", f"chaddr={m.hardware_address}"]
    for label, addr in (("ciaddr", m.ciaddr), ("yiaddr", m.yiaddr), ("giaddr", m.giaddr)):
        if addr != ZERO:
            parts.append(f"{label}={addr}")
    requested = m.requested_address
    if requested is not None:
        parts.append(f"requested={requested}")
    if m.broadcast:
        parts.append("broadcast")
    return " ".join(parts)
