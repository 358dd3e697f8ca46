"""The OpenPGP pieces netpost handles itself (rfc4880.py, keyprotect.py, inner.py), checked
against pysequoia and `cryptography` without a server; gpg and sq interop is in
test_pgp.py."""

from __future__ import annotations

import base64
import os
import stat
import zlib
from pathlib import Path

import pysequoia
import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from netpost.agent import AgentError
from netpost.agent.inner import _inflate, dearmor
from netpost.agent.keyprotect import protect, secret_fields
from netpost.agent.pgp import Keyring
from netpost.agent.rfc4880 import (
    TAG_SECRET_KEY,
    TAG_SECRET_SUBKEY,
    FormatError,
    cfb_decrypt,
    cfb_encrypt,
    header,
    packets,
    s2k_count,
    s2k_key,
)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 32, 1000])
def test_cfb_matches_the_reference_mode(size: int) -> None:
    key, iv, data = os.urandom(32), os.urandom(16), os.urandom(size)
    ref = Cipher(algorithms.AES(key), CFB(iv)).encryptor()
    expected = ref.update(data) + ref.finalize()
    assert cfb_encrypt(key, iv, data) == expected
    assert cfb_decrypt(key, iv, expected) == data


def test_s2k() -> None:
    assert s2k_count(0xFF) == 65011712 and s2k_count(0x60) == 65536
    assert s2k_count(0x00) == 1024 and s2k_count(0x9F) == 31 << 15
    # a count below salt+passphrase hashes them once whole; two contexts for a 32-octet
    # key from SHA-1, the second preloaded with one zero octet (RFC 4880 3.7.1.1)
    import hashlib

    assert s2k_key(b"pw", b"12345678", 0, 20, "sha1") == hashlib.sha1(b"12345678pw").digest()
    two = s2k_key(b"pw", b"", 0, 32, "sha1")
    assert two == (hashlib.sha1(b"pw").digest() + hashlib.sha1(b"\0pw").digest())[:32]
    assert s2k_key(b"pw", b"salt", 1000, 32) == hashlib.sha256(
        (b"saltpw" * 200)[:1000]).digest()


@pytest.mark.parametrize("length", [0, 191, 192, 8383, 8384, 100000])
def test_packet_lengths(length: int) -> None:
    body = os.urandom(length)
    [p] = packets(header(11, length) + body)
    assert (p.tag, p.body) == (11, body)


def test_partial_and_indeterminate_lengths() -> None:
    body = os.urandom(512 + 300)
    partial = bytes([0xC0 | 11, 224 + 9]) + body[:512] + header(11, 300)[1:] + body[512:]
    with pytest.raises(FormatError):
        packets(partial)
    assert packets(partial, partial=True)[0].body == body
    old = bytes([0x80 | (8 << 2) | 3]) + b"rest of it"
    assert packets(old, partial=True)[0].body == b"rest of it"


def test_protect_keeps_the_key_and_needs_the_passphrase() -> None:
    tsk = pysequoia.Tsk.generate("P <p@example.test>", profile=pysequoia.Profile.RFC4880)
    sealed = protect(bytes(tsk), "correct horse")
    kept = pysequoia.Tsk.from_bytes(sealed)
    assert kept.extract_certificate().fingerprint == tsk.extract_certificate().fingerprint
    before = [p for p in packets(bytes(tsk))]
    after = [p for p in packets(sealed)]
    assert [p.tag for p in before] == [p.tag for p in after]
    for b, a in zip(before, after, strict=True):
        if b.tag in (TAG_SECRET_KEY, TAG_SECRET_SUBKEY):
            assert a.body != b.body
            assert secret_fields(a.body, "correct horse") == secret_fields(b.body, None)
            with pytest.raises(FormatError, match="wrong passphrase"):
                secret_fields(a.body, "wrong horse")
        else:
            assert a.raw == b.raw  # self-signatures, user IDs: byte for byte
    with pytest.raises(RuntimeError):
        kept.signer()
    with pytest.raises(RuntimeError):
        kept.signer("wrong horse")
    signature = pysequoia.sign(kept.signer("correct horse"), b"data",
                               mode=pysequoia.SignatureMode.DETACHED)
    assert pysequoia.verify(bytes=b"data", store=lambda _: [tsk.extract_certificate()],
                            signature=pysequoia.Sig.from_bytes(signature)).valid_sigs
    with pytest.raises(AgentError, match="already protected"):
        protect(sealed, "again")
    with pytest.raises(AgentError, match="empty passphrase"):
        protect(bytes(tsk), "")


def test_dearmor_and_inflate_limits() -> None:
    data = os.urandom(100)
    text = base64.b64encode(data).decode()
    for armored in (f"-----BEGIN PGP MESSAGE-----\n\n{text}\n=abcd\n-----END PGP MESSAGE-----\n",
                    f"junk\r\n-----BEGIN PGP MESSAGE-----\r\nComment: x\r\n\r\n{text[:64]}\r\n"
                    f"{text[64:]}\r\n-----END PGP MESSAGE-----\r\n"):
        assert dearmor(armored.encode()) == data
    assert dearmor(b"\xc1\x00") == b"\xc1\x00"
    with pytest.raises(FormatError):
        dearmor(b"no armor here")
    bomb = zlib.compress(b"\0" * 1_000_000)
    assert _inflate(b"\x02" + bomb, 1_000_000) == b"\0" * 1_000_000
    with pytest.raises(FormatError, match="beyond"):
        _inflate(b"\x02" + bomb, 10_000)
    with pytest.raises(FormatError, match="damaged"):
        _inflate(b"\x02" + b"not zlib", 10_000)


def test_secret_key_files_are_written_atomically_0600(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale temporary file, or a symlink planted where the old code put it, is neither
    reused (its mode kept) nor followed; the file appears whole, 0600, nothing left over."""
    ring = Keyring(tmp_path / "ring")
    secret_dir = ring.secret_dir
    secret_dir.mkdir(parents=True, mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    old = os.umask(0)  # even with a permissive umask
    try:
        made = ring.generate("W <w@example.test>", "pw")
    finally:
        os.umask(old)
    fpr = made.extract_certificate().fingerprint
    path = secret_dir / f"{fpr}.pgp"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((ring.cert_dir / f"{fpr}.pgp").stat().st_mode) == 0o644
    assert [p.name for p in secret_dir.iterdir()] == [f"{fpr}.pgp"]
    # a symlink where the old code put its temporary file: not followed
    (secret_dir / f"{fpr}.tmp").symlink_to(target)
    stale = secret_dir / "OTHER.tmp"
    stale.write_bytes(b"")
    stale.chmod(0o644)
    ring._write(path, path.read_bytes(), 0o600)
    ring._write(secret_dir / "OTHER.pgp", b"secret", 0o600)
    assert target.read_bytes() == b""
    assert stat.S_IMODE((secret_dir / "OTHER.pgp").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (secret_dir / f"{fpr}.tmp").unlink()
    (secret_dir / "OTHER.pgp").unlink()
    stale.unlink()
    # protected on disk: the secret key packets carry S2K usage 254
    for p in packets(path.read_bytes()):
        if p.tag in (TAG_SECRET_KEY, TAG_SECRET_SUBKEY):
            with pytest.raises(FormatError, match="no passphrase"):
                secret_fields(p.body, None)
    # a failed write leaves the old file and no temporary one
    before = path.read_bytes()

    class Boom(Exception):
        pass

    def failing_fsync(fd: int) -> None:
        raise Boom

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(Boom):
        ring._write(path, b"half", 0o600)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in secret_dir.iterdir() if p.name.startswith(".")]


def test_a_good_note_needs_a_valid_signature_and_the_same_content(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """_check_compressed says "good" only when pysequoia.verify found a valid signature and
    its content is exactly what pysequoia's decryption gave."""
    from types import SimpleNamespace

    from netpost.agent import inner, mime_pgp

    ring = Keyring(tmp_path / "ring")
    tsk = pysequoia.Tsk.generate("G <g@example.test>", profile=pysequoia.Profile.RFC4880)
    cert = tsk.extract_certificate()
    monkeypatch.setattr(inner, "signed_inner", lambda *_: b"inner")
    monkeypatch.setattr(ring, "certs", lambda: [cert])

    def verifying(valid: list[object], content: bytes | None) -> None:
        def fake(**kwargs: object) -> SimpleNamespace:
            ring.lookup([cert.fingerprint])
            return SimpleNamespace(valid_sigs=valid, bytes=content)

        monkeypatch.setattr(mime_pgp.pysequoia, "verify", fake)

    good = SimpleNamespace(certificate=cert.fingerprint)
    for valid, content, expected in (([], b"shown", "NOT verified"),
                                     ([good], b"other", "NOT verified"),
                                     ([good], None, "NOT verified"),
                                     ([good], b"shown", "good signature from G")):
        verifying(valid, content)
        note = mime_pgp._check_compressed(b"", tsk, ring, b"shown", "ABCD")
        assert expected in note, (valid, content, note)
