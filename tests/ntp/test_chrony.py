"""Third-party NTP clients against netpost (reference §6): chronyd one-shot (-Q) and as a
monitoring client with chronyc, with and without NTS; KoD RATE as chronyd sees it; ntpdig
(port 123 only) inside a network namespace this test creates.  Loopback only."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netpost.ntp.packet import decode
from tests.conftest import Server, require_tool
from tests.ntp.helpers import start_chronyd, start_in_namespace, start_ntp_server, wait_for

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_ntp_server(tmp_path_factory.mktemp("ntp") / "d")
    yield server
    server.stop()


def clock_wrong_by(output: str) -> float:
    m = re.search(r"System clock wrong by (-?[0-9.]+) seconds \(ignored\)", output)
    assert m, output
    return float(m.group(1))


def test_chronyd_one_shot_query(srv: Server) -> None:
    r = subprocess.run([require_tool("chronyd"), "-Q", "-t", "10", "-f", "/dev/null",
                        f"server 127.0.0.1 port {srv.port('ntp')} iburst maxsamples 4"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert abs(clock_wrong_by(r.stderr + r.stdout)) < 0.1


def test_chronyd_one_shot_query_with_nts(srv: Server, tmp_path: Path) -> None:
    conf = tmp_path / "chrony.conf"
    conf.write_text(f"server 127.0.0.1 port {srv.port('ntp')} nts ntsport "
                    f"{srv.port('nts-ke')} iburst maxsamples 4\n"
                    f"ntstrustedcerts {srv.data / 'tls' / 'cert.pem'}\n")
    r = subprocess.run([require_tool("chronyd"), "-Q", "-u", "root", "-t", "15", "-f",
                        str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert abs(clock_wrong_by(r.stderr + r.stdout)) < 0.1
    # chronyd with `nts` takes only authenticated answers; the trace shows them.
    trace = (srv.data / "trace.log").read_text()
    assert "NTS_AUTHENTICATOR" in trace


@pytest.mark.parametrize("nts", [False, True], ids=["plain", "nts"])
def test_chronyd_monitoring_client(srv: Server, tmp_path: Path, nts: bool) -> None:
    line = f"server 127.0.0.1 port {srv.port('ntp')} iburst minpoll -2 maxpoll -2"
    if nts:
        line += f" nts ntsport {srv.port('nts-ke')}"
    chronyd = start_chronyd(tmp_path / "chrony", line, srv.data / "tls" / "cert.pem")
    try:
        def good(n: int) -> bool:
            try:
                m = re.search(r"Total good RX\s*:\s*(\d+)",
                              chronyd.chronyc("ntpdata", "127.0.0.1"))
            except AssertionError:
                return False
            return bool(m) and int(m.group(1)) >= n

        assert wait_for(lambda: good(8), 30), chronyd.log()
        data = chronyd.chronyc("ntpdata", "127.0.0.1")
        fields = dict(re.findall(r"^(.+?)\s*: (.*)$", data, re.M))
        assert fields["Leap status"] == "Normal"
        assert fields["Mode"] == "Server"
        assert fields["Stratum"] == "10"
        assert fields["Reference ID"].startswith("7F7F0101")
        assert fields["Version"] == "4"
        assert fields["Authenticated"] == ("Yes" if nts else "No")
        # chrony's RFC 5905 packet tests 1-3 and 5-7 all pass, and the max-delay test.
        tests = fields["NTP tests"].split()
        assert tests[0] == "111" and tests[1] == "111" and tests[2][0] == "1", data
        assert abs(float(fields["Offset"].split()[0])) < 0.05
        sources = chronyd.chronyc("sources")
        assert re.search(r"^\^\* 127\.0\.0\.1\s+10\s", sources, re.M), sources
        if nts:
            auth = chronyd.chronyc("authdata").splitlines()[-1].split()
            # Name Mode KeyID Type KLen Last Atmp NAK Cook CLen
            assert auth[1] == "NTS" and auth[3] == "15" and auth[7] == "0", auth
            assert int(auth[8]) >= 6 and auth[9] == "100"
    finally:
        chronyd.stop()


def test_chronyd_sees_kod_rate(tmp_path: Path) -> None:
    server = start_ntp_server(tmp_path / "d", "[ntp]\nrate_limit = 0.5\nrate_burst = 4\n")
    chronyd = start_chronyd(tmp_path / "chrony",
                            f"server 127.0.0.1 port {server.port('ntp')} iburst minpoll -2 "
                            "maxpoll -2")
    try:
        assert wait_for(lambda: "Received KoD RATE from 127.0.0.1" in chronyd.log(), 20), \
            chronyd.log()
    finally:
        chronyd.stop()
        server.stop()


def test_ntpdig_on_port_123_in_a_namespace(tmp_path: Path) -> None:
    """ntpdig has no port option (reference §6.1): netpost serves port 123 on the loopback of
    a network namespace made for this test (root needed, as in CI)."""
    ntpdig = require_tool("ntpdig")
    require_tool("ip")
    if os.geteuid() != 0:
        pytest.fail("this test makes a network namespace: run it as root (CI does)")
    namespace = f"np-ntpdig-{os.getpid()}"
    subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        proc = start_in_namespace(namespace, tmp_path / "d",
                                  "[ntp]\nrate_limit = 0\n[trace]\nlisteners = [\"ntp\"]\n")
        r = subprocess.run(["ip", "netns", "exec", namespace, ntpdig, "-j", "-t", "3",
                            "127.0.0.1"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads(r.stdout)
        assert result["stratum"] == 10 and result["leap"] == "no-leap", result
        assert abs(float(result["offset"])) < 0.1
        # The plain (non-JSON) form, as people read it.
        r = subprocess.run(["ip", "netns", "exec", namespace, ntpdig, "127.0.0.1"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and " s10 no-leap" in r.stdout, r.stdout + r.stderr
        trace = (tmp_path / "d" / "trace.log").read_text()
        assert "mode 3" in trace and "mode 4 stratum 10" in trace
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def test_trace_describes_packets(srv: Server) -> None:
    trace = (srv.data / "trace.log").read_text()
    assert re.search(r"ntp .*C: NTPv4 mode 3", trace), trace[-2000:]
    assert decode  # the trace is written from the decoded packet
