"""A password is not taken over plain HTTP from another host (safe by default, as the mail
listeners refuse a login before TLS); from the same machine (http://localhost) it is.

The other host is the client end of a network namespace pair the test makes: no packet
leaves it (tests/support/netns.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from netpost.registry import default_registry
from tests.support.netns import SERVER_ADDRESS, NamespacePair

PORT = 18080
ADDRESS, PASSWORD = "web@plain.test", "correct horse battery"


def _netpost(data: Path, *args: str, stdin: str | None = None) -> None:
    subprocess.run([sys.executable, "-m", "netpost", "--data", str(data), *args], input=stdin,
                   text=True, check=True, capture_output=True, timeout=120)


def _login(net: NamespacePair, side: str, host: str) -> tuple[int, str]:
    body = json.dumps({"address": ADDRESS, "password": PASSWORD})
    run = net.server if side == "server" else net.client
    out = run("curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}", "-X", "POST",
              "-H", "content-type: application/json", "--data", body,
              f"http://{host}:{PORT}/api/v1/login", timeout=30).stdout
    text, _, code = out.rpartition("\n")
    return int(code), text


def test_password_login_over_plain_http_only_from_this_machine(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _netpost(data, "domain", "add", "plain.test")
    _netpost(data, "user", "add", ADDRESS, "--password-stdin", stdin=PASSWORD + "\n")
    args = []
    for name in default_registry().listener_names():
        args += ["--listen", f"http=0.0.0.0:{PORT}" if name == "http" else f"{name}=off"]
    with NamespacePair("web") as net:
        subprocess.run(["ip", "-n", net.client_ns, "addr", "add", "10.99.0.2/24", "dev",
                        net.client_if], check=True)
        log = (tmp_path / "serve.log").open("w")
        proc = subprocess.Popen(net.in_server([sys.executable, "-m", "netpost", "--data",
                                               str(data), "serve", *args]),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while "\nready" not in (tmp_path / "serve.log").read_text():
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(0.05)
            code, text = _login(net, "client", SERVER_ADDRESS)
            assert code == 403 and "log in over https" in text, (code, text)
            code, text = _login(net, "server", "127.0.0.1")
            assert code == 200 and json.loads(text)["address"] == ADDRESS, (code, text)
        finally:
            proc.terminate()
            proc.wait(30)
