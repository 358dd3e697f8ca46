"""WKD: netpost publishes users' keys (`netpost user pgp-key set`) on its web app; the agent
finds keys by the advanced and the direct method over real HTTPS (a TLS front the test
starts, with a CA of its own), never mocked."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netpost.agent.wkd import urls, wkd_hash, zbase32
from tests.agent.conftest import MailUser, write_account
from tests.conftest import Server


def test_zbase32_and_the_drafts_example() -> None:
    # draft-koch-openpgp-webkey-service section 3.1
    assert wkd_hash("Joe.Doe") == "iy9q119eutrkn8s1mk4r39qejnbu3n5q"
    advanced, direct = urls("Joe.Doe@Example.ORG")
    assert str(advanced) == ("https://openpgpkey.example.org/.well-known/openpgpkey/"
                             "example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe")
    assert str(direct) == ("https://example.org/.well-known/openpgpkey/hu/"
                           "iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe")
    assert zbase32(b"\x00") == "yy" and zbase32(b"\xff\xff") == "999o"


def make_ca(tmp: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `names`: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netpost test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TLSFront:
    """HTTPS in front of netpost's http listener: TLS ends here, the octets go on."""

    def __init__(self, cert: Path, key: Path, backend_port: int) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.backend_port = backend_port
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                w.close()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            br, bw = await asyncio.open_connection("127.0.0.1", self.backend_port)
            await asyncio.gather(pipe(r, bw), pipe(br, w))

        async def start() -> None:
            self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.ctx)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def published(users: dict[str, MailUser], mail_server: Server, tmp_path: Path) -> str:
    """bob's key, published by netpost; returns it armored."""
    bob = users["bob"]
    if "sec " not in bob.run("key", "list").stdout:
        bob.run("key", "generate")
    key = bob.run("key", "export").stdout
    (tmp_path / "bob.asc").write_text(key)
    r = mail_server.cli("user", "pgp-key", "set", bob.address, str(tmp_path / "bob.asc"))
    assert r.returncode == 0, r.stderr
    assert f"for {bob.address}" in r.stdout and wkd_hash("bob") in r.stdout
    return key


def test_netpost_publishes_keys_by_wkd(published: str, users: dict[str, MailUser],
                                       mail_server: Server, tmp_path: Path) -> None:
    import pysequoia

    base = f"http://127.0.0.1:{mail_server.port('http')}/.well-known/openpgpkey"
    h = wkd_hash("bob")
    want = bytes(pysequoia.Cert.from_bytes(published.encode()))
    advanced = httpx.get(f"{base}/example.test/hu/{h}?l=bob")
    assert advanced.status_code == 200 and advanced.content == want
    assert advanced.headers["content-type"] == "application/octet-stream"
    direct = httpx.get(f"{base}/hu/{h}?l=bob", headers={"Host": "example.test"})
    assert direct.status_code == 200 and direct.content == want
    assert httpx.get(f"{base}/example.test/policy").status_code == 200
    assert httpx.get(f"{base}/hu/{wkd_hash('nobody')}",
                     headers={"Host": "example.test"}).status_code == 404
    assert httpx.get(f"{base}/other.test/hu/{h}").status_code == 404
    assert httpx.get(f"{base}/..%2f..%2fetc/hu/{h}").status_code == 404
    assert httpx.get(f"{base}/example.test/hu/..%2f..%2fpasswd").status_code == 404
    shown = mail_server.cli("user", "pgp-key", "show", users["bob"].address)
    assert shown.returncode == 0 and "BEGIN PGP PUBLIC KEY BLOCK" in shown.stdout

    # refused: a secret key, a key for someone else, not a key, an unknown user
    alice = users["alice"]
    if "sec " not in alice.run("key", "list").stdout:
        alice.run("key", "generate")
    (tmp_path / "secret.asc").write_text(alice.run("key", "export", "--secret").stdout)
    (tmp_path / "alice.asc").write_text(alice.run("key", "export").stdout)
    (tmp_path / "junk.asc").write_text("hello\n")
    for who, path, why in ((alice.address, "secret.asc", "secret key"),
                           (users["carol"].address, "alice.asc", "no user ID with carol"),
                           (alice.address, "junk.asc", "not an OpenPGP key"),
                           ("zed@example.test", "alice.asc", "no user zed@example.test")):
        r = mail_server.cli("user", "pgp-key", "set", who, str(tmp_path / path))
        assert r.returncode == 1 and why in r.stderr, (why, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert httpx.get(f"{base}/example.test/hu/{wkd_hash('carol')}").status_code == 404


@pytest.fixture
def front(mail_server: Server, tmp_path: Path) -> Iterator[tuple[TLSFront, Path]]:
    ca, cert, key = make_ca(tmp_path, ["openpgpkey.example.test", "example.test"])
    f = TLSFront(cert, key, mail_server.port("http"))
    yield f, ca
    f.close()


def test_agent_locates_keys_by_both_methods(published: str, users: dict[str, MailUser],
                                            front: tuple[TLSFront, Path], mail_server: Server,
                                            tmp_path: Path) -> None:
    tls, ca = front
    carol = users["carol"]
    at = f"127.0.0.1:{tls.port}"
    r = carol.run("key", "locate", "bob@example.test", "--wkd-ca-file", str(ca),
                  "--connect-to", f"openpgpkey.example.test={at}")
    assert "imported key Bob <bob@example.test>" in r.stdout
    assert "https://openpgpkey.example.test/.well-known/openpgpkey/example.test/hu/" in r.stdout
    # no openpgpkey host (nothing answers there): the direct method
    r = carol.run("key", "locate", "bob@example.test", "--wkd-ca-file", str(ca),
                  "--connect-to", "openpgpkey.example.test=127.0.0.1:1",
                  "--connect-to", f"example.test={at}")
    assert "https://example.test/.well-known/openpgpkey/hu/" in r.stdout
    # and with it carol can encrypt to bob
    carol.run("key", "generate")
    carol.run("send", "--encrypt", "--to", "bob@example.test", "-s", "found by wkd",
              "--body", "hello via WKD", "--no-save")
    uid = [line.split()[0] for line in users["bob"].run("search", "--subject",
                                                          "found by wkd").stdout.splitlines()
           if line[:7].strip().isdigit()]
    assert "hello via WKD" in users["bob"].run("read", uid[0]).stdout

    # send --encrypt --wkd fetches a recipient's missing key itself
    mail_server.add_user("dora@example.test")
    dora = MailUser("dora@example.test", write_account(
        mail_server, tmp_path / "dora.toml", "dora@example.test"), tmp_path)
    dora.run("key", "generate")
    dora.run("send", "--encrypt", "--wkd", "--wkd-ca-file", str(ca), "--connect-to",
             f"openpgpkey.example.test={at}", "--to", "bob@example.test", "-s",
             "wkd on send", "--body", "fetched on the way", "--no-save")
    assert "imported key Bob" not in dora.run("key", "list").stdout
    assert "Bob <bob@example.test>" in dora.run("key", "list").stdout
    uid = [line.split()[0] for line in users["bob"].run("search", "--subject",
                                                          "wkd on send").stdout.splitlines()
           if line[:7].strip().isdigit()]
    assert "fetched on the way" in users["bob"].run("read", uid[0]).stdout

    none = carol.run("key", "locate", "nobody@example.test", "--wkd-ca-file", str(ca),
                     "--connect-to", f"openpgpkey.example.test={at}", check=False)
    assert none.returncode == 1 and "publishes no key for nobody@example.test" in none.stderr
    # the certificate must be valid for the name: without the test CA it is not trusted
    untrusted = carol.run("key", "locate", "bob@example.test", "--connect-to",
                          f"openpgpkey.example.test={at}", check=False)
    assert untrusted.returncode == 1 and "certificate" in untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1
