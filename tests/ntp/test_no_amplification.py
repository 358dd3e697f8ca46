"""No amplification (DESIGN.md's promise, RFC 8915 §5.7): whatever arrives, an answer is never
longer than the request it answers.  Hypothesis makes the requests (plain, with extension
fields and MACs, NTS with valid and broken cookies, garbage); a real listener and handler
answer them over 127.0.0.1, each from its own client socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpost.config import ListenAddress
from netpost.net.datagram import DatagramListener
from netpost.net.session import ListenerSpec
from netpost.ntp import nts
from netpost.ntp.clock import ServerClock
from netpost.ntp.keys import KeyStore
from netpost.ntp.packet import ExtensionField, NTPPacket, encode
from netpost.ntp.server import NTPHandler, NTPStats, RateLimit

C2S, S2C = bytes(range(32)), bytes(range(32, 64))

header = st.builds(NTPPacket, leap=st.integers(0, 3), version=st.integers(0, 7),
                   mode=st.sampled_from([3, 3, 3, 1, 4, 6, 7]), stratum=st.integers(0, 255),
                   poll=st.integers(-128, 127), transmit_timestamp=st.integers(0, 2**64 - 1))
field = st.builds(ExtensionField, st.sampled_from([0x0104, 0x0204, 0x0304, 0x0404, 0x2005]),
                  st.integers(3, 40).flatmap(lambda n: st.binary(min_size=4 * n,
                                                                 max_size=4 * n)))


@st.composite
def requests(draw: st.DrawFn, cookie: bytes) -> bytes:
    kind = draw(st.sampled_from(["plain", "fields", "mac", "nts", "nts-bad", "garbage"]))
    head = draw(header)
    if kind == "garbage":
        return draw(st.binary(max_size=600))
    if kind == "fields":
        return encode(NTPPacket(**{**head.__dict__, "version": 4,
                                   "extensions": tuple(draw(st.lists(field, max_size=4)))}))
    if kind == "mac":
        return encode(head) + draw(st.binary(min_size=20, max_size=24))
    if kind.startswith("nts"):
        placeholders = draw(st.integers(0, 8))
        used = cookie if kind == "nts" else draw(st.binary(min_size=100, max_size=100))
        return nts.client_request(NTPPacket(**{**head.__dict__, "mode": 3, "version": 4}),
                                  C2S, used, placeholders)
    return encode(head)


async def answer_all(data: list[bytes], keys: KeyStore) -> list[list[bytes]]:
    spec = ListenerSpec("ntp", "ntp", ListenAddress("127.0.0.1", 0), False, False)
    listener = DatagramListener(
        spec, lambda lst: NTPHandler(lst, ServerClock(10), rate_limit=RateLimit(0, 1),
                                     keys=keys, stats=NTPStats()),
        rate=1e9, burst=1_000_000, trace_log=None)
    await listener.start()
    assert listener.bound is not None
    clients = []
    try:
        for request in data:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            clients.append(s)
            s.sendto(request, ("127.0.0.1", listener.bound.port))
        await asyncio.sleep(0.05)
        answers: list[list[bytes]] = []
        for s in clients:
            got = []
            while True:
                try:
                    got.append(s.recv(65536))
                except BlockingIOError:
                    break
            answers.append(got)
        return answers
    finally:
        for s in clients:
            s.close()
        listener.stop_accepting()
        await listener.wait_closed()


def test_no_answer_is_longer_than_its_request(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json", rotation=3600.0, keep=2)
    cookie = keys.keys.make_cookie(C2S, S2C)
    answered = {"nts": 0, "all": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(requests(cookie), min_size=1, max_size=20))
    def check(data: list[bytes]) -> None:
        for request, replies in zip(data, asyncio.run(answer_all(data, keys)), strict=True):
            assert len(replies) <= 1
            for reply in replies:
                assert len(reply) <= len(request), (request.hex(), reply.hex())
                answered["all"] += 1
                answered["nts"] += len(reply) > 48

    check()
    assert answered["all"] > 50 and answered["nts"] > 5, answered
