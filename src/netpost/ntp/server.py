"""The NTP server: answers client-mode requests (RFC 5905 §9.2 "fast_xmit") from the system
clock, with NTS (RFC 8915 §5) when the request carries a cookie.

Safety (RFC 8633 BCP 223, DESIGN.md "NTP replies are never larger than requests"):
  * a reply is never longer than its request, NTS ones included (RFC 8915 §5.7);
  * control (mode 6) and private (mode 7) queries are never answered, nor modes other than 3;
  * a client that polls faster than [ntp] rate_limit (after a burst of rate_burst) gets a
    Kiss-o'-Death RATE (RFC 5905 §7.4) at most once per KOD_INTERVAL, and nothing else;
    beyond [limits] datagram_rate the listener itself drops its datagrams (net/datagram.py);
  * what does not decode is dropped and counted.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import time
from dataclasses import dataclass

from netpost.net.datagram import Datagram, DatagramHandler, DatagramListener
from netpost.net.session import client_key
from netpost.ntp import nts
from netpost.ntp.clock import ClockState, ServerClock
from netpost.ntp.keys import KeyStore
from netpost.ntp.packet import (
    FRACTION,
    HEADER,
    HEADER_SIZE,
    NTP_UNIX_OFFSET,
    ExtensionType,
    Leap,
    Mode,
    NTPPacket,
    NTPParseError,
    decode,
    encode,
    encode_header,
    first_octet,
    short_from_seconds,
    timestamp_from_unix,
    timestamp_from_unix_ns,
)

# The fields of a 48-octet request the reply needs: LI/VN/Mode, poll, transmit timestamp.
_PLAIN_REQUEST = struct.Struct("!Bxb37xQ")
_TIMESTAMPS = struct.Struct("!QQQ")
_MASK64 = (1 << 64) - 1
_UNIX_OFFSET_FIXED = NTP_UNIX_OFFSET << 32
KOD_INTERVAL = 2.0  # seconds between two KoD RATE to one client (KoDs are rate limited too)
MAX_CLIENTS = 100_000  # rate-limit buckets kept; a spoofed-source flood resets them


@dataclass
class NTPStats:
    requests: int = 0  # mode-3 requests decoded
    replies: int = 0
    nts_replies: int = 0
    kod_rate: int = 0  # KoD RATE sent
    rate_dropped: int = 0  # over the limit, not even a KoD
    nts_naks: int = 0  # KoD NTSN sent (RFC 8915 §5.7)
    malformed: int = 0  # did not decode
    control_ignored: int = 0  # mode 6 / 7
    ignored: int = 0  # other modes, NTS that could not even be NAKed, replies too big


def _signed8(value: int) -> int:
    return value - 256 if value > 127 else value


class _Client:
    __slots__ = ("tokens", "stamp", "last_kod")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.last_kod = -KOD_INTERVAL


@dataclass(frozen=True)
class RateLimit:
    rate: float  # requests per second a client may average; 0 = no limit
    burst: int


class NTPHandler(DatagramHandler):
    # RFC 5905 §8: the receive timestamp is the request's arrival time: the kernel's
    # (SO_TIMESTAMPNS, net/datagram.py), not the moment Python got to it.
    kernel_timestamps = True

    def __init__(self, listener: DatagramListener, clock: ServerClock, *,
                 rate_limit: RateLimit, keys: KeyStore | None, stats: NTPStats) -> None:
        super().__init__(listener)
        self.clock = clock
        self.limit = rate_limit
        self.keys = keys
        self.stats = stats
        self._clients: dict[str, _Client] = {}
        self._heads: dict[int, bytes] = {}
        self._heads_state: ClockState | None = None
        self._heads_until = 0.0

    # -- DatagramHandler ---------------------------------------------------------------------

    def receive(self, batch: list[Datagram]) -> None:
        for datagram in batch:
            self.answer(datagram)

    def describe(self, data: bytes, direction: str) -> str:
        try:
            p = decode(data)
        except NTPParseError as exc:
            return f"<malformed: {len(data)} octets: {exc}>"
        text = f"NTPv{p.version} mode {p.mode} stratum {p.stratum}"
        if p.kiss_code is not None and p.mode == Mode.SERVER:
            text += f" KoD {p.kiss_code}"
        names = {int(t): t.name for t in ExtensionType}
        if p.extensions:
            text += " [" + ", ".join(names.get(ef.field_type, f"0x{ef.field_type:04x}")
                                     for ef in p.extensions) + "]"
        return f"{text} ({len(data)} octets)"

    # -- one request ---------------------------------------------------------------------------

    def answer(self, datagram: Datagram) -> None:
        data = datagram.data
        stats = self.stats
        if not data:
            self._malformed()
            return
        version, mode = first_octet(data)
        if mode == Mode.CLIENT and len(data) == HEADER_SIZE and 1 <= version <= 4:
            self._answer_plain(datagram)  # the common case: no extension fields, no MAC
            return
        if mode != Mode.CLIENT:
            if mode in (Mode.CONTROL, Mode.PRIVATE):
                stats.control_ignored += 1
            else:
                stats.ignored += 1
            self.listener.stats.dropped += 1
            return
        try:
            request = decode(data)
        except NTPParseError:
            self._malformed()
            return
        if not 1 <= request.version <= 4:
            self._malformed()  # RFC 5905 §9.2 (and ntpd): versions it does not know are dropped
            return
        stats.requests += 1
        admitted = self._admit(client_key(datagram.peer[0]), time.monotonic())
        if admitted == "drop":
            stats.rate_dropped += 1
            return
        nts_request: nts.NTSRequest | None = None
        keys = self.keys
        if keys is not None and nts.is_nts(request):
            checked = nts.check_request(request, data, keys.keys)
            if isinstance(checked, nts.NTSReject):
                self._nak(request, checked, datagram)
                return
            nts_request = checked
        if admitted == "kod":
            header = self._kod_rate(request)
        else:
            header = self._reply_header(request, datagram.received)
        if nts_request is None or keys is None:
            reply = encode_header(header)  # 48 octets: never more than the request
        else:
            # RFC 8915 §5.7: the answer to an NTS request (a KoD RATE too) is authenticated,
            # with fresh cookies, and no larger than the request.
            sealed = nts.seal_response(header, nts_request, keys.keys, len(data))
            if sealed is None:
                stats.ignored += 1
                return
            reply = sealed
            stats.nts_replies += 1
        if admitted == "ok":
            stats.replies += 1
        self.listener.send(reply, datagram.peer)

    def _answer_plain(self, datagram: Datagram) -> None:
        """A 48-octet client request (any 48 octets decode): answered with one struct.pack,
        without building packet objects (the path that sets the server's capacity)."""
        stats = self.stats
        stats.requests += 1
        data = datagram.data
        if self.limit.rate:
            admitted = self._admit(client_key(datagram.peer[0]), time.monotonic())
            if admitted != "ok":
                if admitted == "kod":
                    self.listener.send(encode_header(self._kod_rate(decode(data))),
                                       datagram.peer)
                else:
                    stats.rate_dropped += 1
                return
        first, poll, transmit = _PLAIN_REQUEST.unpack_from(data)
        received = datagram.received
        state = self.clock.state(received)
        key = (first & 0x38) << 8 | (poll & 0xFF)
        head = self._heads.get(key)
        if head is None or self._heads_state is not state or received >= self._heads_until:
            head = self._head(state, first & 0x38, poll, received)
        # RFC 5905 §7.3: origin = the client's transmit timestamp, then receive and transmit
        # (64-bit, era folded: the mask keeps the low 32 bits of the seconds).
        reply = head + _TIMESTAMPS.pack(
            transmit, int((received + NTP_UNIX_OFFSET) * FRACTION) & _MASK64,
            ((time.time_ns() << 32) // 1_000_000_000 + _UNIX_OFFSET_FIXED) & _MASK64)
        stats.replies += 1
        self.listener.send(reply, datagram.peer)

    def _head(self, state: ClockState, version_bits: int, poll: int, now: float) -> bytes:
        """The first 24 octets of a reply (all but the three timestamps) for this state,
        client version and poll: they change only with the state, and the root dispersion's
        growth (PHI) moves its 16.16 value about once a second, so they are kept a second."""
        if self._heads_state is not state or now >= self._heads_until:
            self._heads = {}
            self._heads_state = state
            self._heads_until = now + 1.0
        reference = timestamp_from_unix(state.reference_time) if state.reference_time else 0
        head = HEADER.pack(
            state.leap << 6 | version_bits | Mode.SERVER, state.stratum, _signed8(poll),
            self.clock.precision, short_from_seconds(state.root_delay),
            short_from_seconds(state.dispersion_at(now)), state.reference_id, reference,
            0, 0, 0)[:24]
        self._heads[version_bits << 8 | (poll & 0xFF)] = head
        return head

    def _reply_header(self, request: NTPPacket, received: float) -> NTPPacket:
        """RFC 5905 §9.2 / §7.3: the server's header, transmit time read last."""
        state = self.clock.state(received)
        transmit_ns = time.time_ns()
        return NTPPacket(
            leap=state.leap,
            version=request.version,  # RFC 5905 §9.2: reply in the client's version
            mode=Mode.SERVER,
            stratum=state.stratum,
            poll=request.poll,
            precision=self.clock.precision,
            root_delay=short_from_seconds(state.root_delay),
            root_dispersion=short_from_seconds(state.dispersion_at(received)),
            reference_id=state.reference_id,
            reference_timestamp=timestamp_from_unix(state.reference_time)
            if state.reference_time else 0,
            origin_timestamp=request.transmit_timestamp,
            receive_timestamp=timestamp_from_unix(received),
            transmit_timestamp=timestamp_from_unix_ns(transmit_ns),
        )

    # -- rate limit and kisses -----------------------------------------------------------------

    def _admit(self, client: str, now: float) -> str:
        """Token bucket per client: "ok" to answer, "kod" for a KoD RATE (at most one per
        KOD_INTERVAL), "drop" for silence."""
        limit = self.limit
        if not limit.rate:
            return "ok"
        entry = self._clients.get(client)
        if entry is None:
            if len(self._clients) >= MAX_CLIENTS:
                self._clients.clear()
            self._clients[client] = _Client(limit.burst - 1.0, now)
            return "ok"
        entry.tokens = min(float(limit.burst), entry.tokens + (now - entry.stamp) * limit.rate)
        entry.stamp = now
        if entry.tokens >= 1.0:
            entry.tokens -= 1.0
            return "ok"
        if now - entry.last_kod >= KOD_INTERVAL:
            entry.last_kod = now
            return "kod"
        return "drop"

    def _kiss(self, request: NTPPacket, code: bytes, poll: int) -> NTPPacket:
        """RFC 5905 §7.4: a Kiss-o'-Death: stratum 0, the code in the reference id, no time
        (every timestamp is the client's own transmit timestamp, as ntpd sends it)."""
        t = request.transmit_timestamp
        return NTPPacket(leap=Leap.UNSYNCHRONIZED, version=request.version, mode=Mode.SERVER,
                         stratum=0, poll=poll, precision=self.clock.precision,
                         reference_id=code, reference_timestamp=0, origin_timestamp=t,
                         receive_timestamp=t, transmit_timestamp=t)

    def _kod_rate(self, request: NTPPacket) -> NTPPacket:
        # RFC 5905 §7.4 (as ntpd): the poll field tells the client how often it may ask.
        poll = max(request.poll, math.ceil(math.log2(1 / self.limit.rate)), 0)
        self.stats.kod_rate += 1
        return self._kiss(request, b"RATE", min(poll, 17))

    def _nak(self, request: NTPPacket, reject: nts.NTSReject, datagram: Datagram) -> None:
        """RFC 8915 §5.7: NTS NAK, a KoD NTSN echoing the unique identifier (and nothing
        that is not in the request: it is never larger)."""
        if reject.unique_id is None:
            self.stats.ignored += 1
            self.listener.stats.dropped += 1
            return
        kiss = self._kiss(request, b"NTSN", request.poll)
        reply = encode(dataclasses.replace(kiss, extensions=(reject.unique_id,)))
        if len(reply) > len(datagram.data):
            self.stats.ignored += 1
            return
        self.listener.send(reply, datagram.peer)
        self.stats.nts_naks += 1

    def _malformed(self) -> None:
        self.stats.malformed += 1
        self.listener.stats.dropped += 1
