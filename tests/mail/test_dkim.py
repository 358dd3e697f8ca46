"""DKIM keys and signing: files on disk, rotation, the TXT record, and signatures that dkimpy
(an independent verifier for our purposes: it is only given the published record) accepts."""

from __future__ import annotations

import base64
import re
import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from netpost.mail import dkim as ours

MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: bob@other.test\r\n"
           b"Subject: hello\r\n"
           b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <1@example.test>\r\n"
           b"X-Mailer: not signed\r\n"
           b"\r\n"
           b"Hello Bob,\r\nsee you.\r\n")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    ours.create_key(data, "example.test")
    return data


def dns_of(data: Path, domain: str) -> dict[bytes, bytes]:
    """The TXT records a domain publishes for its keys, as dkimpy asks for them."""
    out = {}
    for key in ours.list_keys(data, domain):
        out[(key.record_name + ".").encode()] = key.record_value().encode()
    return out


def verify(message: bytes, records: dict[bytes, bytes]) -> bool:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)
    return bool(dkim.verify(message, dnsfunc=dnsfunc))


def test_key_file_is_private_and_current(data_dir: Path) -> None:
    key = ours.current_key(data_dir, "Example.TEST.")
    assert key is not None and key.current
    assert re.fullmatch(r"np\d{6}", key.selector)
    assert key.path == data_dir / "dkim" / "example.test" / f"{key.selector}.key"
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(key.path.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    assert not list(key.path.parent.glob("*.tmp"))  # written atomically, nothing left over


def test_record_holds_the_public_half(data_dir: Path) -> None:
    name, value = ours.dkim_record(data_dir, "example.test")
    key = ours.current_key(data_dir, "example.test")
    assert key is not None
    assert name == f"{key.selector}._domainkey.example.test"
    m = re.fullmatch(r"v=DKIM1; k=rsa; p=([A-Za-z0-9+/=]+)", value)
    assert m
    public = serialization.load_der_public_key(base64.b64decode(m.group(1)))
    private = serialization.load_pem_private_key(key.path.read_bytes(), password=None)
    assert isinstance(public, rsa.RSAPublicKey) and isinstance(private, rsa.RSAPrivateKey)
    assert public.public_numbers() == private.public_key().public_numbers()


def test_no_key(tmp_path: Path) -> None:
    assert ours.current_key(tmp_path, "example.test") is None
    assert ours.sign(MESSAGE, "example.test", tmp_path) == b""  # the caller sends unsigned
    with pytest.raises(ours.DKIMError, match="no DKIM key"):
        ours.dkim_record(tmp_path, "example.test")
    assert ours.list_keys(tmp_path) == []


def test_rotation_keeps_the_old_key(tmp_path: Path) -> None:
    first = ours.create_key(tmp_path, "example.test")
    second = ours.create_key(tmp_path, "example.test")
    assert second.selector == f"{first.selector}-2"
    current = ours.current_key(tmp_path, "example.test")
    assert current is not None and current.selector == second.selector
    keys = ours.list_keys(tmp_path)
    assert [(k.selector, k.current) for k in keys] == [(first.selector, False),
                                                       (second.selector, True)]
    third = ours.create_key(tmp_path, "example.test", selector="Mail2027")
    assert third.selector == "mail2027"
    assert ours.dkim_record(tmp_path, "example.test")[0] == "mail2027._domainkey.example.test"
    with pytest.raises(ours.DKIMError, match="already"):
        ours.create_key(tmp_path, "example.test", selector="mail2027")


@pytest.mark.parametrize("selector", ["../x", "a b", "-x", "", "a..b", "x" * 64])
def test_bad_selector(tmp_path: Path, selector: str) -> None:
    with pytest.raises(ours.DKIMError, match="not a valid selector"):
        ours.create_key(tmp_path, "example.test", selector=selector)


@pytest.mark.parametrize("domain", ["../etc", "exa mple.test", ""])
def test_bad_domain(tmp_path: Path, domain: str) -> None:
    with pytest.raises(ours.DKIMError, match="not a valid domain"):
        ours.create_key(tmp_path, domain)
    assert not (tmp_path / "dkim").exists() or not any((tmp_path / "dkim").iterdir())


def test_signature_shape(data_dir: Path) -> None:
    field = ours.sign(MESSAGE, "example.test", data_dir)
    assert field.startswith(b"DKIM-Signature: ") and field.endswith(b"\r\n")
    assert b"\n" not in field.replace(b"\r\n", b"")
    tags = dict(t.strip().split(b"=", 1) for t in re.sub(rb"\r\n[ \t]", b"", field)
                .split(b":", 1)[1].split(b";"))
    assert tags[b"a"] == b"rsa-sha256" and tags[b"c"] == b"relaxed/relaxed"
    assert tags[b"d"] == b"example.test"
    signed = [h.strip().lower() for h in tags[b"h"].split(b":")]
    assert signed.count(b"from") == 2  # over-signed
    assert set(signed) == {b"from", b"to", b"subject", b"date", b"message-id"}


def test_dkimpy_verifies_our_signature(data_dir: Path) -> None:
    records = dns_of(data_dir, "example.test")
    signed = ours.sign(MESSAGE, "example.test", data_dir) + MESSAGE
    assert verify(signed, records)
    # relaxed/relaxed: a relay that refolds white space does not break it
    assert verify(signed.replace(b"Subject: hello", b"Subject:   hello  "), records)


@pytest.mark.parametrize("tamper", [
    lambda m: m.replace(b"see you.", b"see you!"),
    lambda m: m.replace(b"Subject: hello", b"Subject: pay now"),
    lambda m: m.replace(b"To: bob", b"From: mallory@evil.test\r\nTo: bob"),  # a second From
    lambda m: m + b"PS. extra line\r\n",
])
def test_tampered_message_fails(data_dir: Path, tamper: Callable[[bytes], bytes]) -> None:
    records = dns_of(data_dir, "example.test")
    signed = ours.sign(MESSAGE, "example.test", data_dir) + MESSAGE
    assert not verify(tamper(signed), records)


def test_unsigned_fields_may_change(data_dir: Path) -> None:
    records = dns_of(data_dir, "example.test")
    signed = ours.sign(MESSAGE, "example.test", data_dir) + MESSAGE
    assert verify(signed.replace(b"X-Mailer: not signed", b"X-Mailer: changed"), records)
    assert verify(b"Received: from relay\r\n" + signed, records)


def test_wrong_key_fails(data_dir: Path, tmp_path: Path) -> None:
    ours.create_key(tmp_path, "example.test", selector=ours.current_key(
        data_dir, "example.test").selector)  # type: ignore[union-attr]
    signed = ours.sign(MESSAGE, "example.test", tmp_path) + MESSAGE
    assert not verify(signed, dns_of(data_dir, "example.test"))
    assert verify(signed, dns_of(tmp_path, "example.test"))


def test_message_without_from_is_refused(data_dir: Path) -> None:
    with pytest.raises(ours.DKIMError, match="no From"):
        ours.sign(b"To: bob@other.test\r\nSubject: x\r\n\r\nbody\r\n", "example.test",
                  data_dir)


def test_lf_message_signs(data_dir: Path) -> None:
    """A message with bare LF line ends (as a local tool may hand it over) still signs."""
    lf = MESSAGE.replace(b"\r\n", b"\n")
    signed = ours.sign(lf, "example.test", data_dir) + MESSAGE
    assert verify(signed, dns_of(data_dir, "example.test"))


# --- the command line --------------------------------------------------------------------------


def test_cli_domain_add_makes_key_and_dkim_commands(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    data = tmp_path / "d"
    r = run_cli(data, "domain", "add", "Example.TEST")
    assert r.returncode == 0, r.stderr
    key = ours.current_key(data, "example.test")
    assert key is not None
    name, value = ours.dkim_record(data, "example.test")
    assert f"name:  {name}" in r.stdout and f"value: {value}" in r.stdout

    r = run_cli(data, "dkim", "show", "example.test")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"  name:  {name}" in lines and f"  value: {value}" in lines
    zone = next(line for line in lines if line.startswith("  zone:"))
    strings = re.findall(r'"([^"]*)"', zone)
    assert "".join(strings) == value and all(len(s) <= 255 for s in strings)
    assert zone.split()[1] == name + "."

    r = run_cli(data, "domain", "add", "example.test")  # again: the same key is shown
    assert ours.current_key(data, "example.test") == key

    r = run_cli(data, "dkim", "new", "example.test", "--selector", "next")
    assert r.returncode == 0, r.stderr
    assert f"selector {key.selector} published" in r.stdout
    assert "next._domainkey.example.test" in r.stdout
    r = run_cli(data, "dkim", "list")
    assert r.stdout.splitlines() == [f"example.test {key.selector}",
                                     "example.test next (current)"]
    # the new key signs, and dkimpy verifies with the record `show` prints
    _, new_value = ours.dkim_record(data, "example.test")
    assert f"value: {new_value}" in run_cli(data, "dkim", "show", "example.test").stdout
    assert verify(ours.sign(MESSAGE, "example.test", data) + MESSAGE,
                  {b"next._domainkey.example.test.": new_value.encode()})


def test_cli_errors(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    data = tmp_path / "d"
    assert run_cli(data, "domain", "add", "example.test").returncode == 0
    for args, message in [
        (("dkim", "new", "other.test"), "unknown domain other.test"),
        (("dkim", "show", "other.test"), "other.test has no DKIM key"),
        (("dkim", "show"), "needs DOMAIN"),
        (("dkim", "new", "example.test", "--selector", "../x"), "not a valid selector"),
        (("dkim", "show", "bad domain"), "not a valid domain"),
    ]:
        r = run_cli(data, *args)
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1


def test_signature_is_dkimpys_byte_for_byte(data_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The RSA step runs in OpenSSL; everything else is dkimpy's: with the same t= the field
    must be exactly what dkimpy makes on its own (RSASSA-PKCS1-v1_5 is deterministic)."""
    monkeypatch.setattr(dkim.time, "time", lambda: 1_800_000_000.0)
    key = ours.current_key(data_dir, "example.test")
    assert key is not None
    fields = [b"from", b"to", b"subject", b"date", b"message-id", b"from"]
    reference = dkim.sign(MESSAGE, key.selector.encode(), b"example.test",
                          key.path.read_bytes(), canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=fields, linesep=b"\r\n")
    assert ours.sign(MESSAGE, "example.test", data_dir) == reference
    assert b"t=1800000000" in reference
