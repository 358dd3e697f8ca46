"""A real authoritative DNS server for tests: Knot DNS (Debian package `knot`) on 127.0.0.1.

    ZONES = {"a.test": [mx("@", 10, "mx.a.test"), a("mx", "127.0.0.1"), txt("@", "v=spf1 -all")]}
    with DNSServer(ZONES) as ns:
        resolver = Resolver([ns.address])      # "127.0.0.1:<port>", UDP and TCP
        ...
        ns.update({...})                         # new records, served when update() returns

Knot answers as an authoritative server; netpost's resolver asks it directly, as it would ask a
recursive resolver. Besides the given zones it always serves the root zone (".") empty, so a
name outside them gets an authoritative NXDOMAIN instead of REFUSED. Records have TTL 0 by
default (and negative answers too), so no cache hides an update. Config, zone files, the
control socket and the log live in a temporary directory; knotd runs in the foreground as a
child of the test process and is stopped on exit.

In a test module: `ns = dns_server_fixture(ZONES)` makes a module-scoped fixture named `ns`.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

KNOTD = "/usr/sbin/knotd"
KNOTC = "/usr/sbin/knotc"
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Record:
    name: str  # relative to the zone ("@", "mx") or absolute with a final dot
    type: str  # "MX", "A", "TXT", ...
    data: str  # zone-file RDATA (for TXT use txt(), which quotes and splits)
    ttl: int | None = None  # None: the server's default (0)

    def line(self, default_ttl: int) -> str:
        ttl = default_ttl if self.ttl is None else self.ttl
        return f"{self.name} {ttl} IN {self.type} {self.data}"


def _absolute(host: str) -> str:
    return host if host.endswith(".") else host + "."


def mx(name: str, preference: int, host: str, ttl: int | None = None) -> Record:
    return Record(name, "MX", f"{preference} {_absolute(host)}", ttl)


def null_mx(name: str = "@") -> Record:
    """RFC 7505: "0 .", the domain accepts no mail."""
    return Record(name, "MX", "0 .")


def a(name: str, address: str, ttl: int | None = None) -> Record:
    return Record(name, "A", address, ttl)


def aaaa(name: str, address: str, ttl: int | None = None) -> Record:
    return Record(name, "AAAA", address, ttl)


def cname(name: str, target: str, ttl: int | None = None) -> Record:
    return Record(name, "CNAME", _absolute(target), ttl)


def txt(name: str, text: str, ttl: int | None = None) -> Record:
    """A TXT record holding `text`, split into character-strings of at most 255 bytes
    (RFC 1035 3.3.14), as long DKIM keys are published."""
    raw = text.encode()
    chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    return Record(name, "TXT", " ".join(_quote(chunk) for chunk in chunks), ttl)


def _quote(chunk: bytes) -> str:
    out = []
    for byte in chunk:
        if 0x20 <= byte < 0x7F and byte not in b'"\\':
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")  # RFC 1035 5.1: \DDD
    return '"' + "".join(out) + '"'


Zones = Mapping[str, Sequence[Record]]


def _zone_key(zone: str) -> str:
    return zone.lower().strip(".") + "." if zone.strip(".") else "."


def _free_port(host: str) -> int:
    """A port free for both TCP and UDP on `host` (knotd binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for the DNS server")


class DNSServer:
    def __init__(self, zones: Zones, *, host: str = "127.0.0.1", ttl: int = 0) -> None:
        if not Path(KNOTD).exists():
            raise RuntimeError(f"{KNOTD} is missing: install the Debian package knot "
                               "(scripts/install-test-deps.sh)")
        self.host = host
        self.ttl = ttl
        self.port = 0
        self._zones: dict[str, list[Record]] = {}
        self._serial = 0
        self._dir = Path(tempfile.mkdtemp(prefix="netpost-knot-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._set_zones(zones)

    @property
    def address(self) -> str:
        """ "127.0.0.1:<port>", as netpost's Resolver takes a nameserver."""
        return f"{self.host}:{self.port}"

    @property
    def conf(self) -> Path:
        return self._dir / "knot.conf"

    @property
    def log(self) -> str:
        path = self._dir / "knotd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _set_zones(self, zones: Zones) -> None:
        self._zones = {_zone_key(z): list(records) for z, records in zones.items()}
        self._zones.setdefault(".", [])
        self._serial += 1

    def _zone_file(self, zone: str) -> Path:
        return self._dir / ("root.zone" if zone == "." else f"{zone}zone")

    def _write(self) -> None:
        for zone, records in self._zones.items():
            # SOA minimum 0 and SOA TTL 0: negative answers are not cached either (RFC 2308 5).
            lines = [f"$ORIGIN {zone}", f"$TTL {self.ttl}",
                     f"@ 0 IN SOA ns.invalid. hostmaster.invalid. {self._serial} 3600 600 "
                     "86400 0",
                     "@ 0 IN NS ns.invalid."]
            lines += [record.line(self.ttl) for record in records]
            self._zone_file(zone).write_text("\n".join(lines) + "\n")
        zone_conf = "".join(f'  - domain: "{zone}"\n    file: "{self._zone_file(zone)}"\n'
                            for zone in self._zones)
        self.conf.write_text(f"""\
server:
    rundir: "{self._dir}"
    listen: {self.host}@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{self._dir}/knot.sock"
log:
  - target: "{self._dir}/knotd.log"
    any: info
database:
    storage: "{self._dir}/db"
template:
  - id: default
    storage: "{self._dir}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
{zone_conf}""")

    def start(self) -> DNSServer:
        last = ""
        for _ in range(3):  # another process may take the port between probe and bind
            self.port = _free_port(self.host)
            self._write()
            self._proc = subprocess.Popen([KNOTD, "-c", str(self.conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            atexit.register(self._kill)
            try:
                self._wait_served()
                return self
            except RuntimeError as exc:
                last = str(exc)
                self._kill()
        raise RuntimeError(f"knotd did not start: {last}\n{self.log}")

    def _answers(self, zone: str, tcp: bool) -> bool:
        query = dns.message.make_query(zone, dns.rdatatype.SOA)
        try:
            if tcp:
                reply = dns.query.tcp(query, self.host, timeout=0.5, port=self.port)
            else:
                reply = dns.query.udp(query, self.host, timeout=0.5, port=self.port)
        except (dns.exception.DNSException, OSError):
            return False
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return any(getattr(rr, "serial", None) == self._serial for rr in rrset)
        return False

    def _wait_served(self) -> None:
        """Until every zone answers with the current serial over UDP and TCP."""
        deadline = time.monotonic() + START_TIMEOUT
        pending = set(self._zones)
        while pending:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError("knotd exited")
            pending = {z for z in pending
                       if not (self._answers(z, tcp=False) and self._answers(z, tcp=True))}
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"zones not served: {sorted(pending)}")
            time.sleep(0.02)

    def update(self, zones: Zones) -> None:
        """Replace all zones; returns once knotd serves the new data."""
        self._set_zones(zones)
        self._write()
        result = subprocess.run([KNOTC, "-c", str(self.conf), "reload"],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"knotc reload failed: {result.stdout}{result.stderr}\n{self.log}")
        self._wait_served()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        atexit.unregister(self._kill)

    def stop(self) -> None:
        self._kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def dns_server_fixture(zones: Zones | None = None, *, scope: Any = "module"
                       ) -> Callable[[], Iterator[DNSServer]]:
    """A pytest fixture (assign it to a module-level name) serving `zones`; tests may call
    update() on it, and each module using it gets its own server."""

    @pytest.fixture(scope=scope)
    def fixture() -> Iterator[DNSServer]:
        with DNSServer(zones or {}) as server:
            yield server

    return fixture
