"""netpost as a test fixture (a pytest plugin, like GreenMail for Java).

Installed with netpost, registered through the `pytest11` entry point: any project that has
netpost installed gets the fixtures below.

    def test_signup_mail(netpost):
        with smtplib.SMTP(*netpost.address("smtp")) as s:
            s.sendmail("app@example.test", ["alice@example.test"], b"Subject: hi\\r\\n\\r\\nx")
        [msg] = netpost.wait_for_messages("alice@example.test", 1)
        assert msg["Subject"] == "hi"

- `netpost`: a server of its own for the test, in a temporary data directory, on free
  loopback ports, with the listeners smtp, submission, pop3, imap and http, the domain
  example.test and the accounts alice@ and bob@ (password `secret`).  Passwords are
  accepted without TLS ([auth] allow_plaintext, loopback only) and the relay is off: mail to
  other domains is refused, nothing leaves the machine.
- `netpost_factory`: start servers with other listeners, accounts or settings:
  `netpost_factory(listeners=("smtp", "imaps"), accounts={"x@example.test": "pw"},
  config="[smtp]\\nmax_recipients = 5\\n")`.
- `start_netpost(...)` does the same outside pytest (a context manager).

The server runs in a thread of the test's process (its own event loop), so starting one costs
a fraction of a second; `stop()` (done by the fixtures) ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

DEFAULT_LISTENERS: tuple[str, ...] = ("smtp", "submission", "pop3", "imap", "http")
DEFAULT_DOMAIN = "example.test"
DEFAULT_PASSWORD = "secret"
DEFAULT_ACCOUNTS: Mapping[str, str] = {f"alice@{DEFAULT_DOMAIN}": DEFAULT_PASSWORD,
                                       f"bob@{DEFAULT_DOMAIN}": DEFAULT_PASSWORD}
BASE_CONFIG = """
[auth]
allow_plaintext = true
failure_delay = 0.05
failure_max_delay = 0.2
[relay]
enabled = false
"""


class NetpostError(Exception):
    """The test server could not start, or a wait timed out."""


@dataclass
class RunningNetpost:
    """A netpost server started for a test: where it listens, its accounts, its mail."""

    data_dir: Path
    addresses: dict[str, tuple[str, int]]  # listener name -> (host, port)
    accounts: dict[str, str]  # address -> password
    domains: list[str]
    _stop: Callable[[], None] = field(repr=False, default=lambda: None)

    def address(self, listener: str) -> tuple[str, int]:
        """(host, port) of a listener, e.g. `smtplib.SMTP(*netpost.address("smtp"))`."""
        try:
            return self.addresses[listener]
        except KeyError:
            raise NetpostError(f"listener {listener!r} is not running (started: "
                               f"{', '.join(self.addresses)})") from None

    def port(self, listener: str) -> int:
        return self.address(listener)[1]

    def url(self, path: str = "/", listener: str = "http") -> str:
        host, port = self.address(listener)
        scheme = "https" if listener == "https" else "http"
        return f"{scheme}://{host}:{port}{path}"

    def add_account(self, address: str, password: str = DEFAULT_PASSWORD) -> str:
        """A new account (its domain is added if needed); returns the address."""
        from netpost.auth.passwords import hash_password
        from netpost.store.embedded import open_admin

        stores = open_admin(self.data_dir)
        try:
            domain = address.rpartition("@")[2].lower()
            if not stores.domains.has_domain(domain):
                stores.domains.add_domain(domain)
                self.domains.append(domain)
            stores.accounts.add_account(address, hash_password(password))
        finally:
            stores.close()
        self.accounts[address.lower()] = password
        return address.lower()

    def api_token(self, address: str, name: str = "test") -> str:
        """A bearer token of the web API acting as `address`."""
        from netpost.store.embedded import open_admin
        from netpost.web.api.auth import make_credential

        stores = open_admin(self.data_dir)
        try:
            return make_credential(stores.tokens, address, "api", name=name).secret_text
        finally:
            stores.close()

    def raw_messages(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        """The messages delivered to a mailbox of `address`, oldest first, as stored."""
        from netpost.store.embedded import open_reader

        reader = open_reader(self.data_dir)
        try:
            account = reader.accounts.get_account(address.lower())
            if account is None:
                raise NetpostError(f"no account {address}")
            box = reader.mailboxes.get_mailbox(account.id, mailbox)
            if box is None:
                raise NetpostError(f"{address} has no mailbox {mailbox}")
            return [reader.blobs.read(row.blob) for row in reader.messages.messages(box.id)]
        finally:
            reader.close()

    def messages(self, address: str, mailbox: str = "INBOX") -> list[EmailMessage]:
        """The delivered messages, parsed (`msg["Subject"]`, `msg.get_content()`...), with
        line ends made \n as Python's email package expects (raw_messages keeps CRLF)."""
        out = []
        for raw in self.raw_messages(address, mailbox):
            msg = email.message_from_bytes(raw.replace(b"\r\n", b"\n"),
                                           policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out

    def wait_for_messages(self, address: str, count: int, timeout: float = 10.0,
                          mailbox: str = "INBOX") -> list[EmailMessage]:
        """Wait until the mailbox holds at least `count` messages; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(address, mailbox)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise NetpostError(f"{address} {mailbox}: {len(found)} messages after "
                                   f"{timeout} s, expected {count}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop()


def _config_text(listeners: Sequence[str], extra: str, registry: Any) -> str:
    lines = ["[listen]"]
    for name in registry.listener_names():
        lines.append(f'{name} = "{"127.0.0.1:0" if name in listeners else "off"}"')
    return BASE_CONFIG + "\n".join(lines) + "\n" + extra


@contextlib.contextmanager
def start_netpost(data_dir: Path | None = None, *,
                  listeners: Sequence[str] = DEFAULT_LISTENERS,
                  accounts: Mapping[str, str] = DEFAULT_ACCOUNTS,
                  config: str = "", timeout: float = 30.0) -> Iterator[RunningNetpost]:
    """Run netpost in a thread until the `with` block ends."""
    from netpost.auth.passwords import hash_password
    from netpost.config import load
    from netpost.registry import default_registry
    from netpost.server import serve
    from netpost.store.embedded import open_admin

    registry = default_registry()
    unknown = [n for n in listeners if n not in registry.listener_names()]
    if unknown:
        raise NetpostError(f"no listener {', '.join(unknown)} (there are: "
                           f"{', '.join(registry.listener_names())})")
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="netpost-")))
        data_dir.mkdir(parents=True, exist_ok=True)
        config_path = data_dir / "netpost.toml"
        config_path.write_text(_config_text(listeners, config, registry))
        cfg = load(config_path)
        domains: list[str] = []
        stores = open_admin(data_dir)
        try:
            for address in accounts:
                domain = address.rpartition("@")[2].lower()
                if domain not in domains:
                    domains.append(domain)
                    if not stores.domains.has_domain(domain):
                        stores.domains.add_domain(domain)
                if stores.accounts.get_account(address.lower()) is None:
                    stores.accounts.add_account(address.lower(), hash_password(accounts[address]))
            if not domains:  # no demo account: the test says what it wants
                stores.domains.add_domain(DEFAULT_DOMAIN)
                domains.append(DEFAULT_DOMAIN)
        finally:
            stores.close()
        cfg = replace(cfg, demo=replace(cfg.demo, domain=domains[0]))

        addresses: dict[str, tuple[str, int]] = {}
        ready = threading.Event()
        failure: list[BaseException] = []
        loop_box: list[asyncio.AbstractEventLoop] = []
        stop_box: list[asyncio.Event] = []

        def announce(line: str) -> None:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "listening":
                host, _, port = parts[2].removesuffix("/udp").rpartition(":")
                addresses[parts[1]] = (host.strip("[]"), int(port))
            if line == "ready":
                ready.set()

        async def main() -> None:
            stop = asyncio.Event()
            loop_box.append(asyncio.get_running_loop())
            stop_box.append(stop)
            await serve(data_dir, cfg, announce=announce, registry=registry, stop=stop)

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # SystemExit from a listener that cannot bind
                failure.append(exc)
            finally:
                ready.set()

        thread = threading.Thread(target=run, name="netpost-test-server", daemon=True)
        thread.start()

        def stop() -> None:
            if loop_box and stop_box and thread.is_alive():
                with contextlib.suppress(RuntimeError):
                    loop_box[0].call_soon_threadsafe(stop_box[0].set)
            thread.join(60)

        if not ready.wait(timeout) or failure:
            stop()
            raise NetpostError(f"netpost did not start: {failure[0] if failure else 'timeout'}")
        running = RunningNetpost(data_dir, addresses, {a.lower(): p for a, p in
                                                       accounts.items()}, domains, stop)
        try:
            yield running
        finally:
            stop()


# --- the pytest plugin ---------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the plugin needs pytest; the helpers above do not
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def netpost_factory(tmp_path: Path) -> Iterator[Callable[..., RunningNetpost]]:
        """Start netpost servers for this test: `netpost_factory(listeners=..., accounts=...,
        config=...)`; each is stopped when the test ends."""
        with contextlib.ExitStack() as stack:
            count = 0

            def make(**kwargs: Any) -> RunningNetpost:
                nonlocal count
                count += 1
                kwargs.setdefault("data_dir", tmp_path / f"netpost-{count}")
                return stack.enter_context(start_netpost(**kwargs))

            yield make

    @pytest.fixture
    def netpost(netpost_factory: Callable[..., RunningNetpost]) -> RunningNetpost:
        """A netpost server for this test: smtp, submission, pop3, imap and http on free
        loopback ports; alice@example.test and bob@example.test, password 'secret'."""
        return netpost_factory()
