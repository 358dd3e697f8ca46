"""DHCPv6 messages (RFC 8415), sans I/O.

`decode` turns a UDP payload into a `Message` (client/server, RFC 8415 8) or a `RelayMessage`
(RELAY-FORW / RELAY-REPL, RFC 8415 9); `encode` turns one back into octets.  Options are kept
as `(code, value)` pairs in the order they came, repeats allowed (a client sends one IA_NA per
IA); typed helpers read and build the values netpost uses:

- CLIENTID / SERVERID hold a DUID (RFC 8415 11: LLT, EN, LL, UUID);
- IA_NA (21.4) with IAADDR (21.6), IA_TA (21.5), IA_PD (21.21) with IAPREFIX (21.22) carry
  options of their own, framed like the message's;
- STATUS_CODE (21.13), ORO (21.7), PREFERENCE (21.8), ELAPSED_TIME (21.9), RAPID_COMMIT
  (21.14), INTERFACE_ID (21.18), INFORMATION_REFRESH_TIME (21.23);
- DNS_SERVERS and DOMAIN_LIST (RFC 3646), NTP_SERVER (RFC 5908, suboptions), CLIENT_FQDN
  (RFC 4704).

Any octets give a message or `PacketError`, never another exception: `decode` checks the
framing of the message, of the options that nest options (IA_NA, IA_TA, IA_PD, IAADDR,
IAPREFIX) and of a relayed message, to a bounded depth.  Values are kept as they came, so
`encode(decode(x)) == x`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address

from netpost.dhcp.options import domain_labels
from netpost.dhcp.packet import printable

CLIENT_PORT = 546  # RFC 8415 7.2
SERVER_PORT = 547
ALL_DHCP_RELAY_AGENTS_AND_SERVERS = IPv6Address("ff02::1:2")  # RFC 8415 7.1
HOP_COUNT_LIMIT = 8  # RFC 8415 7.6: relays nest at most this deep
MAX_NESTING = HOP_COUNT_LIMIT + 2  # how deep decode follows RELAY_MSG (a little slack)

UNSPECIFIED = IPv6Address(0)


class MessageType(enum.IntEnum):
    """RFC 8415 7.3."""

    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13


RELAY_TYPES = frozenset((MessageType.RELAY_FORW, MessageType.RELAY_REPL))
_KINDS = {int(kind): kind for kind in MessageType}


class Option(enum.IntEnum):
    """The option codes netpost reads or writes (RFC 8415 21 unless noted)."""

    CLIENTID = 1
    SERVERID = 2
    IA_NA = 3
    IA_TA = 4
    IAADDR = 5
    ORO = 6
    PREFERENCE = 7
    ELAPSED_TIME = 8
    RELAY_MSG = 9
    AUTH = 11
    UNICAST = 12
    STATUS_CODE = 13
    RAPID_COMMIT = 14
    USER_CLASS = 15
    VENDOR_CLASS = 16
    VENDOR_OPTS = 17
    INTERFACE_ID = 18
    RECONF_MSG = 19
    RECONF_ACCEPT = 20
    DNS_SERVERS = 23  # RFC 3646 3
    DOMAIN_LIST = 24  # RFC 3646 4
    IA_PD = 25
    IAPREFIX = 26
    INFORMATION_REFRESH_TIME = 32
    CLIENT_FQDN = 39  # RFC 4704
    NTP_SERVER = 56  # RFC 5908
    SOL_MAX_RT = 82
    INF_MAX_RT = 83


class Status(enum.IntEnum):
    """RFC 8415 21.13: status codes."""

    SUCCESS = 0
    UNSPEC_FAIL = 1
    NO_ADDRS_AVAIL = 2
    NO_BINDING = 3
    NOT_ON_LINK = 4
    USE_MULTICAST = 5
    NO_PREFIX_AVAIL = 6


# Options whose value is fixed fields followed by options (RFC 8415 21.4-21.6, 21.21-21.22):
# code -> octets of fixed fields.
NESTING = {Option.IA_NA: 12, Option.IA_TA: 4, Option.IAADDR: 24, Option.IA_PD: 12,
           Option.IAPREFIX: 25}
_NESTING: dict[int, int] = {int(code): fixed for code, fixed in NESTING.items()}

INFINITY = 0xFFFFFFFF  # RFC 8415 7.7: a lifetime that never ends

Options = tuple[tuple[int, bytes], ...]


class PacketError(ValueError):
    """The octets are not a DHCPv6 message netpost can read; the text says why."""


# --- options -------------------------------------------------------------------------------


def parse_options(data: bytes, depth: int = 0, nesting: bool = True) -> Options:
    """RFC 8415 21.1: option-code (2), option-len (2), value; PacketError when an option runs
    past the end, or when the options nested in one (IA_NA, IAADDR...) are badly framed.
    `nesting` False: suboptions of another space (RFC 5908's), whose codes mean other things."""
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(data)
    while i < n:
        if i + 4 > n:
            raise PacketError(f"{n - i} octets left where an option header (4) should be")
        code = data[i] << 8 | data[i + 1]
        length = data[i + 2] << 8 | data[i + 3]
        end = i + 4 + length
        if end > n:
            raise PacketError(f"option {code} runs past the end ({length} octets)")
        value = data[i + 4:end]
        fixed = _NESTING.get(code) if nesting else None
        if fixed is not None:
            if length < fixed:
                raise PacketError(f"option {code} is shorter than its fixed fields ({fixed})")
            if depth >= 4:
                raise PacketError("options nested too deep")
            parse_options(value[fixed:], depth + 1)
        out.append((code, value))
        i = end
    return tuple(out)


_OPTION_HEADER = struct.Struct("!HH")


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    parts: list[bytes] = []
    header = _OPTION_HEADER.pack
    for code, value in options:
        if len(value) > 0xFFFF:
            raise PacketError(f"option {code} is longer than 65535 octets")
        parts += (header(code, len(value)), value)
    return b"".join(parts)


def first(options: Options, code: int) -> bytes | None:
    for c, value in options:
        if c == code:
            return value
    return None


def every(options: Options, code: int) -> list[bytes]:
    return [value for c, value in options if c == code]


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A client/server message (RFC 8415 8): msg-type, a 24-bit transaction-id, options."""

    msg_type: int
    transaction_id: int
    options: Options = ()

    @property
    def kind(self) -> MessageType | None:
        return _KINDS.get(self.msg_type)

    def option(self, code: int) -> bytes | None:
        return first(self.options, code)

    def all(self, code: int) -> list[bytes]:
        return every(self.options, code)

    def has(self, code: int) -> bool:
        return any(c == code for c, _ in self.options)

    @property
    def client_id(self) -> bytes | None:
        return first(self.options, Option.CLIENTID)

    @property
    def server_id(self) -> bytes | None:
        return first(self.options, Option.SERVERID)

    @property
    def oro(self) -> tuple[int, ...]:
        """RFC 8415 21.7: the options the client asks for."""
        value = self.option(Option.ORO) or b""
        return tuple(struct.unpack_from("!H", value, i)[0]
                     for i in range(0, len(value) - 1, 2))

    @property
    def rapid_commit(self) -> bool:
        return self.has(Option.RAPID_COMMIT)

    @property
    def elapsed_time(self) -> int | None:
        """RFC 8415 21.9: hundredths of a second since the client began this exchange."""
        value = self.option(Option.ELAPSED_TIME)
        return struct.unpack("!H", value)[0] if value is not None and len(value) == 2 else None


@dataclass(frozen=True)
class RelayMessage:
    """RELAY-FORW or RELAY-REPL (RFC 8415 9): the relayed message is the RELAY_MSG option's
    value (`inner` decodes it)."""

    msg_type: int
    hop_count: int
    link_address: IPv6Address
    peer_address: IPv6Address
    options: Options = ()

    def option(self, code: int) -> bytes | None:
        return first(self.options, code)

    @property
    def relay_msg(self) -> bytes | None:
        return self.option(Option.RELAY_MSG)

    @property
    def interface_id(self) -> bytes | None:
        return self.option(Option.INTERFACE_ID)

    @property
    def inner(self) -> Message | RelayMessage:
        """The message relayed (PacketError when there is none)."""
        value = self.relay_msg
        if value is None:
            raise PacketError("a relay message without RELAY_MSG")
        return decode(value)


AnyMessage = Message | RelayMessage

_RELAY_HEADER = struct.Struct("!BB16s16s")


def decode(data: bytes, depth: int = 0) -> AnyMessage:
    """The message in `data` (a UDP payload), or PacketError."""
    if len(data) < 4:
        raise PacketError(f"{len(data)} octets is shorter than a DHCPv6 message (4)")
    msg_type = data[0]
    if msg_type in RELAY_TYPES:
        if len(data) < _RELAY_HEADER.size:
            raise PacketError(f"{len(data)} octets is shorter than a relay message (34)")
        _, hop_count, link, peer = _RELAY_HEADER.unpack_from(data)
        options = parse_options(data[_RELAY_HEADER.size:])
        relayed = first(options, Option.RELAY_MSG)
        if relayed is None:
            raise PacketError("a relay message without RELAY_MSG (RFC 8415 9.1)")
        if depth >= MAX_NESTING:
            raise PacketError("relay messages nested too deep")
        decode(relayed, depth + 1)  # the relayed message must be readable too
        return RelayMessage(msg_type, hop_count, IPv6Address(link), IPv6Address(peer), options)
    if msg_type == 0:
        raise PacketError("message type 0 is reserved")
    return Message(msg_type, int.from_bytes(data[1:4], "big"), parse_options(data[4:]))


def encode(message: AnyMessage) -> bytes:
    if isinstance(message, RelayMessage):
        head = _RELAY_HEADER.pack(message.msg_type, message.hop_count & 0xFF,
                                  message.link_address.packed, message.peer_address.packed)
        return head + encode_options(message.options)
    return (bytes((message.msg_type & 0xFF,)) + (message.transaction_id & 0xFFFFFF).to_bytes(
        3, "big") + encode_options(message.options))


def innermost(message: RelayMessage) -> tuple[Message, list[RelayMessage]]:
    """The client's message inside nested relays, and the relays from outermost in
    (RFC 8415 19.1.2); PacketError if the innermost is a relay message too."""
    relays = [message]
    inner = message.inner
    while isinstance(inner, RelayMessage):
        relays.append(inner)
        inner = inner.inner
    return inner, relays


# --- DUIDs (RFC 8415 11) ---------------------------------------------------------------------


class DuidType(enum.IntEnum):
    LLT = 1  # link-layer address plus time (11.2)
    EN = 2  # enterprise number (11.3)
    LL = 3  # link-layer address (11.4)
    UUID = 4  # RFC 6355 (11.5)


MAX_DUID = 130  # RFC 8415 11.1: 2 octets of type, up to 128 of identifier
DUID_EPOCH = 946684800  # RFC 8415 11.2: seconds since midnight UTC, January 1, 2000


def duid_llt(hardware_type: int, link_layer_address: bytes, time: float) -> bytes:
    seconds = (int(time) - DUID_EPOCH) & 0xFFFFFFFF
    return struct.pack("!HHI", DuidType.LLT, hardware_type, seconds) + link_layer_address


def duid_ll(hardware_type: int, link_layer_address: bytes) -> bytes:
    return struct.pack("!HH", DuidType.LL, hardware_type) + link_layer_address


def duid_en(enterprise_number: int, identifier: bytes) -> bytes:
    return struct.pack("!HI", DuidType.EN, enterprise_number) + identifier


def duid_uuid(uuid: bytes) -> bytes:
    if len(uuid) != 16:
        raise ValueError("a UUID is 16 octets")
    return struct.pack("!H", DuidType.UUID) + uuid


def duid_valid(duid: bytes) -> bool:
    """RFC 8415 11.1: a type and at least one octet of identifier, 130 octets at most."""
    return 3 <= len(duid) <= MAX_DUID


def duid_link_layer_address(duid: bytes) -> bytes | None:
    """The Ethernet address inside a DUID-LLT or DUID-LL, if it has one."""
    if len(duid) < 4:
        return None
    kind, hardware_type = struct.unpack_from("!HH", duid)
    if hardware_type != 1:
        return None
    if kind == DuidType.LLT and len(duid) == 14:
        return duid[8:]
    if kind == DuidType.LL and len(duid) == 10:
        return duid[4:]
    return None


def describe_duid(duid: bytes) -> str:
    """A DUID as people read it: its type and the parts that say something."""
    if len(duid) < 2:
        return "duid " + duid.hex(":")
    kind = int.from_bytes(duid[:2], "big")
    if kind == DuidType.LLT and len(duid) >= 8:
        return f"duid-llt {duid[8:].hex(':')} ({duid.hex()})"
    if kind == DuidType.LL and len(duid) >= 4:
        return f"duid-ll {duid[4:].hex(':')} ({duid.hex()})"
    if kind == DuidType.EN and len(duid) >= 6:
        return f"duid-en {int.from_bytes(duid[2:6], 'big')} {duid[6:].hex()}"
    if kind == DuidType.UUID and len(duid) == 18:
        return f"duid-uuid {duid[2:].hex()}"
    return "duid " + duid.hex(":")


# --- identity associations (RFC 8415 21.4 - 21.6, 21.21, 21.22) ------------------------------


@dataclass(frozen=True)
class IAAddress:
    """IAADDR: an address with its preferred and valid lifetimes (21.6)."""

    address: IPv6Address
    preferred_lifetime: int
    valid_lifetime: int
    options: Options = ()

    def encode(self) -> bytes:
        return (self.address.packed + struct.pack("!II", self.preferred_lifetime & INFINITY,
                                                  self.valid_lifetime & INFINITY)
                + encode_options(self.options))

    @classmethod
    def decode(cls, value: bytes) -> IAAddress:
        if len(value) < 24:
            raise PacketError("IAADDR is shorter than 24 octets")
        preferred, valid = struct.unpack_from("!II", value, 16)
        return cls(IPv6Address(value[:16]), preferred, valid, parse_options(value[24:]))


@dataclass(frozen=True)
class IANA:
    """IA_NA: an identity association for non-temporary addresses (21.4)."""

    iaid: int
    t1: int
    t2: int
    options: Options = ()

    def encode(self) -> bytes:
        return struct.pack("!III", self.iaid, self.t1 & INFINITY, self.t2 & INFINITY) + \
            encode_options(self.options)

    @classmethod
    def decode(cls, value: bytes) -> IANA:
        if len(value) < 12:
            raise PacketError("IA_NA is shorter than 12 octets")
        iaid, t1, t2 = struct.unpack_from("!III", value)
        return cls(iaid, t1, t2, parse_options(value[12:]))

    @property
    def addresses(self) -> list[IAAddress]:
        return [IAAddress.decode(v) for v in every(self.options, Option.IAADDR)]

    @property
    def status(self) -> StatusCode | None:
        value = first(self.options, Option.STATUS_CODE)
        return None if value is None else StatusCode.decode(value)


@dataclass(frozen=True)
class IATA:
    """IA_TA: temporary addresses (21.5); netpost assigns none."""

    iaid: int
    options: Options = ()

    def encode(self) -> bytes:
        return struct.pack("!I", self.iaid) + encode_options(self.options)

    @classmethod
    def decode(cls, value: bytes) -> IATA:
        if len(value) < 4:
            raise PacketError("IA_TA is shorter than 4 octets")
        return cls(struct.unpack_from("!I", value)[0], parse_options(value[4:]))


@dataclass(frozen=True)
class IAPD:
    """IA_PD: delegated prefixes (21.21); netpost delegates none."""

    iaid: int
    t1: int
    t2: int
    options: Options = ()

    def encode(self) -> bytes:
        return struct.pack("!III", self.iaid, self.t1 & INFINITY, self.t2 & INFINITY) + \
            encode_options(self.options)

    @classmethod
    def decode(cls, value: bytes) -> IAPD:
        if len(value) < 12:
            raise PacketError("IA_PD is shorter than 12 octets")
        iaid, t1, t2 = struct.unpack_from("!III", value)
        return cls(iaid, t1, t2, parse_options(value[12:]))


@dataclass(frozen=True)
class StatusCode:
    """STATUS_CODE (21.13): a code and a UTF-8 message for people."""

    code: int
    message: str = ""

    def encode(self) -> bytes:
        return struct.pack("!H", self.code) + self.message.encode()

    @classmethod
    def decode(cls, value: bytes) -> StatusCode:
        if len(value) < 2:
            raise PacketError("STATUS_CODE is shorter than 2 octets")
        return cls(struct.unpack_from("!H", value)[0],
                   value[2:].decode("utf-8", errors="replace"))


def status_option(code: Status, message: str = "") -> tuple[int, bytes]:
    return Option.STATUS_CODE, StatusCode(code, message).encode()


def ia_na_options(message: Message) -> list[IANA]:
    return [IANA.decode(v) for v in message.all(Option.IA_NA)]


# --- option values for configuration (RFC 3646, RFC 5908, RFC 4704) --------------------------


def addresses6(values: Sequence[IPv6Address | str]) -> bytes:
    """A list of IPv6 addresses (DNS_SERVERS, RFC 3646 3)."""
    return b"".join(IPv6Address(str(v).strip()).packed for v in values)


def parse_addresses6(value: bytes) -> list[IPv6Address]:
    if len(value) % 16:
        raise PacketError("an address list is not a multiple of 16 octets")
    return [IPv6Address(value[i:i + 16]) for i in range(0, len(value), 16)]


def wire_name(name: str) -> bytes:
    """A domain name in RFC 1035 3.1 wire form, uncompressed (RFC 8415 10)."""
    return b"".join(bytes((len(label),)) + label for label in domain_labels(name)) + b"\0"


def domain_list(names: Sequence[str]) -> bytes:
    """DOMAIN_LIST (RFC 3646 4): the names one after another, no compression."""
    return b"".join(wire_name(n) for n in names)


def parse_wire_names(value: bytes, partial_last: bool = False) -> list[str]:
    """The names in `value` (RFC 8415 10); PacketError when one runs past the end.  With
    `partial_last` the last name may lack its root label (RFC 4704 4's partial name)."""
    names: list[str] = []
    labels: list[str] = []
    i = 0
    while i < len(value):
        length = value[i]
        if length == 0:
            names.append(".".join(labels))
            labels = []
            i += 1
            continue
        if length > 63 or i + 1 + length > len(value):
            raise PacketError("a domain name label runs past the end or is too long")
        labels.append(printable(value[i + 1:i + 1 + length]))
        i += 1 + length
    if labels:
        if not partial_last:
            raise PacketError("a domain name without its root label")
        names.append(".".join(labels))
    return names


# RFC 5908 4: NTP_SERVER suboptions.
NTP_SUBOPTION_SRV_ADDR = 1
NTP_SUBOPTION_MC_ADDR = 2
NTP_SUBOPTION_SRV_FQDN = 3


def ntp_server(servers: Sequence[str]) -> bytes:
    """NTP_SERVER (RFC 5908 4): each server an address or a name, as a suboption."""
    out = bytearray()
    for server in servers:
        try:
            address = IPv6Address(server.strip())
        except ValueError:
            name = wire_name(server)
            out += struct.pack("!HH", NTP_SUBOPTION_SRV_FQDN, len(name)) + name
            continue
        kind = NTP_SUBOPTION_MC_ADDR if address.is_multicast else NTP_SUBOPTION_SRV_ADDR
        out += struct.pack("!HH", kind, 16) + address.packed
    return bytes(out)


def parse_ntp_server(value: bytes) -> list[str]:
    """The servers of one NTP_SERVER option (addresses and names as text)."""
    servers: list[str] = []
    for code, sub in parse_options(value, nesting=False):
        if code in (NTP_SUBOPTION_SRV_ADDR, NTP_SUBOPTION_MC_ADDR) and len(sub) == 16:
            servers.append(str(IPv6Address(sub)))
        elif code == NTP_SUBOPTION_SRV_FQDN:
            servers.extend(parse_wire_names(sub))
    return servers


@dataclass(frozen=True)
class ClientFQDN:
    """CLIENT_FQDN (RFC 4704 4): flags (S, O, N) and a name, full or partial."""

    flags: int
    name: str

    S = 0x01  # the server should do the AAAA update
    O = 0x02  # noqa: E741 -- the RFC's name: the server overrode the client's S
    N = 0x04  # the server should do no update

    @classmethod
    def decode(cls, value: bytes) -> ClientFQDN:
        if not value:
            raise PacketError("CLIENT_FQDN without its flags")
        names = parse_wire_names(value[1:], partial_last=True)
        return cls(value[0], names[0] if names else "")

    def encode(self) -> bytes:
        if not self.name:
            return bytes((self.flags,))
        return bytes((self.flags,)) + wire_name(self.name)


def u32(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "big")


# --- the summary line of the protocol trace --------------------------------------------------


def status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return str(code)


def summary(data: bytes) -> str:
    """ "SOLICIT xid=0x12ab34 duid=... ia_na=1 addr=2001:db8::5" for the trace."""
    try:
        message = decode(data)
    except PacketError as exc:
        return f"<malformed: {exc}>"
    return _describe(message)


def _describe(message: AnyMessage) -> str:
    if isinstance(message, RelayMessage):
        name = MessageType(message.msg_type).name.replace("_", "-")
        try:
            inner = _describe(message.inner)
        except PacketError:
            inner = "<malformed>"
        return (f"{name} hops={message.hop_count} link={message.link_address} "
                f"peer={message.peer_address} [{inner}]")
    kind = message.kind
    parts = [kind.name.replace("_", "-") if kind is not None else f"type-{message.msg_type}",
             f"xid=0x{message.transaction_id:06x}"]
    client = message.client_id
    if client is not None:
        parts.append(f"client={client.hex()}")
    try:
        for ia in ia_na_options(message):
            parts.append(f"ia_na={ia.iaid}")
            parts += [f"addr={a.address}/{a.valid_lifetime}" for a in ia.addresses]
            status = ia.status
            if status is not None:
                parts.append(f"status={status_name(status.code)}")
        value = message.option(Option.STATUS_CODE)
        if value is not None:
            parts.append(f"status={status_name(StatusCode.decode(value).code)}")
    except PacketError:
        parts.append("<malformed IA>")
    if message.rapid_commit:
        parts.append("rapid-commit")
    return " ".join(parts)
