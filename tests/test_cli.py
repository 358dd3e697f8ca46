"""The command line: admin commands, bad input, config validation, init, serve, SIGTERM, trace."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

from netpost.config import Config, ConfigError, from_dict, render_default
from tests.conftest import DOMAIN, client_tls, netpost_cmd, run_cli, start_server


def test_domain_user_alias_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert run_cli(data, "domain", "add", "Example.ORG").returncode == 0
    assert run_cli(data, "domain", "list").stdout.split() == ["example.org"]
    r = run_cli(data, "user", "add", "alice@example.org", "--password-stdin", stdin="pw1\n")
    assert r.returncode == 0, r.stderr
    r = run_cli(data, "user", "add", "alice@example.org", "--password-stdin", stdin="pw\n")
    assert r.returncode == 1 and "already exists" in r.stderr
    assert r.stderr.count("\n") == 1  # one clear line
    r = run_cli(data, "user", "add", "bob@nowhere.org", "--password-stdin", stdin="pw\n")
    assert r.returncode == 1 and "unknown domain nowhere.org" in r.stderr
    r = run_cli(data, "user", "add", "not an address", "--password-stdin", stdin="pw\n")
    assert r.returncode == 1 and "not a valid address" in r.stderr
    r = run_cli(data, "user", "add", "carol@example.org")  # no terminal, no --password-stdin
    assert r.returncode == 1 and "--password-stdin" in r.stderr
    assert run_cli(data, "user", "list").stdout.split() == ["alice@example.org"]
    r = run_cli(data, "alias", "add", "info@example.org", "alice@example.org")
    assert r.returncode == 0, r.stderr
    r = run_cli(data, "alias", "add", "x@example.org", "y@elsewhere.org")
    # Another domain's target: forwarding through the outbound queue.
    assert r.returncode == 0 and "forwarded through the outbound queue" in r.stdout, r.stderr
    assert run_cli(data, "alias", "del", "x@example.org", "y@elsewhere.org").returncode == 0
    assert "info@example.org -> alice@example.org" in run_cli(data, "alias", "list").stdout
    r = run_cli(data, "domain", "del", "example.org")
    assert r.returncode == 1  # still used by alice and the alias: refused, nothing changed
    assert run_cli(data, "user", "list").stdout.split() == ["alice@example.org"]
    r = run_cli(data, "user", "passwd", "alice@example.org", "--password-stdin", stdin="pw2\n")
    assert r.returncode == 0, r.stderr
    assert run_cli(data, "alias", "del", "info@example.org", "alice@example.org").returncode == 0
    assert run_cli(data, "user", "del", "alice@example.org").returncode == 0
    assert run_cli(data, "domain", "del", "example.org").returncode == 0
    assert run_cli(data, "domain", "list").stdout == ""


def test_data_dir_from_environment(tmp_path: Path) -> None:
    env_dir = tmp_path / "from-env"
    env = dict(os.environ, NETPOST_DATA=str(env_dir))
    r = subprocess.run([sys.executable, "-m", "netpost", "domain", "add", "a.test"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert run_cli(env_dir, "domain", "list").stdout.split() == ["a.test"]


def test_init_writes_every_default(tmp_path: Path) -> None:
    data = tmp_path / "d"
    r = run_cli(data, "init")
    assert r.returncode == 0
    text = (data / "netpost.toml").read_text()
    assert from_dict(tomllib.loads(text)) == Config()  # the file states exactly the defaults
    assert "# " in text and "max_message_size" in text and "allow_plaintext" in text
    assert run_cli(data, "init").returncode == 1  # refuses to overwrite
    assert run_cli(data, "init", "--force").returncode == 0


@pytest.mark.parametrize("doc, message", [
    ({"limits": {"max_msg": 1}}, "unknown key limits.max_msg"),
    ({"smtp": {"max_recipients": "many"}}, "smtp.max_recipients"),
    ({"pop3": {"idle": 1}}, "unknown key pop3.idle"),
    ({"gopher": {}}, "unknown section [gopher]"),
    ({"nope": {}}, "unknown section [nope]"),
    ({"listen": {"smtp": "localhost"}}, "listen.smtp"),
    ({"listen": {"gopher": ":70"}}, "unknown listener"),
    ({"tls": {"certificate": "x.pem"}}, "set both certificate and key"),
    ({"auth": {"allow_plaintext": "yes"}}, "auth.allow_plaintext"),
])
def test_bad_config_is_named(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(doc)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_serve_refuses_bad_config_file(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "netpost.toml").write_text("[limits]\nmax_errors = -1\n")
    r = run_cli(data, "serve")
    assert r.returncode == 1 and "limits.max_errors" in r.stderr
    r = run_cli(data, "serve", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = run_cli(tmp_path / "e", "serve", "--listen", "smtp=nowhere")
    assert r.returncode == 1 and "listen.smtp" in r.stderr


def test_render_default_is_valid_toml() -> None:
    tomllib.loads(render_default())


def test_serve_prints_listeners_demo_account_and_stops_on_sigterm(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d", config="")
    try:
        text = "".join(srv.output)
        assert set(srv.ports) == {"smtp", "submission", "submissions", "pop3", "pop3s", "imap",
                                  "imaps", "ftp", "ftps", "sftp", "http", "https", "ntp",
                                  "nts-ke"}
        assert "demo account: demo@netpost.test  password: " in text
        assert f"web: http://127.0.0.1:{srv.port('http')}/  (API docs: /api/v1/docs)" in text
        password = (srv.data / "demo-password").read_text().strip()
        assert password in text
        # A transaction in flight when SIGTERM arrives is finished, then the server exits 0.
        s = smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30)
        s.ehlo("x")
        s.mail("a@example.org")
        s.rcpt("demo@netpost.test")
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # New connections are refused now.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port("pop3")), timeout=2).recv(10)
        code, text_b = s.data(b"Subject: in flight\r\n\r\nstill delivered\r\n")
        assert code == 250, text_b
        # After the transaction the session is told to go away.
        assert s.noop()[0] == 421
        assert srv.proc.wait(30) == 0
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


def test_trace_shows_conversation_with_secrets_redacted(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d")
    lines: list[str] = []
    follower = subprocess.Popen(netpost_cmd(srv.data, "trace"), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        assert srv.cli("domain", "add", DOMAIN).returncode == 0
        srv.add_user(f"alice@{DOMAIN}", "s3cret-pass")
        time.sleep(0.5)
        with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=30) as s:
            s.starttls(context=client_tls())
            s.login(f"alice@{DOMAIN}", "s3cret-pass")
            s.sendmail(f"alice@{DOMAIN}", [f"alice@{DOMAIN}"],
                       b"Subject: t\r\n\r\nbody-text-secret\r\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("c: quit" in x.lower() for x in lines):
            time.sleep(0.1)
        text = "".join(lines)
        assert "c: ehlo" in text.lower() and "S: 250" in text and "127.0.0.1:" in text
        assert "C: AUTH PLAIN <redacted>" in text or "C: AUTH LOGIN" in text
        assert "s3cret-pass" not in text
        assert "body-text-secret" not in text and "<message:" in text
    finally:
        follower.kill()
        srv.stop()


def test_zero_limits_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"smtp": {"idle_timeout": 0}})
    assert "smtp.idle_timeout must be greater than 0" in str(info.value)


def test_settings_moved_to_a_service_section_still_load_with_a_warning() -> None:
    # A netpost.toml written by an older `netpost init` kept these in [limits].
    cfg = from_dict({"limits": {"idle_timeout": 30, "pop3_idle_timeout": 40,
                                "max_recipients": 7, "max_errors": 5}})
    assert cfg.services["smtp"].idle_timeout == 30.0
    assert cfg.services["smtp"].max_recipients == 7
    assert cfg.services["pop3"].idle_timeout == 40.0
    assert cfg.limits.max_errors == 5
    assert len(cfg.warnings) == 3
    assert any("limits.pop3_idle_timeout is now pop3.idle_timeout" in w for w in cfg.warnings)
    with pytest.raises(ConfigError, match="smtp.idle_timeout must be greater than 0"):
        from_dict({"limits": {"idle_timeout": 0}})


def test_throttle_memory_is_bounded() -> None:
    from netpost.auth.throttle import FailureThrottle

    t = FailureThrottle(0.1, 1.0, 60.0, max_tracked=3)
    for i in range(10):
        t.record_failure(f"10.0.0.{i}", "x", "test")
    assert t.failures("10.0.0.9") == 1 and t.failures("10.0.0.0") == 0
    assert t.record_failure("10.0.0.9", "x", "test") == 0.2  # doubled for a repeat offender


def test_maintenance_commands_and_the_server_lock(tmp_path: Path) -> None:
    data = tmp_path / "d"
    r = run_cli(data, "gc")
    assert r.returncode == 1 and "holds no netpost data" in r.stderr
    srv = start_server(data, config="")
    try:
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as smtp:
            smtp.sendmail("a@example.org", ["demo@netpost.test"], b"Subject: x\r\n\r\nhi\r\n")
        for command in ("gc", "check", "migrate"):
            r = run_cli(data, command)
            assert r.returncode == 1, r.stdout
            assert f"{data} is in use by netpost serve (pid {srv.proc.pid}): stop it first" \
                in r.stderr
        assert run_cli(data, "user", "list").returncode == 0  # admin commands need no lock
        with pytest.raises(RuntimeError, match="in use by netpost serve"):  # a second server
            start_server(data, config="")
    finally:
        assert srv.stop() == 0
    r = run_cli(data, "check")
    assert r.returncode == 0 and "checked 1 message body" in r.stdout, r.stdout + r.stderr
    r = run_cli(data, "gc")
    assert r.returncode == 0 and r.stdout.startswith("removed 0 unreferenced"), r.stdout
    r = run_cli(data, "migrate")
    assert r.returncode == 0 and "already in the current layout" in r.stdout
