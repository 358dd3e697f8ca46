"""PGP/MIME (RFC 3156) end to end: netpost signs and encrypts, GnuPG and Sequoia's sq verify
and decrypt; they sign and encrypt, netpost verifies and decrypts; bad input is one line."""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.agent.conftest import GPG_HOMES, MailUser, pgp_passphrase, user_env, write_account
from tests.agent.test_commands import imap_append, uid_of, uids_of
from tests.conftest import Server, require_tool

pytestmark = pytest.mark.interop


def run(cmd: list[str], home: Path, stdin: bytes = b"", check: bool = True
        ) -> subprocess.CompletedProcess[bytes]:
    GPG_HOMES.add(home)
    r = subprocess.run(cmd, input=stdin, capture_output=True, env=user_env(home), timeout=60)
    if check:
        assert r.returncode == 0, (cmd, r.stderr.decode(errors="replace"))
    return r


def gpg(home: Path, *args: str, stdin: bytes = b"", check: bool = True
        ) -> subprocess.CompletedProcess[bytes]:
    (home / ".gnupg").mkdir(mode=0o700, exist_ok=True)
    return run([require_tool("gpg"), "--batch", "--yes", "--pinentry-mode", "loopback",
                "--passphrase", "", *args], home, stdin, check)


def gpg_keygen(home: Path, user_id: str, *extra: str, passphrase: str = "") -> str:
    (home / ".gnupg").mkdir(mode=0o700, exist_ok=True)
    run([require_tool("gpg"), "--batch", "--pinentry-mode", "loopback", "--passphrase",
         passphrase, *extra, "--quick-gen-key", user_id, "ed25519", "sign,cert", "never"], home)
    out = run([require_tool("gpg"), "--list-keys", "--with-colons", user_id], home).stdout
    fpr = re.search(rb"^fpr:+([0-9A-F]{40}):", out, re.M)
    assert fpr is not None
    run([require_tool("gpg"), "--batch", "--pinentry-mode", "loopback", "--passphrase",
         passphrase, *extra, "--quick-add-key", fpr.group(1).decode(), "cv25519", "encr",
         "never"], home)
    return fpr.group(1).decode()


@pytest.fixture(scope="module")
def keyed(users: dict[str, MailUser], tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, MailUser]:
    """alice and bob with netpost keys, each holding the other's public key."""
    alice, bob = users["alice"], users["bob"]
    for u in (alice, bob):
        assert "generated" in u.run("key", "generate").stdout
    bob.run("key", "import", stdin=alice.run("key", "export").stdout)
    alice.run("key", "import", stdin=bob.run("key", "export").stdout)
    return users


def raw_message(user: MailUser, uid: int, folder: str = "INBOX") -> bytes:
    r = subprocess.run([sys.executable, "-m", "netpost", "mail", "--account", str(user.account),
                        "read", "--raw", "--peek", "--folder", folder, str(uid)],
                       capture_output=True, env=user_env(user.home), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def signed_parts(raw: bytes) -> tuple[bytes, bytes]:
    """(the signed octets, the signature) of a multipart/signed message, found the way
    RFC 3156 5 says, independently of netpost's code."""
    msg = parse(raw)
    boundary = msg.get_boundary()
    assert boundary is not None
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    delim = b"--" + boundary.encode()
    first = data.index(delim + b"\r\n") + len(delim) + 2
    end = data.index(b"\r\n" + delim, first)
    parts = list(msg.iter_parts())
    sig = parts[1].get_payload(decode=True)
    assert isinstance(sig, bytes)
    return data[first:end], sig


def test_signed_message_verifies_in_netpost_gpg_and_sq(keyed: dict[str, MailUser],
                                                       tmp_path: Path) -> None:
    alice, bob = keyed["alice"], keyed["bob"]
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    alice.run("send", "--sign", "--to", bob.address, "-s", "signed hello",
              "--attach", str(tmp_path / "data.csv"),
              stdin="Signed text.\nFrom the start of a line, with trailing space \n")
    uid = uid_of(bob, "signed hello")
    shown = bob.run("read", str(uid)).stdout
    assert "PGP: good signature from Alice <alice@example.test>" in shown
    assert "Signed text." in shown and "[1] data.csv (text/csv" in shown
    raw = raw_message(bob, uid)
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/signed"
    assert msg.get_param("protocol") == "application/pgp-signature"
    assert str(msg.get_param("micalg")).startswith("pgp-sha")
    data, sig = signed_parts(raw)
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "data.sig").write_bytes(sig)
    (tmp_path / "alice.asc").write_text(alice.run("key", "export").stdout)
    home = tmp_path / "gpghome"
    home.mkdir()
    gpg(home, "--import", str(tmp_path / "alice.asc"))
    r = gpg(home, "--status-fd", "1", "--verify", str(tmp_path / "data.sig"),
            str(tmp_path / "data"))
    assert b"[GNUPG:] GOODSIG" in r.stdout and b"alice@example.test" in r.stdout
    r = run([require_tool("sq"), "verify", "--signer-cert", str(tmp_path / "alice.asc"),
             "--detached", str(tmp_path / "data.sig"), str(tmp_path / "data")], home)
    assert b"1 good signature" in r.stderr
    # the Sent copy verifies too
    sent = alice.run("read", "--folder", "Sent", str(uid_of(alice, "signed hello", "Sent")))
    assert "PGP: good signature" in sent.stdout


def test_encrypted_message_decrypts_in_netpost_gpg_and_sq(
        keyed: dict[str, MailUser], mail_server: Server, tmp_path: Path) -> None:
    """alice (netpost) writes to carol, whose key GnuPG made: carol reads it with netpost,
    with gpg and with sq. (Keys netpost makes announce RFC 9580's SEIPDv2, which GnuPG 2.2
    and sq 0.27 cannot read: docs/agent.md.)"""
    alice = keyed["alice"]
    home = tmp_path / "carol"
    home.mkdir()
    fpr = gpg_keygen(home, "Carol <carol@example.test>")
    secret = gpg(home, "--armor", "--export-secret-keys", fpr).stdout
    (tmp_path / "carol-secret.asc").write_bytes(secret)
    carol = MailUser("carol@example.test",
                     write_account(mail_server, home / "mail.toml", "carol@example.test"), home)
    carol.run("key", "import", stdin=secret)
    carol.run("key", "import", stdin=alice.run("key", "export").stdout)
    alice.run("key", "import", stdin=gpg(home, "--armor", "--export", fpr).stdout)
    (tmp_path / "alice.asc").write_text(alice.run("key", "export").stdout)
    gpg(home, "--import", str(tmp_path / "alice.asc"))

    alice.run("send", "--sign", "--encrypt", "--to", carol.address, "-s", "secret plans",
              "--body", "The treasure is under the old oak.")
    uid = uid_of(carol, "secret plans")
    shown = carol.run("read", str(uid)).stdout
    assert "PGP: decrypted with Carol <carol@example.test>" in shown
    assert "PGP: good signature from Alice <alice@example.test>" in shown
    assert "The treasure is under the old oak." in shown
    raw = raw_message(carol, uid)
    assert b"treasure" not in raw
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/encrypted"
    assert msg.get_param("protocol") == "application/pgp-encrypted"
    control, data = list(msg.iter_parts())
    assert control.get_content_type() == "application/pgp-encrypted"
    assert b"Version: 1" in control.get_payload(decode=True)
    armored = data.get_payload(decode=True)
    assert armored.startswith(b"-----BEGIN PGP MESSAGE-----")
    (tmp_path / "msg.asc").write_bytes(armored)
    r = gpg(home, "--status-fd", "2", "--decrypt", str(tmp_path / "msg.asc"))
    assert b"[GNUPG:] DECRYPTION_OKAY" in r.stderr and b"[GNUPG:] GOODSIG" in r.stderr
    inner = parse(r.stdout)
    assert inner.get_content_type() == "text/plain"
    assert "The treasure is under the old oak." in inner.get_content()
    r = run([require_tool("sq"), "decrypt", "--recipient-key", str(tmp_path / "carol-secret.asc"),
             "--signer-cert", str(tmp_path / "alice.asc"), str(tmp_path / "msg.asc")], home)
    assert b"The treasure is under the old oak." in r.stdout
    assert b"1 good signature" in r.stderr
    # encrypted to the sender too: the Sent copy can be read
    sent = alice.run("read", "--folder", "Sent", str(uid_of(alice, "secret plans", "Sent")))
    assert "The treasure is under the old oak." in sent.stdout


def _signed_mime(text: str, sign: callable) -> EmailMessage:  # type: ignore[valid-type]
    """A multipart/signed message made here (email package), signed by `sign(octets)`."""
    inner = EmailMessage()
    inner.set_content(text, cte="quoted-printable")
    del inner["MIME-Version"]
    data = inner.as_bytes(policy=email.policy.SMTP)
    outer = EmailMessage()
    outer["From"] = "carol@example.test"
    outer["To"] = "bob@example.test"
    outer["Subject"] = "made by another program"
    signature = sign(data)
    boundary = "sig-boundary-42"
    body = (b"--" + boundary.encode() + b"\r\n" + data + b"\r\n--" + boundary.encode()
            + b"\r\nContent-Type: application/pgp-signature\r\n\r\n" + signature
            + b"\r\n--" + boundary.encode() + b"--\r\n")
    head = (b"From: carol@example.test\r\nTo: bob@example.test\r\n"
            b"Subject: SUBJECT\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; "
            b"micalg=pgp-sha256; protocol=\"application/pgp-signature\"; boundary=\""
            + boundary.encode() + b"\"\r\n\r\n")
    return parse(head + body)


def _encrypted_mime(subject: str, armored: bytes) -> bytes:
    return (b"From: carol@example.test\r\nTo: bob@example.test\r\nSubject: "
            + subject.encode() + b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/"
            b"encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"enc\"\r\n\r\n"
            b"--enc\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
            b"--enc\r\nContent-Type: application/octet-stream\r\n\r\n" + armored
            + b"\r\n--enc--\r\n")


def test_gpg_and_sq_messages_verify_and_decrypt_in_netpost(
        keyed: dict[str, MailUser], mail_server: Server, tmp_path: Path) -> None:
    bob = keyed["bob"]
    home = tmp_path / "carol"
    home.mkdir()
    carol_fpr = gpg_keygen(home, "Carol <carol@example.test>")
    carol_pub = gpg(home, "--armor", "--export", carol_fpr).stdout
    bob_pub = tmp_path / "bob.asc"
    bob_pub.write_text(bob.run("key", "export").stdout)
    gpg(home, "--import", str(bob_pub))
    bob.run("key", "import", stdin=carol_pub)

    def gpg_sign(data: bytes) -> bytes:
        (tmp_path / "part").write_bytes(data)
        gpg(home, "--digest-algo", "SHA256", "--armor", "--detach-sign", "--output",
            str(tmp_path / "part.sig"), str(tmp_path / "part"))
        return (tmp_path / "part.sig").read_bytes()

    signed = _signed_mime("Signed by GnuPG.\n", gpg_sign).as_bytes().replace(
        b"SUBJECT", b"from gpg signed")
    def gpg_encrypt(text: bytes, *extra: str) -> bytes:
        return gpg(home, "--armor", "--trust-model", "always", *extra, "--sign",
                   "--encrypt", "--recipient", "bob@example.test", "--local-user", carol_fpr,
                   stdin=b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text).stdout

    encrypted = gpg_encrypt(b"Encrypted by GnuPG.\r\n", "--compress-algo", "none")
    compressed = gpg_encrypt(b"Compressed by GnuPG.\r\n")  # ZLIB, GnuPG's default
    # ZIP (raw deflate) and a text-mode signature, as mutt's classic gpg commands make
    zipped = gpg_encrypt(b"Zipped by GnuPG.\r\n", "--compress-algo", "zip", "--textmode")
    # signed by a key bob does not have
    stranger = gpg_keygen(home, "Stranger <stranger@example.test>")
    unknown = gpg(home, "--armor", "--trust-model", "always", "--sign", "--encrypt",
                  "--recipient", "bob@example.test", "--local-user", stranger,
                  stdin=b"Content-Type: text/plain\r\n\r\nFrom a stranger.\r\n").stdout

    # sq: a key of its own, a message encrypted to bob and signed
    dave = tmp_path / "dave.pgp"
    run([require_tool("sq"), "key", "generate", "--userid", "<dave@example.test>",
         "--export", str(dave)], home)
    dave_pub = run([require_tool("sq"), "key", "extract-cert", str(dave)], home).stdout
    bob.run("key", "import", stdin=dave_pub)
    by_sq = run([require_tool("sq"), "encrypt", "--compression", "none", "--recipient-cert",
                 str(bob_pub), "--signer-key", str(dave)], home,
                stdin=b"Content-Type: text/plain\r\n\r\nEncrypted by sq.\r\n").stdout
    # sq's default pads with a compressed data packet
    by_sq_padded = run([require_tool("sq"), "encrypt", "--recipient-cert", str(bob_pub),
                        "--signer-key", str(dave)], home,
                       stdin=b"Content-Type: text/plain\r\n\r\nPadded by sq.\r\n").stdout

    def sq_sign(data: bytes) -> bytes:
        (tmp_path / "sqpart").write_bytes(data)
        return run([require_tool("sq"), "sign", "--detached", "--signer-key", str(dave),
                    str(tmp_path / "sqpart")], home).stdout

    sq_signed = _signed_mime("Signed by sq.\n", sq_sign).as_bytes().replace(
        b"SUBJECT", b"from sq signed")
    imap_append(mail_server, bob.address, "Interop", [
        signed, _encrypted_mime("from gpg encrypted", encrypted), sq_signed,
        _encrypted_mime("from sq encrypted", by_sq),
        _encrypted_mime("from gpg compressed", compressed),
        _encrypted_mime("from gpg zipped", zipped),
        _encrypted_mime("from sq padded", by_sq_padded),
        _encrypted_mime("from a stranger", unknown)])
    for subject, text, signer in (
            ("from gpg signed", "Signed by GnuPG.", "Carol <carol@example.test>"),
            ("from gpg encrypted", "Encrypted by GnuPG.", "Carol <carol@example.test>"),
            ("from sq signed", "Signed by sq.", "<dave@example.test>"),
            ("from sq encrypted", "Encrypted by sq.", "<dave@example.test>"),
            # GnuPG's default, signed then compressed then encrypted: pysequoia decrypts it
            # and netpost takes the signed message out for pysequoia to check (inner.py)
            ("from gpg compressed", "Compressed by GnuPG.", "Carol <carol@example.test>"),
            ("from gpg zipped", "Zipped by GnuPG.", "Carol <carol@example.test>"),
            ("from sq padded", "Padded by sq.", "<dave@example.test>")):
        shown = bob.run("read", "-f", "Interop", str(uid_of(bob, subject, "Interop"))).stdout
        assert text in shown, subject
        assert f"PGP: good signature from {signer}" in shown, (subject, shown)
        if "encrypted" in subject:
            assert "PGP: decrypted with Bob" in shown
    shown = bob.run("read", "-f", "Interop", str(uid_of(bob, "from a stranger",
                                                        "Interop"))).stdout
    assert "From a stranger." in shown and "PGP: decrypted with Bob" in shown
    assert re.search(r"PGP: signed by key [0-9A-F, ]+, which is not in the key ring: NOT "
                     r"verified", shown), shown
    assert "good signature" not in shown


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netpost: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_tampered_signature_and_ciphertext_and_missing_keys(
        keyed: dict[str, MailUser], mail_server: Server, tmp_path: Path) -> None:
    alice, bob, carol = keyed["alice"], keyed["bob"], keyed["carol"]
    alice.run("send", "--sign", "--to", bob.address, "-s", "to tamper", "--body",
              "Pay Bob 10 coins.", "--no-save")
    raw = raw_message(bob, uid_of(bob, "to tamper"))
    alice.run("send", "--encrypt", "--to", bob.address, "-s", "to damage", "--body",
              "hidden", "--no-save")
    enc = raw_message(bob, uid_of(bob, "to damage"))
    # one base64 character in the middle of the ciphertext changed (the armor's CRC
    # is dropped so that the OpenPGP integrity check is what catches it)
    lines = enc.split(b"\r\n")
    body = [i for i, line in enumerate(lines) if len(line) == 64 and b":" not in line]
    middle = body[-1]  # in the encrypted data, not in a PKESK of another recipient
    line = bytearray(lines[middle])
    line[30] = ord("A") if line[30] != ord("A") else ord("B")
    lines[middle] = bytes(line)
    lines = [x for x in lines if not (x.startswith(b"=") and len(x) == 5)]
    damaged = b"\r\n".join(lines)
    assert damaged != enc
    # a message signed by alice, read by carol who does not have alice's key
    imap_append(mail_server, bob.address, "Tampered", [
        raw.replace(b"Pay Bob 10 coins.", b"Pay Bob 99 coins."), damaged])
    carol_copy = raw
    imap_append(mail_server, carol.address, "Unknown", [carol_copy])

    one_line_error(bob.run("read", "-f", "Tampered", "1", check=False),
                   "BAD signature", "Alice <alice@example.test>")
    one_line_error(bob.run("read", "-f", "Tampered", "2", check=False), "cannot decrypt")
    one_line_error(carol.run("read", "-f", "Unknown", "1", check=False),
                   "cannot check the signature: no key")
    # carol has no key ring at all: encrypting to bob fails before anything is sent
    before = len(uids_of(bob, "never sent"))
    one_line_error(carol.run("send", "--encrypt", "--to", bob.address, "-s", "never sent",
                             "--body", "x", check=False), "no secret key for carol" if False
                   else "no OpenPGP key for bob@example.test")
    one_line_error(carol.run("send", "--sign", "--to", bob.address, "-s", "never sent",
                             "--body", "x", check=False), "no secret key for carol")
    one_line_error(alice.run("send", "--encrypt", "--to", "nobody@example.test", "-s",
                             "never sent", "--body", "x", check=False),
                   "no OpenPGP key for nobody@example.test")
    assert len(uids_of(bob, "never sent")) == before
    assert uids_of(alice, "never sent", "Sent") == []


def test_expired_and_revoked_keys_are_refused(keyed: dict[str, MailUser],
                                              tmp_path: Path) -> None:
    alice, bob = keyed["alice"], keyed["bob"]
    home = tmp_path / "gpg"
    home.mkdir()
    # a key made 30 days ago that expired after a day
    (home / ".gnupg").mkdir(mode=0o700)
    run([require_tool("gpg"), "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
         "--faked-system-time", "20200101T000000", "--quick-gen-key",
         "Old <old@example.test>", "ed25519", "sign,cert", "1d"], home)
    expired = gpg(home, "--armor", "--export", "old@example.test").stdout
    fpr = gpg_keygen(home, "Gone <gone@example.test>")
    rev = (home / ".gnupg" / "openpgp-revocs.d" / f"{fpr}.rev").read_bytes()
    gpg(home, "--import", stdin=rev.replace(b":-----BEGIN", b"-----BEGIN"))
    revoked = gpg(home, "--armor", "--export", fpr).stdout
    out = alice.run("key", "import", stdin=expired + revoked).stdout
    assert "(it expired on 2020-01-02)" in out and "(it is revoked)" in out
    listed = alice.run("key", "list").stdout
    assert "[expired on 2020-01-02]" in listed and "[is revoked]" in listed
    one_line_error(alice.run("send", "--encrypt", "--to", "old@example.test", "-s", "x",
                             "--body", "x", check=False),
                   "key of old@example.test cannot be used", "expired on 2020-01-02")
    one_line_error(alice.run("send", "--encrypt", "--to", "gone@example.test", "-s", "x",
                             "--body", "x", check=False), "is revoked")
    bad = alice.run("key", "import", stdin=b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nzzz\n",
                    check=False)
    one_line_error(bad, "not an OpenPGP key")
    assert "old@example.test" not in bob.run("key", "list").stdout  # only alice imported


def test_passphrase_protected_key(keyed: dict[str, MailUser], mail_server: Server,
                                  tmp_path: Path) -> None:
    bob = keyed["bob"]
    home = tmp_path / "erin"
    home.mkdir()
    mail_server.add_user("erin@example.test")
    fpr = gpg_keygen(home, "Erin Protected <erin@example.test>", passphrase="sesame")
    secret = run([require_tool("gpg"), "--batch", "--pinentry-mode", "loopback",
                  "--passphrase", "sesame", "--armor", "--export-secret-keys", fpr],
                 home).stdout
    account = write_account(mail_server, home / "mail.toml", "erin@example.test")
    carol = MailUser("erin@example.test", account, home)
    assert "imported secret key" in carol.run("key", "import", stdin=secret).stdout
    carol.run("key", "import", stdin=bob.run("key", "export").stdout)
    wrong = carol.run("send", "--sign", "--to", bob.address, "-s", "protected", "--body", "x",
                      env={"NETPOST_PGP_PASSPHRASE_COMMAND": "echo open"}, check=False)
    one_line_error(wrong, "wrong passphrase for the secret key", "Erin Protected")
    assert uids_of(bob, "protected") == []
    carol.run("send", "--sign", "--to", bob.address, "-s", "protected", "--body", "x",
              env={"NETPOST_PGP_PASSPHRASE_COMMAND": "echo sesame"})
    bob.run("key", "import", stdin=carol.run("key", "export", fpr).stdout)
    shown = bob.run("read", str(uid_of(bob, "protected"))).stdout
    assert "PGP: good signature from Erin Protected" in shown
    # encrypted to the protected key: reading needs the passphrase
    bob.run("send", "--encrypt", "--to", "erin@example.test", "-s", "for protected",
            "--body", "locked", "--no-save")
    uid = str(uid_of(carol, "for protected"))
    one_line_error(carol.run("read", uid, env={"NETPOST_PGP_PASSPHRASE_COMMAND": "echo no"},
                             check=False), "wrong passphrase")
    shown = carol.run("read", uid, env={"NETPOST_PGP_PASSPHRASE_COMMAND": "echo sesame"})
    assert "locked" in shown.stdout
    os.environ.pop("NETPOST_PGP_PASSPHRASE_COMMAND", None)


def test_autocrypt_teaches_the_key_and_encryption_follows(
        keyed: dict[str, MailUser], mail_server: Server, tmp_path: Path) -> None:
    """Autocrypt Level 1: grace (autocrypt = true) sends mail with her key in the header;
    henry (autocrypt = true) reads it, has her key, and can answer encrypted."""
    people = {}
    for name in ("grace", "henry"):
        mail_server.add_user(f"{name}@example.test")
        home = tmp_path / name
        home.mkdir()
        account = write_account(mail_server, home / "mail.toml", f"{name}@example.test",
                                extra="autocrypt = true")
        people[name] = MailUser(f"{name}@example.test", account, home)
        people[name].run("key", "generate")
    grace, henry = people["grace"], people["henry"]
    grace.run("send", "--to", henry.address, "-s", "hello autocrypt", "--body", "hi",
              "--no-save")
    uid = uid_of(henry, "hello autocrypt")
    raw = raw_message(henry, uid)
    assert b"=?utf-8?" not in raw and parse(raw)["Autocrypt"].startswith(
        "addr=grace@example.test; prefer-encrypt=mutual; keydata=")
    shown = henry.run("read", str(uid)).stdout
    assert "Autocrypt: imported key Grace <grace@example.test>" in shown
    henry.run("send", "--encrypt", "--to", grace.address, "-s", "autocrypt answer",
              "--body", "now encrypted", "--no-save")
    got = grace.run("read", str(uid_of(grace, "autocrypt answer"))).stdout
    assert "now encrypted" in got and "PGP: decrypted with Grace" in got
    # her key already known: a second message changes nothing
    grace.run("send", "--to", henry.address, "-s", "again", "--body", "x", "--no-save")
    assert "Autocrypt:" not in henry.run("read", str(uid_of(henry, "again"))).stdout


def _bare_account(mail_server: Server, home: Path, address: str) -> MailUser:
    """An account file without pgp_passphrase_command."""
    account = write_account(mail_server, home / "mail.toml", address)
    account.write_text(re.sub(r"(?m)^pgp_passphrase_command = .*\n", "", account.read_text()))
    return MailUser(address, account, home)


def test_generate_asks_for_a_passphrase_or_no_passphrase(mail_server: Server,
                                                         tmp_path: Path) -> None:
    """Without a terminal or a passphrase command no key is made; --no-passphrase makes the
    unprotected kind, said so."""
    mail_server.add_user("jay@example.test")
    jay = _bare_account(mail_server, tmp_path, "jay@example.test")
    one_line_error(jay.run("key", "generate", check=False),
                   "no terminal to ask for the new key's passphrase", "--no-passphrase")
    assert jay.run("key", "list").stdout == ""
    one_line_error(jay.run("key", "generate", check=False,
                           env={"NETPOST_PGP_PASSPHRASE_COMMAND": "printf ''"}),
                   "empty passphrase")
    made = jay.run("key", "generate", "--no-passphrase").stdout
    assert "generated Jay <jay@example.test>" in made and "NOT passphrase-protected" in made
    home = tmp_path / "gpg"
    home.mkdir()
    packets = gpg(home, "--list-packets", stdin=jay.run("key", "export", "--secret").stdout
                  .encode()).stdout.decode()
    assert packets.count("secret sub key packet") == 2 and "S2K" not in packets
    # it signs without asking
    jay.run("send", "--sign", "--to", "jay@example.test", "-s", "unprotected", "--body", "x",
            "--no-save")


def test_generated_key_is_protected_and_gpg_and_sq_use_it(
        mail_server: Server, tmp_path: Path) -> None:
    """The key netpost makes is passphrase-protected the RFC 4880 way: netpost asks for the
    passphrase (a wrong one is one line), GnuPG imports it and signs and decrypts with it,
    and sq unlocks it with the same passphrase."""
    mail_server.add_user("ivy@example.test")
    home = tmp_path / "ivy"
    home.mkdir()
    ivy = MailUser("ivy@example.test",
                   write_account(mail_server, home / "mail.toml", "ivy@example.test"), home)
    passphrase = pgp_passphrase(ivy.address)
    made = ivy.run("key", "generate").stdout
    assert "generated Ivy <ivy@example.test>" in made and "protected by its passphrase" in made
    secret = ivy.run("key", "export", "--secret").stdout.encode()
    (tmp_path / "ivy-secret.asc").write_bytes(secret)
    packets = gpg(home, "--list-packets", stdin=secret).stdout.decode()
    # every secret key packet: S2K usage 254 (SHA-1 check), AES-256, iterated+salted SHA-256
    assert packets.count("iter+salt S2K, algo: 9, SHA1 protection, hash: 8") == 3, packets
    assert packets.count("[v4 protected]") == 3
    assert "features: 09" in packets  # still SEIPDv2 (docs/agent.md, limits of pysequoia)

    # netpost: the passphrase is asked for, a wrong one is one line and nothing is sent
    wrong = ivy.run("send", "--sign", "--to", ivy.address, "-s", "wrong pass", "--body", "x",
                    "--no-save", check=False,
                    env={"NETPOST_PGP_PASSPHRASE_COMMAND": "echo not it"})
    one_line_error(wrong, "wrong passphrase for the secret key", "Ivy <ivy@example.test>")
    assert uids_of(ivy, "wrong pass") == []
    ivy.run("send", "--sign", "--encrypt", "--to", ivy.address, "-s", "to myself",
            "--body", "kept under a passphrase", "--no-save")
    uid = str(uid_of(ivy, "to myself"))
    shown = ivy.run("read", uid).stdout
    assert "PGP: decrypted with Ivy" in shown and "PGP: good signature from Ivy" in shown
    one_line_error(ivy.run("read", uid, check=False,
                           env={"NETPOST_PGP_PASSPHRASE_COMMAND": "echo not it"}),
                   "wrong passphrase")

    # GnuPG 2.2 imports the protected key with its passphrase, signs and decrypts with it
    gnupg = [require_tool("gpg"), "--batch", "--yes", "--pinentry-mode", "loopback",
             "--passphrase", passphrase, "--trust-model", "always"]
    out = run([*gnupg, "--import", str(tmp_path / "ivy-secret.asc")], home).stderr
    assert b"secret key imported" in out
    (tmp_path / "note.txt").write_text("signed by gpg with a netpost key\n")
    run([*gnupg, "--local-user", ivy.address, "--armor", "--detach-sign", "--output",
         str(tmp_path / "note.sig"), str(tmp_path / "note.txt")], home)
    r = run([require_tool("gpg"), "--status-fd", "1", "--verify", str(tmp_path / "note.sig"),
             str(tmp_path / "note.txt")], home)
    assert b"[GNUPG:] GOODSIG" in r.stdout
    # ... what gpg encrypts to the key (gpg 2.2 writes SEIPDv1) gpg and netpost decrypt
    to_ivy = run([*gnupg, "--armor", "--sign", "--local-user", ivy.address, "--encrypt",
                  "--recipient", ivy.address], home,
                 stdin=b"Content-Type: text/plain\r\n\r\nSealed by GnuPG for Ivy.\r\n").stdout
    (tmp_path / "to-ivy.asc").write_bytes(to_ivy)
    r = run([*gnupg, "--status-fd", "2", "--decrypt", str(tmp_path / "to-ivy.asc")], home)
    assert b"DECRYPTION_OKAY" in r.stderr and b"Sealed by GnuPG for Ivy." in r.stdout
    imap_append(mail_server, ivy.address, "FromGpg", [_encrypted_mime("gpg to ivy", to_ivy)])
    shown = ivy.run("read", "-f", "FromGpg", "1").stdout
    assert "Sealed by GnuPG for Ivy." in shown and "PGP: decrypted with Ivy" in shown
    # ... but what netpost encrypts to a netpost-made key is SEIPDv2 (the key announces
    # it and pysequoia cannot make the key otherwise): GnuPG 2.2 cannot read that
    (tmp_path / "to-self.asc").write_bytes(
        parse(raw_message(ivy, int(uid))).get_payload()[1].get_payload(decode=True))
    r = run([*gnupg, "--decrypt", str(tmp_path / "to-self.asc")], home, check=False)
    assert r.returncode != 0 and b"kept under a passphrase" not in r.stdout

    # sq 0.27 unlocks it with the passphrase (asked on its terminal), and not without
    script = require_tool("script")
    sq = require_tool("sq")
    for typed, status in ((passphrase, 0), ("not it", 1)):
        out_file = tmp_path / f"clear-{status}.pgp"
        r = subprocess.run(
            [script, "-qec", f"{sq} key password --clear -o {out_file} "
                             f"{tmp_path / 'ivy-secret.asc'}", "/dev/null"],
            input=(typed + "\n").encode(), capture_output=True, timeout=60,
            env=user_env(home))
        assert r.returncode == status, r
    cleared = gpg(home, "--list-packets", str(tmp_path / "clear-0.pgp")).stdout.decode()
    assert cleared.count("secret sub key packet") == 2 and "S2K" not in cleared


def test_compressed_signed_mail_to_rsa_and_nist_keys(keyed: dict[str, MailUser],
                                                    mail_server: Server,
                                                    tmp_path: Path) -> None:
    """GnuPG's default sign+encrypt (compressed) to keys GnuPG made and protected (RSA and
    NIST P-256 encryption subkeys, AES-128 / SHA-1 S2K): netpost decrypts it and checks the
    signature with the passphrase it asked for once; a wrong one is one line."""
    alice = keyed["alice"]
    mail_server.add_user("lee@example.test")
    home = tmp_path / "lee"
    home.mkdir()
    lee = MailUser("lee@example.test",
                   write_account(mail_server, home / "mail.toml", "lee@example.test"), home)
    gnupg = [require_tool("gpg"), "--batch", "--yes", "--pinentry-mode", "loopback",
             "--trust-model", "always"]
    (home / ".gnupg").mkdir(mode=0o700)
    made = {}
    for kind, primary, sub in (("rsa", "rsa2048", "rsa2048"),
                               ("nist", "nistp256", "nistp256")):
        uid = f"Lee {kind} <lee@example.test>"
        run([*gnupg, "--passphrase", f"{kind} words", "--quick-gen-key", uid, primary,
             "sign,cert", "never"], home)
        out = run([require_tool("gpg"), "--list-keys", "--with-colons", uid], home).stdout
        fpr = re.search(rb"^fpr:+([0-9A-F]{40}):", out, re.M)
        assert fpr is not None
        made[kind] = fpr.group(1).decode()
        run([*gnupg, "--passphrase", f"{kind} words", "--quick-add-key", made[kind], sub,
             "encr", "never"], home)
    alice_pub = tmp_path / "alice.asc"
    alice_pub.write_text(alice.run("key", "export").stdout)
    run([*gnupg, "--import", str(alice_pub)], home)
    # alice's netpost key signs what gpg encrypts: gpg holds only its public part, so lee's
    # own key signs, and netpost checks it with lee's public key
    for kind, fpr in made.items():
        secret = run([*gnupg, "--passphrase", f"{kind} words", "--armor",
                      "--export-secret-keys", fpr], home).stdout
        assert b"PRIVATE KEY" in secret
        lee.run("key", "import", stdin=secret)
    messages = []
    for kind, fpr in made.items():
        armored = run([*gnupg, "--passphrase", f"{kind} words", "--armor", "--sign",
                       "--local-user", fpr, "--encrypt", "--recipient", fpr], home,
                      stdin=f"Content-Type: text/plain\r\n\r\nCompressed to {kind}.\r\n"
                      .encode()).stdout
        packets = run([require_tool("gpg"), "--list-packets", "--batch", "--pinentry-mode",
                       "loopback", "--passphrase", f"{kind} words"], home, armored).stdout
        assert b":compressed packet:" in packets
        messages.append(_encrypted_mime(f"compressed to {kind}", armored))
    imap_append(mail_server, lee.address, "Compressed", messages)
    for n, (kind, fpr) in enumerate(made.items(), 1):
        env = {"NETPOST_PGP_PASSPHRASE_COMMAND": f"echo {kind} words"}
        shown = lee.run("read", "-f", "Compressed", str(n), env=env).stdout
        assert f"Compressed to {kind}." in shown
        assert f"PGP: decrypted with Lee {kind} <lee@example.test>" in shown
        assert f"PGP: good signature from Lee {kind} <lee@example.test> ({fpr})" in shown
    one_line_error(lee.run("read", "-f", "Compressed", "1", check=False,
                           env={"NETPOST_PGP_PASSPHRASE_COMMAND": "echo wrong words"}),
                   "wrong passphrase")
