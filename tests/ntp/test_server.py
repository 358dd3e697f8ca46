"""The NTP server in a real `netpost serve`, over real sockets on 127.0.0.1: ntplib, raw
packets (modes, sizes, malformed input), rate limiting with KoD RATE, NTS-KE and NTS."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import ntplib
import pytest

from netpost.ntp import nts
from netpost.ntp.packet import (
    ExtensionField,
    NTPPacket,
    decode,
    encode,
    short_to_seconds,
    timestamp_to_unix,
)
from tests.conftest import Server
from tests.ntp.helpers import (
    client_request,
    exchange,
    nts_ke,
    nts_request,
    start_ntp_server,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_ntp_server(tmp_path_factory.mktemp("ntp") / "d")
    yield server
    server.stop()


def test_ntplib_v4_and_v3(srv: Server) -> None:
    client = ntplib.NTPClient()
    for version in (4, 3):
        r = client.request("127.0.0.1", port=srv.port("ntp"), version=version, timeout=5)
        assert r.version == version and r.mode == 4
        assert r.stratum == 10  # [ntp] local_stratum, no upstream
        assert ntplib.ref_id_to_text(r.ref_id, r.stratum) == "127.127.1.1"
        assert r.leap == 0
        assert abs(r.offset) < 0.05 and 0 <= r.delay < 0.5
        assert -30 < r.precision < -10


def test_reply_fields(srv: Server) -> None:
    request, transmit = client_request()
    before = time.time()
    reply = exchange(srv.port("ntp"), request)
    after = time.time()
    assert reply is not None and len(reply) == 48
    p = decode(reply)
    assert p.origin_timestamp == transmit  # RFC 5905 §9.2: the client's transmit time
    t2 = timestamp_to_unix(p.receive_timestamp, before)
    t3 = timestamp_to_unix(p.transmit_timestamp, before)
    assert before - 0.01 <= t2 <= t3 <= after + 0.01
    assert timestamp_to_unix(p.reference_timestamp, before) <= t3
    assert short_to_seconds(p.root_dispersion) < 0.01 and p.root_delay == 0


def test_control_and_private_modes_and_other_modes_get_no_answer(srv: Server) -> None:
    port = srv.port("ntp")
    # Mode 6 (ntpq READVAR), mode 7 (ntpdc MON_GETLIST_1: the monlist amplifier).
    assert exchange(port, bytes([0x16, 0x02, 0, 1]) + bytes(8), timeout=0.5) is None
    assert exchange(port, bytes([0x17, 0x00, 0x03, 0x2A]) + bytes(188), timeout=0.5) is None
    for mode in (0, 1, 2, 4, 5):
        packet = encode(NTPPacket(mode=mode, transmit_timestamp=1))
        assert exchange(port, packet, timeout=0.3) is None, mode
    # Still answering.
    assert exchange(port, client_request()[0]) is not None


def test_malformed_packets_are_dropped(srv: Server) -> None:
    port = srv.port("ntp")
    head = client_request()[0]
    version0 = bytes([0x03]) + head[1:]
    version5 = bytes([0x2B]) + head[1:]
    for bad in (b"", b"\x23", head[:47], head + b"\0" * 3, head + bytes(17), version0, version5):
        assert exchange(port, bad, timeout=0.3) is None, len(bad)
    assert exchange(port, client_request()[0]) is not None


def test_reply_is_never_larger_than_the_request(srv: Server) -> None:
    port = srv.port("ntp")
    request, _ = client_request()
    ef = ExtensionField(0x2005, bytes(96))
    padded = encode(NTPPacket(**{**decode(request).__dict__, "extensions": (ef,)}))
    reply = exchange(port, padded)
    assert reply is not None and len(reply) == 48 < len(padded)
    with_mac = request + struct.pack("!I", 1) + bytes(16)
    reply = exchange(port, with_mac)
    assert reply is not None and len(reply) == 48


def test_rate_limit_sends_one_kod_rate_then_silence(tmp_path: Path) -> None:
    server = start_ntp_server(tmp_path / "d", "[ntp]\nrate_limit = 0.1\nrate_burst = 4\n")
    try:
        port = server.port("ntp")
        replies: dict[int, NTPPacket] = {}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2.0)
            transmits = []
            for _ in range(8):  # at once: the burst is 4
                request, transmit = client_request()
                transmits.append(transmit)
                s.sendto(request, ("127.0.0.1", port))
                time.sleep(0.001)
            try:
                while len(replies) < 8:
                    p = decode(s.recvfrom(4096)[0])
                    replies[p.origin_timestamp] = p
            except TimeoutError:
                pass
        answers = [replies.get(t) for t in transmits]
        assert all(a is not None and a.stratum == 10 for a in answers[:4]), answers
        kod = answers[4]
        # RFC 5905 §7.4: stratum 0, "RATE" in the reference id; leap 3.
        assert kod is not None and kod.stratum == 0 and kod.reference_id == b"RATE"
        assert kod.leap == 3 and kod.poll >= 1
        assert answers[5:] == [None, None, None]  # no second KoD within KOD_INTERVAL
        # ntplib sees the kiss code too.
        time.sleep(2.1)
        r = ntplib.NTPClient().request("127.0.0.1", port=port, version=4, timeout=2)
        assert r.stratum == 0
        assert ntplib.ref_id_to_text(r.ref_id, r.stratum) == "Unidentified reference source 'RATE'"
        # Another client address is not affected (127.0.0.2 is loopback too).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            reply = exchange(port, client_request()[0], sock=s)
        assert reply is not None and decode(reply).stratum == 10
    finally:
        server.stop()


def test_nts_ke_and_protected_requests(srv: Server) -> None:
    keys = nts_ke(srv.port("nts-ke"), cafile=srv.data / "tls" / "cert.pem")
    assert len(keys.cookies) == 8 and all(len(c) == nts.COOKIE_SIZE for c in keys.cookies)
    assert keys.port == srv.port("ntp")  # RFC 8915 §4.1.7: the NTP port is not 123
    for placeholders in (0, 1, 3, 7):
        request, uid, transmit = nts_request(keys, placeholders)
        reply = exchange(srv.port("ntp"), request)
        assert reply is not None and len(reply) <= len(request)
        p = decode(reply)
        assert p.mode == 4 and p.stratum == 10 and p.origin_timestamp == transmit
        fresh = nts.open_response(reply, p, keys.s2c, uid)
        assert len(fresh) == placeholders + 1
        keys.cookies += fresh
    # A cookie the server did not make: NTS NAK (KoD NTSN) echoing the unique identifier.
    keys.cookies.insert(0, bytes(nts.COOKIE_SIZE))
    request, uid, _ = nts_request(keys)
    reply = exchange(srv.port("ntp"), request)
    assert reply is not None and len(reply) <= len(request)
    p = decode(reply)
    assert p.stratum == 0 and p.reference_id == b"NTSN"
    assert [ef.value for ef in p.extensions] == [uid]
    # A request whose authenticator does not verify: NAK too, never time.
    request, uid, _ = nts_request(keys)
    broken = bytearray(request)
    broken[60] ^= 0xFF  # inside the unique identifier
    reply = exchange(srv.port("ntp"), bytes(broken))
    assert reply is not None and decode(reply).reference_id == b"NTSN"


def test_nts_ke_needs_alpn_and_tls13(srv: Server) -> None:
    keys = nts_ke(srv.port("nts-ke"), alpn="http/1.1")
    assert keys.records == [] and keys.cookies == []
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", srv.port("nts-ke")), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="localhost")


def test_cookies_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = start_ntp_server(data)
    try:
        keys = nts_ke(first.port("nts-ke"))
    finally:
        first.stop()
    second = start_ntp_server(data)
    try:
        request, uid, _ = nts_request(keys)
        reply = exchange(second.port("ntp"), request)
        assert reply is not None
        assert len(nts.open_response(reply, decode(reply), keys.s2c, uid)) == 1
    finally:
        second.stop()
