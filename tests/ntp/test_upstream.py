"""The client side: clock filter and selection (RFC 5905 §10-11), and netpost polling a real
upstream (chronyd serving at local stratum 3 on loopback) and serving one stratum below it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import ntplib
import pytest

from netpost.ntp.client import (
    Sample,
    Upstream,
    make_request,
    parse_upstream,
    read_response,
    select,
    state_from,
)
from netpost.ntp.packet import NTPPacket, decode, encode, short_from_seconds, timestamp_from_unix
from tests.conftest import require_tool
from tests.ntp.helpers import start_ntp_server, wait_for


def upstream(name: str, offsets: list[float], stratum: int = 2, delay: float = 0.01
             ) -> Upstream:
    now = time.time()
    u = Upstream(name, name, 123, address="192.0.2.1")
    for i, offset in enumerate(offsets):
        u.samples.append(Sample(offset, delay + 0.001 * (i % 3), 1e-6, now - i))
    u.reach = 0xFF
    u.last = NTPPacket(mode=4, stratum=stratum, root_delay=short_from_seconds(0.001),
                       root_dispersion=short_from_seconds(0.001))
    return u


def test_filter_takes_least_delay_and_jitter_is_rms() -> None:
    u = upstream("a", [0.010, 0.012, 0.008])
    best = u.best(time.time())
    assert best is not None and best.offset == 0.010  # delays 0.010, 0.011, 0.012
    assert u.jitter(time.time()) == pytest.approx(((0.002**2 + 0.002**2) / 2) ** 0.5)


def test_selection_drops_the_falseticker_and_prefers_low_stratum() -> None:
    now = time.time()
    good_a = upstream("a", [0.001] * 4, stratum=3)
    good_b = upstream("b", [0.002] * 4, stratum=2)
    false = upstream("f", [5.0] * 4, stratum=1)
    peer = select([good_a, good_b, false], now)
    assert peer is good_b
    state = state_from(peer, now)
    assert state.stratum == 3 and state.reference_id == bytes([192, 0, 2, 1])
    assert state.root_delay == pytest.approx(0.001 + 0.01, abs=1e-4)
    # Two that disagree and nothing else: no majority, no selection.
    assert select([good_a, false], now) is None
    unreachable = upstream("u", [0.0] * 4)
    unreachable.reach = 0
    assert select([unreachable], now) is None


def test_response_checks() -> None:
    sent = time.time()
    request, transmit = make_request(sent)
    assert decode(request).transmit_timestamp == transmit
    reply = NTPPacket(mode=4, stratum=2, origin_timestamp=transmit,
                      receive_timestamp=timestamp_from_unix(sent + 0.5005),
                      transmit_timestamp=timestamp_from_unix(sent + 0.5015))
    packet, sample = read_response(encode(reply), transmit, sent, sent + 0.003)
    # θ = ((T2 − T1) + (T3 − T4)) / 2; δ = (T4 − T1) − (T3 − T2)
    assert sample.offset == pytest.approx(0.4995, abs=1e-5)
    assert sample.delay == pytest.approx(0.002, abs=1e-5)
    with pytest.raises(ValueError, match="origin"):
        read_response(encode(reply), transmit ^ 1, sent, sent + 0.003)
    kod = NTPPacket(mode=4, stratum=0, reference_id=b"RATE", origin_timestamp=transmit)
    with pytest.raises(ValueError, match="RATE"):
        read_response(encode(kod), transmit, sent, sent + 0.003)
    unsync = NTPPacket(leap=3, mode=4, stratum=2, origin_timestamp=transmit,
                       receive_timestamp=1, transmit_timestamp=1)
    with pytest.raises(ValueError, match="not synchronised"):
        read_response(encode(unsync), transmit, sent, sent + 0.003)


def test_parse_upstream() -> None:
    assert parse_upstream("time.example") == ("time.example", 123)
    assert parse_upstream("127.0.0.1:10123") == ("127.0.0.1", 10123)
    assert parse_upstream("[::1]:99") == ("::1", 99)
    assert parse_upstream("::1") == ("::1", 123)
    for bad in ("", "host:x", "host:70000"):
        with pytest.raises(ValueError):
            parse_upstream(bad)


@pytest.mark.interop
def test_serves_one_stratum_below_a_real_upstream(tmp_path: Path) -> None:
    chronyd = require_tool("chronyd")
    directory = tmp_path / "chrony"
    directory.mkdir(mode=0o700)
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = directory / "chrony.conf"
    conf.write_text(f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 3\n"
                    f"cmdport 0\npidfile {directory / 'pid'}\ndriftfile {directory / 'drift'}\n")
    upstream_proc = subprocess.Popen([chronyd, "-x", "-d", "-u", "root", "-f", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = start_ntp_server(
        tmp_path / "d",
        f'[ntp]\nrate_limit = 0\nupstreams = ["127.0.0.1:{port}", "127.0.0.1:9"]\n')
    try:
        client = ntplib.NTPClient()

        def stratum() -> int:
            return int(client.request("127.0.0.1", port=server.port("ntp"), timeout=2).stratum)

        # Local stratum 10 until the poller has samples; then chronyd's 3 + 1.
        assert wait_for(lambda: stratum() == 4, 20), "".join(server.output[-20:])
        r = client.request("127.0.0.1", port=server.port("ntp"), timeout=2)
        assert ntplib.ref_id_to_text(r.ref_id, r.stratum) == "127.0.0.1"
        assert r.root_delay > 0 and abs(r.offset) < 0.05
        # The offset and jitter of the selected upstream are reported.
        assert any(f"ntp: system peer 127.0.0.1:{port} (stratum 3, offset" in line
                   for line in server.output), "".join(server.output[-20:])
    finally:
        server.stop()
        upstream_proc.terminate()
        upstream_proc.wait(10)
