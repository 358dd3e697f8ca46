"""Shared pieces of the NTP tests: a netpost with its NTP listeners, raw NTP exchanges, and an
NTS client (NTS-KE over TLS with the exporter, then protected requests)."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netpost.ntp import nts
from netpost.ntp.ntske import (
    ALPN,
    EXPORTER_LABEL,
    Record,
    RecordType,
    decode_records,
    encode_records,
    exporter_context,
)
from netpost.ntp.packet import NTPPacket, decode, encode, timestamp_from_unix
from netpost.ntp.tls_export import export_keying_material
from tests.conftest import (
    CONFIG,
    LISTENER_NAMES,
    Server,
    netpost_cmd,
    require_tool,
    start_server,
)

NTP_CONFIG = CONFIG + "[ntp]\nrate_limit = 0\n"


def start_ntp_server(data: Path, ntp: str = "[ntp]\nrate_limit = 0\n") -> Server:
    return start_server(data, CONFIG + ntp)


def exchange(port: int, data: bytes, timeout: float = 2.0,
             sock: socket.socket | None = None) -> bytes | None:
    """Send one datagram to 127.0.0.1:port; the answer or None."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recvfrom(4096)[0]
        except TimeoutError:
            return None
    finally:
        if own:
            s.close()


def client_request(version: int = 4) -> tuple[bytes, int]:
    transmit = timestamp_from_unix(time.time())
    return encode(NTPPacket(version=version, mode=3, transmit_timestamp=transmit)), transmit


@dataclass
class NTSKeys:
    c2s: bytes
    s2c: bytes
    cookies: list[bytes]
    port: int | None
    records: list[Record]


def nts_ke(port: int, cafile: Path | None = None, alpn: str = ALPN) -> NTSKeys:
    """RFC 8915 §4 as a client: TLS 1.3 + ALPN, ask for NTPv4 with AES-SIV-CMAC-256."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(encode_records([
            Record(RecordType.NEXT_PROTOCOL, b"\0\0", True),
            Record(RecordType.AEAD_ALGORITHM, struct.pack("!H", nts.AEAD_AES_SIV_CMAC_256)),
            Record(RecordType.END_OF_MESSAGE, b"", True)]))
        data = b""
        while True:
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
        c2s = export_keying_material(tls, EXPORTER_LABEL, exporter_context(15, False), 32)
        s2c = export_keying_material(tls, EXPORTER_LABEL, exporter_context(15, True), 32)
    records, _ = decode_records(data)
    cookies = [r.body for r in records if r.record_type == RecordType.NEW_COOKIE]
    ports = [struct.unpack("!H", r.body)[0] for r in records if r.record_type == RecordType.PORT]
    return NTSKeys(c2s, s2c, cookies, ports[0] if ports else None, records)


def nts_request(keys: NTSKeys, placeholders: int = 0) -> tuple[bytes, bytes, int]:
    """(request octets, unique id, transmit timestamp) using the first cookie."""
    uid = os.urandom(32)
    transmit = timestamp_from_unix(time.time())
    data = nts.client_request(NTPPacket(mode=3, transmit_timestamp=transmit), keys.c2s,
                              keys.cookies.pop(0), placeholders, uid)
    return data, uid, transmit


def read(data: bytes) -> NTPPacket:
    return decode(data)


def start_in_namespace(namespace: str, data: Path, config: str) -> subprocess.Popen[str]:
    """`netpost serve` inside a network namespace, NTP on its own loopback's port 123 and
    every other listener on ephemeral ports; returns once it is ready."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "netpost.toml").write_text(config)
    args = []
    for name in LISTENER_NAMES:
        args += ["--listen", f"{name}=127.0.0.1:{123 if name == 'ntp' else 0}"]
    proc = subprocess.Popen(["ip", "netns", "exec", namespace,
                             *netpost_cmd(data, "serve", *args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "ready":
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc
    raise RuntimeError("netpost did not start in the namespace:\n" + "".join(lines))


@dataclass
class Chronyd:
    """chronyd as a monitoring client (reference §6.2): -x never touches the clock, its
    command socket in a private directory, queried with chronyc."""

    directory: Path
    proc: subprocess.Popen[str]

    def chronyc(self, *args: str) -> str:
        r = subprocess.run([require_tool("chronyc"), "-h", str(self.directory / "cmd.sock"),
                            "-n", *args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def log(self) -> str:
        return (self.directory / "chronyd.log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_chronyd(directory: Path, server_line: str, cert: Path | None = None) -> Chronyd:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    conf = directory / "chrony.conf"
    lines = [server_line, "port 0", "cmdport 0",
             f"bindcmdaddress {directory / 'cmd.sock'}",
             f"pidfile {directory / 'chronyd.pid'}",
             f"driftfile {directory / 'drift'}"]
    if cert is not None:
        lines.append(f"ntstrustedcerts {cert}")
    conf.write_text("\n".join(lines) + "\n")
    log = (directory / "chronyd.log").open("w")
    # -x: never adjust the system clock; -d: stay in the foreground; -u root: no privilege
    # drop, so the private directory needs no other owner.
    proc = subprocess.Popen([require_tool("chronyd"), "-x", "-d", "-u", "root", "-f", str(conf)],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    return Chronyd(directory, proc)


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return check()
