"""Ping before offer: is an address already answering on the link? (RFC 2131 2.2: "the
allocating server SHOULD probe the reused address before allocating the address, e.g., with
an ICMP echo request")

One ICMP socket per DHCP listener, on the event loop: `await pinger.answers(address,
timeout)` sends an echo request and is True when an echo reply comes from that address in
time.  An unprivileged ICMP socket (SOCK_DGRAM, when net.ipv4.ping_group_range allows) is
tried first, then a raw one (CAP_NET_RAW, which a DHCP server on port 67 has anyway).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import struct

log = logging.getLogger("netpost.dhcp")

ECHO_REQUEST = 8
ECHO_REPLY = 0


def _checksum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, sequence: int, payload: bytes = b"netpost dhcp probe") -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident & 0xFFFF, sequence & 0xFFFF)
    checksum = _checksum(header + payload)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum, ident & 0xFFFF,
                       sequence & 0xFFFF) + payload


class Pinger:
    def __init__(self, interface: str | None) -> None:
        self.raw = False
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        except OSError:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.raw = True
        if interface is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        self.sock.setblocking(False)
        self._ident = os.getpid() & 0xFFFF
        self._sequence = itertools.count(1)
        self._waiting: dict[str, list[asyncio.Future[bool]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.sock.fileno(), self._readable)

    async def answers(self, address: str, timeout: float) -> bool:
        """True when `address` answers an echo request within `timeout` seconds."""
        self._start()
        assert self._loop is not None
        future: asyncio.Future[bool] = self._loop.create_future()
        self._waiting.setdefault(address, []).append(future)
        try:
            self.sock.sendto(echo_request(self._ident, next(self._sequence)), (address, 0))
        except OSError as exc:  # no route, no neighbour: nobody answers
            log.debug("dhcp: ping %s: %s", address, exc)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return False
        finally:
            waiting = self._waiting.get(address, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiting.pop(address, None)

    def _readable(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("dhcp: ping socket: %s", exc)
                return
            if self.raw:
                data = data[(data[0] & 0x0F) * 4:] if data else b""  # past the IP header
            if not data or data[0] != ECHO_REPLY:
                continue
            for future in self._waiting.get(peer[0], []):
                if not future.done():
                    future.set_result(True)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
