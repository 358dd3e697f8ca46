"""A real `netpost serve` for the web API tests: admin@ (an administrator), alice@ and bob@,
an API token for each, and httpx clients on the http listener (and https)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import CONFIG, DOMAIN, PASSWORD, Server, start_server

ADMIN = f"admin@{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
# Remote mail goes to a smart host that refuses connections: it waits in the queue (deferred).
API_CONFIG = CONFIG + f'[web]\nadmins = ["{ADMIN}"]\n[relay]\nsmarthost = "127.0.0.1:9"\n'


@dataclass
class Api:
    server: Server
    tokens: dict[str, str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port('http')}"

    @property
    def secure_base(self) -> str:
        return f"https://127.0.0.1:{self.server.port('https')}"

    def client(self, who: str | None = None, **kwargs: object) -> httpx.Client:
        """A client on the http listener; with `who`, sending that user's bearer token."""
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.base + "/api/v1", headers=headers, timeout=30,
                            **kwargs)  # type: ignore[arg-type]

    def login(self, who: str, password: str = PASSWORD) -> tuple[httpx.Client, str]:
        """A client with a session cookie; and its CSRF token."""
        c = httpx.Client(base_url=self.base + "/api/v1", timeout=30)
        r = c.post("/login", json={"address": who, "password": password})
        assert r.status_code == 200, r.text
        return c, r.json()["csrf_token"]

    def mailbox_id(self, who: str, name: str = "INBOX") -> int:
        with self.client(who) as c:
            boxes = c.get("/mailboxes").json()["mailboxes"]
        return next(b["id"] for b in boxes if b["name"] == name)


def make_token(server: Server, who: str) -> str:
    r = server.cli("token", "create", who, "--name", "tests")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    srv = start_server(tmp_path_factory.mktemp("api"), API_CONFIG)
    try:
        assert srv.cli("domain", "add", DOMAIN).returncode == 0
        for who in (ADMIN, ALICE, BOB):
            srv.add_user(who)
        yield Api(srv, {who: make_token(srv, who) for who in (ADMIN, ALICE, BOB)})
    finally:
        srv.stop()
