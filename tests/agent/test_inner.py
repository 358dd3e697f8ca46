"""inner.py against messages GnuPG makes (sign + encrypt, compressed: ZLIB, ZIP, BZip2, to
Curve25519, NIST P-256 and RSA keys), and against messages made here under the session key
GnuPG reports (tampered MDC, decompression bombs, nested compression): hostile input gives
a FormatError and nothing else (hypothesis, bounded), and the inflate limit holds."""

from __future__ import annotations

import base64
import bz2
import email.policy
import hashlib
import os
import re
import subprocess
import time
import zlib
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pysequoia
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpost.agent import AgentError, inner, keyprotect, mime_pgp
from netpost.agent.inner import _inflate, dearmor, session_key, signed_inner
from netpost.agent.keyprotect import secret_fields
from netpost.agent.pgp import Keyring
from netpost.agent.render import parse
from netpost.agent.rfc4880 import (
    TAG_COMPRESSED,
    TAG_PKESK,
    TAG_SEIPD,
    FormatError,
    cfb_encrypt,
    header,
    packets,
    read_s2k,
)
from tests.agent.conftest import GPG_HOMES, user_env
from tests.conftest import require_tool

BOUNDED = settings(max_examples=150, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow,
                                          HealthCheck.function_scoped_fixture])
CONTENT = b"Content-Type: text/plain\r\n\r\nSigned, compressed, encrypted.\r\n"


@dataclass
class Made:
    tsk: bytes  # the recipient's secret key, unprotected, binary
    cert: pysequoia.Cert
    messages: dict[str, bytes]  # compression algorithm -> binary message
    session: dict[str, tuple[int, bytes]]  # compression algorithm -> GnuPG's session key


def _gpg(home: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run([require_tool("gpg"), "--batch", "--yes", "--pinentry-mode", "loopback",
                        "--passphrase", "", "--trust-model", "always", *args], input=stdin,
                       capture_output=True, timeout=120, env=user_env(home))
    assert r.returncode == 0, r.stderr.decode()
    return r


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Made]:
    out = {}
    for kind, algo in (("cv25519", "future-default"), ("nist", "nistp256"),
                       ("rsa", "rsa2048")):
        home = tmp_path_factory.mktemp(f"gpg-{kind}")
        (home / ".gnupg").mkdir(mode=0o700)
        GPG_HOMES.add(home)
        uid = f"Inner {kind} <inner-{kind}@example.test>"
        _gpg(home, "--quick-gen-key", uid, algo, "default", "never")
        if kind != "cv25519":  # future-default makes its encryption subkey itself
            fpr = re.search(rb"^fpr:+([0-9A-F]{40}):", _gpg(
                home, "--list-keys", "--with-colons", uid).stdout, re.M)
            assert fpr is not None
            _gpg(home, "--quick-add-key", fpr.group(1).decode(), algo, "encr", "never")
        tsk = _gpg(home, "--export-secret-keys", uid).stdout
        messages, session = {}, {}
        for compress in ("zlib", "zip", "bzip2"):
            message = _gpg(home, "--sign", "--encrypt", "--recipient", uid, "--compress-algo",
                           compress, stdin=CONTENT).stdout
            shown = _gpg(home, "--show-session-key", "--decrypt", stdin=message).stderr
            found = re.search(rb"session key: '(\d+):([0-9A-F]+)'", shown)
            assert found is not None
            messages[compress] = message
            session[compress] = (int(found.group(1)), bytes.fromhex(found.group(2).decode()))
        out[kind] = Made(tsk, pysequoia.Tsk.from_bytes(tsk).extract_certificate(), messages,
                         session)
    return out


def _verified(signed: bytes, cert: pysequoia.Cert) -> bytes:
    result = pysequoia.verify(bytes=signed, store=lambda _: [cert])
    assert result.valid_sigs and result.bytes is not None
    return result.bytes


@pytest.mark.parametrize("kind", ["cv25519", "nist", "rsa"])
def test_gnupg_messages_give_their_signed_message(made: dict[str, Made], kind: str) -> None:
    m = made[kind]
    for compress, message in m.messages.items():
        assert session_key([p.body for p in packets(message, partial=True)
                            if p.tag == TAG_PKESK], m.tsk, None) == m.session[compress]
        signed = signed_inner(message, m.tsk, None, len(CONTENT) + 4096)
        assert _verified(signed, m.cert) == CONTENT
        with pytest.raises(FormatError, match="beyond"):  # the limit holds for each kind
            signed_inner(message, m.tsk, None, len(CONTENT) // 2)


def _seal(m: Made, plain_packets: bytes, *, mdc: bytes | None = None,
          prefix: bytes | None = None) -> bytes:
    """A message to `m`'s key: GnuPG's PKESK (ZLIB message), a SEIPDv1 made here with its
    session key around `plain_packets` (with `mdc` instead of the right one, if given)."""
    sym, key = m.session["zlib"]
    pkesk = [p.raw for p in packets(m.messages["zlib"], partial=True) if p.tag == TAG_PKESK]
    random = os.urandom(16)
    head = prefix if prefix is not None else random + random[14:16]
    body = head + plain_packets + b"\xd3\x14"
    body += mdc if mdc is not None else hashlib.sha1(body).digest()
    sealed = b"\x01" + cfb_encrypt(key, b"\0" * 16, body)
    return b"".join(pkesk) + header(TAG_SEIPD, len(sealed)) + sealed


def _compressed(algo: int, data: bytes) -> bytes:
    if algo == 1:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = c.compress(data) + c.flush()
    elif algo == 2:
        packed = zlib.compress(data, 9)
    else:
        packed = bz2.compress(data, 9)
    body = bytes([algo]) + packed
    return header(TAG_COMPRESSED, len(body)) + body


def _signed_packets(m: Made) -> bytes:
    return signed_inner(m.messages["zlib"], m.tsk, None, 1 << 16)


def test_made_here_the_same_way(made: dict[str, Made]) -> None:
    m = made["cv25519"]
    signed = _signed_packets(m)
    for algo in (1, 2, 3):
        assert signed_inner(_seal(m, _compressed(algo, signed)), m.tsk, None, 4096) == signed


def test_the_mdc_is_checked_over_prefix_content_and_its_header(made: dict[str, Made]) -> None:
    m = made["cv25519"]
    good = _compressed(2, _signed_packets(m))
    prefix = os.urandom(14) + b"ab" + b"ab"
    assert signed_inner(_seal(m, good, prefix=prefix), m.tsk, None, 4096)
    for bad in (_seal(m, good, mdc=b"\0" * 20),
                _seal(m, good, mdc=hashlib.sha1(prefix + good).digest(), prefix=prefix),
                _seal(m, good, mdc=hashlib.sha1(good + b"\xd3\x14").digest(), prefix=prefix),
                _seal(m, good, prefix=os.urandom(14) + b"ab" + b"ba")):  # the quick check
        with pytest.raises(FormatError, match="modification detection code"):
            signed_inner(bad, m.tsk, None, 4096)
    # one flipped ciphertext bit in the content
    sealed = bytearray(_seal(m, good, prefix=prefix))
    sealed[-60] ^= 1
    with pytest.raises(FormatError, match="modification detection code"):
        signed_inner(bytes(sealed), m.tsk, None, 4096)


@pytest.mark.parametrize("algo", [1, 2, 3])
def test_decompression_bombs_stop_at_the_limit(made: dict[str, Made], algo: int) -> None:
    m = made["cv25519"]
    literal = b"b\0\0\0\0\0" + b"\0" * (32 << 20)  # 32 MiB of zeros: a few KiB compressed
    bomb = _compressed(algo, header(11, len(literal)) + literal)
    assert len(bomb) < 1 << 20
    start = time.monotonic()
    with pytest.raises(FormatError, match="beyond"):
        signed_inner(_seal(m, bomb), m.tsk, None, 1 << 20)
    assert time.monotonic() - start < 10
    with pytest.raises(FormatError, match="beyond"):
        _inflate(packets(bomb)[0].body, 1 << 20)
    with pytest.raises(ValueError):  # zlib's max_length 0 is "no limit": never asked for
        _inflate(b"\x02" + zlib.compress(b"x"), -1)


@pytest.mark.parametrize("algo", [1, 2, 3])
def test_nested_compression_is_refused(made: dict[str, Made], algo: int) -> None:
    """pysequoia.verify would inflate an inner layer past the limit: not handed to it."""
    m = made["cv25519"]
    literal = b"b\0\0\0\0\0" + b"\0" * (16 << 20)
    nested = _compressed(algo, _compressed(algo, header(11, len(literal)) + literal))
    with pytest.raises(FormatError, match="compressed data inside compressed data"):
        signed_inner(_seal(m, nested), m.tsk, None, 1 << 20)


def test_many_pkesks_cost_one_unlock_and_are_bounded(made: dict[str, Made],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    m = made["cv25519"]
    # the same key, protected with a cheap S2K so the test is quick
    monkeypatch.setattr(keyprotect, "COUNT_OCTET", 0)
    protected = keyprotect.protect(m.tsk, "pw")
    calls = []
    real = inner.secret_fields

    def counting(body: bytes, passphrase: str | None) -> bytes:
        calls.append(passphrase)
        return real(body, passphrase)

    monkeypatch.setattr(inner, "secret_fields", counting)
    [pkesk] = [p.body for p in packets(m.messages["zlib"], partial=True) if p.tag == TAG_PKESK]
    wildcard = pkesk[:1] + b"\0" * 8 + pkesk[9:]
    junk = wildcard[:-3] + bytes([wildcard[-3] ^ 1]) + wildcard[-2:]  # does not unwrap
    assert session_key([junk] * 10 + [wildcard], protected, "pw") == m.session["zlib"]
    assert calls == ["pw"]  # one S2K for eleven PKESKs
    calls.clear()
    with pytest.raises(FormatError, match="wrong passphrase"):
        session_key([junk] * 1000, protected, "not it")
    assert calls == ["not it"]
    with pytest.raises(FormatError, match="more than"):
        session_key([junk] * 1000, protected, "pw")


def test_read_s2k_and_gnupg_symmetric_keys(tmp_path: Path) -> None:
    """s2k_key agrees with GnuPG: a symmetrically encrypted message's session key is the
    S2K of its passphrase (SKESK v4 without an encrypted session key, RFC 4880 5.3)."""
    home = tmp_path
    (home / ".gnupg").mkdir(mode=0o700)
    GPG_HOMES.add(home)
    for digest in ("SHA256", "SHA1", "SHA512"):  # GnuPG 2.2 hashes 65,011,712 octets
        out = subprocess.run(
            [require_tool("gpg"), "--batch", "--pinentry-mode", "loopback", "--passphrase",
             "an S2K test", "--symmetric", "--cipher-algo", "AES256", "--s2k-digest-algo",
             digest, "--s2k-mode", "3"], input=b"x",
            capture_output=True, timeout=60, env=user_env(home), check=True).stdout
        shown = subprocess.run(
            [require_tool("gpg"), "--batch", "--pinentry-mode", "loopback", "--passphrase",
             "an S2K test", "--show-session-key", "--decrypt"], input=out,
            capture_output=True, timeout=60, env=user_env(home), check=True).stderr
        found = re.search(rb"session key: '9:([0-9A-F]+)'", shown)
        assert found is not None
        skesk = [p.body for p in packets(out, partial=True) if p.tag == 3][0]
        assert skesk[:2] == b"\x04\x09"
        s2k, end = read_s2k(skesk, 2)
        assert end == len(skesk) and s2k.count == 65011712 and skesk[-1] == 0xFF
        assert s2k.key(b"an S2K test", 32) == bytes.fromhex(found.group(1).decode())
    for truncated in (b"", b"\x03", b"\x03\x08", b"\x03\x08" + b"s" * 8, b"\x01\x08salt"):
        with pytest.raises(FormatError):
            read_s2k(truncated, 0)
    for unknown in (b"\x65\x02GNU\x01", b"\x03\x63" + b"s" * 9):
        with pytest.raises(FormatError):
            read_s2k(unknown, 0)


def _mutations() -> st.SearchStrategy[tuple[str, int, int, bytes]]:
    return st.tuples(st.sampled_from(["flip", "cut", "insert", "replace"]),
                     st.integers(0, 1 << 16), st.integers(0, 255),
                     st.binary(min_size=0, max_size=8))


def _mutate(data: bytes, how: tuple[str, int, int, bytes]) -> bytes:
    op, at, value, extra = how
    at %= len(data) + 1
    if op == "flip" and at < len(data):
        return data[:at] + bytes([data[at] ^ (value or 1)]) + data[at + 1:]
    if op == "cut":
        return data[:at]
    if op == "insert":
        return data[:at] + extra + data[at:]
    return data[:at] + extra + data[at + len(extra):]


def _only_format_errors(ciphertext: bytes, tsk: bytes, passphrase: str | None) -> None:
    try:
        signed_inner(ciphertext, tsk, passphrase, 1 << 16)
    except FormatError:
        pass


@BOUNDED
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_give_format_errors(made: dict[str, Made], data: bytes) -> None:
    m = made["cv25519"]
    _only_format_errors(data, m.tsk, None)
    _only_format_errors(b"-----BEGIN PGP MESSAGE-----\n\n" + data
                        + b"\n-----END PGP MESSAGE-----\n", m.tsk, None)
    for call in (lambda: packets(data, partial=True), lambda: dearmor(data),
                 lambda: secret_fields(data, "pw"), lambda: session_key([data], m.tsk, None)):
        try:
            call()
        except FormatError:
            pass


@BOUNDED
@given(kind=st.sampled_from(["cv25519", "nist", "rsa"]),
       compress=st.sampled_from(["zlib", "zip", "bzip2"]),
       how=st.lists(_mutations(), min_size=1, max_size=3))
def test_mutated_messages_give_format_errors(made: dict[str, Made], kind: str, compress: str,
                                             how: list[tuple[str, int, int, bytes]]) -> None:
    m = made[kind]
    data = m.messages[compress]
    for one in how:
        data = _mutate(data, one)
    _only_format_errors(data, m.tsk, None)


@BOUNDED
@given(algo=st.sampled_from([1, 2, 3]), how=st.lists(_mutations(), min_size=1, max_size=3))
def test_mutated_plaintext_gives_format_errors(made: dict[str, Made], algo: int,
                                               how: list[tuple[str, int, int, bytes]]) -> None:
    """Past the MDC: damaged compressed data and packets inside a well-sealed message."""
    m = made["cv25519"]
    data = _compressed(algo, _signed_packets(m))
    for one in how:
        data = _mutate(data, one)
    _only_format_errors(_seal(m, data), m.tsk, None)


@BOUNDED
@given(kind=st.sampled_from(["cv25519", "nist", "rsa"]),
       how=st.lists(_mutations(), min_size=1, max_size=2))
def test_mutated_secret_keys_give_format_errors(made: dict[str, Made],
                                                monkeypatch: pytest.MonkeyPatch, kind: str,
                                                how: list[tuple[str, int, int, bytes]]) -> None:
    """A damaged key ring file (unprotected, or protected with a cheap S2K) is a FormatError
    too, never an IndexError or a `cryptography` exception."""
    m = made[kind]
    monkeypatch.setattr(keyprotect, "COUNT_OCTET", 0)
    for tsk, passphrase in ((m.tsk, None), (keyprotect.protect(m.tsk, "pw"), "pw")):
        for one in how:
            tsk = _mutate(tsk, one)
        _only_format_errors(m.messages["zlib"], tsk, passphrase)
        for p in packets(tsk) if _parses(tsk) else []:
            try:
                secret_fields(p.body, passphrase)
            except FormatError:
                pass


def _parses(data: bytes) -> bool:
    try:
        packets(data)
    except FormatError:
        return False
    return True


def test_packets_with_one_octet_partial_chunks() -> None:
    chunks = b"".join(b"\xe0" + bytes([n & 0xFF]) for n in range(100_000))  # 1-octet chunks
    data = bytes([0xC0 | 11]) + chunks + b"\x00"
    [p] = packets(data, partial=True)
    assert p.body == bytes(n & 0xFF for n in range(100_000))


def test_every_truncation_of_a_protected_key_is_a_format_error(
        made: dict[str, Made], monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut anywhere (in the S2K specifier: before, inside or after its salt and count), a
    secret key packet gives a FormatError, not an IndexError."""
    monkeypatch.setattr(keyprotect, "COUNT_OCTET", 0)
    for kind in ("cv25519", "rsa"):
        protected = keyprotect.protect(made[kind].tsk, "pw")
        bodies = [p.body for p in packets(protected) if p.tag in (5, 7)]
        for body in bodies:
            assert secret_fields(body, "pw")
            for cut in range(len(body)):
                with pytest.raises(FormatError):
                    secret_fields(body[:cut], "pw")


@pytest.fixture(scope="module")
def ring(made: dict[str, Made], tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    """A key ring with the cv25519 and RSA keys GnuPG made (secret, unprotected) and a key
    netpost made (unprotected too, for signing here)."""
    keyring = Keyring(tmp_path_factory.mktemp("ring"))
    for kind in ("cv25519", "rsa"):
        keyring.add(made[kind].tsk)
    keyring.generate("Signer <signer@example.test>", None)
    return keyring


def _encrypted(armored: bytes) -> bytes:
    return (b"From: a@example.test\r\nTo: b@example.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
            b'boundary="b"\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\n'
            b"Version: 1\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n"
            + armored + b"\r\n--b--\r\n")


def _armor(data: bytes) -> bytes:
    return (b"-----BEGIN PGP MESSAGE-----\r\n\r\n"
            + base64.encodebytes(data).replace(b"\n", b"\r\n") + b"-----END PGP MESSAGE-----")


def _open(raw: bytes, keyring: Keyring) -> None:
    try:
        mime_pgp.open_message(raw, parse(raw), keyring)
    except AgentError:
        pass


def test_open_message_with_compressed_signatures(made: dict[str, Made], ring: Keyring) -> None:
    for kind in ("cv25519", "rsa"):
        for compress in ("zlib", "zip"):  # the pysequoia wheel cannot inflate BZip2
            raw = _encrypted(_armor(made[kind].messages[compress]))
            opened = mime_pgp.open_message(raw, parse(raw), ring)
            assert opened.content.get_content().strip() == "Signed, compressed, encrypted."
            assert any(n.startswith("PGP: good signature from Inner") for n in opened.notes)


@BOUNDED
@given(kind=st.sampled_from(["cv25519", "rsa"]),
       compress=st.sampled_from(["zlib", "zip", "bzip2"]),
       how=st.lists(_mutations(), min_size=1, max_size=3), armor=st.booleans())
def test_open_message_on_mutated_encrypted_mail(made: dict[str, Made], ring: Keyring,
                                                kind: str, compress: str, armor: bool,
                                                how: list[tuple[str, int, int, bytes]]) -> None:
    """A damaged encrypted message is one AgentError line, or opens with a note; no
    traceback, and never a good signature over content other than what decrypted."""
    data = made[kind].messages[compress]
    for one in how:
        data = _mutate(data, one)
    _open(_encrypted(_armor(data) if armor else data), ring)


@pytest.fixture(scope="module")
def signed_mail(ring: Keyring) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "signer@example.test", "b@example.test", "s"
    msg.set_content("Signed by netpost.\n")
    raw = mime_pgp.sign_message(msg, ring.signer("signer@example.test")).as_bytes(
        policy=email.policy.SMTP)
    opened = mime_pgp.open_message(raw, parse(raw), ring)
    assert [n.partition(" (")[0] for n in opened.notes] == [
        "PGP: good signature from Signer <signer@example.test>"]
    return raw


@BOUNDED
@given(how=st.lists(_mutations(), min_size=1, max_size=3))
def test_open_message_on_mutated_signed_mail(ring: Keyring, signed_mail: bytes,
                                             how: list[tuple[str, int, int, bytes]]) -> None:
    raw = signed_mail
    for one in how:
        raw = _mutate(raw, one)
    _open(raw, ring)


def test_every_truncation_of_encrypted_mail_is_one_line(made: dict[str, Made],
                                                        ring: Keyring) -> None:
    """sequoia 2.4 panics on some truncated messages (pyo3's PanicException, not an
    Exception): that too is one AgentError line, not a traceback."""
    message = made["cv25519"].messages["zlib"]
    errors = set()
    for cut in range(1, len(message)):
        raw = _encrypted(message[:cut])
        with pytest.raises(AgentError) as caught:
            mime_pgp.open_message(raw, parse(raw), ring)
        errors.add(str(caught.value).partition(" (")[0])
    assert any("malformed input" in e for e in errors), errors
