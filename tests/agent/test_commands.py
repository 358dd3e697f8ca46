"""Every `netpost mail` command end to end against netpost's submission, IMAP and POP3."""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import re
from email.message import EmailMessage
from pathlib import Path

from tests.agent.conftest import MailUser, write_account
from tests.conftest import PASSWORD, Server, client_tls


def uids_of(user: MailUser, subject: str, folder: str = "INBOX") -> list[int]:
    out = user.run("search", "--folder", folder, "--subject", subject).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line[:7].strip().isdigit()]


def uid_of(user: MailUser, subject: str, folder: str = "INBOX") -> int:
    found = uids_of(user, subject, folder)
    assert len(found) == 1, (subject, found)
    return found[0]


def raw_of(user: MailUser, uid: int, folder: str = "INBOX") -> EmailMessage:
    out = user.run("read", "--raw", "--peek", "--folder", folder, str(uid))
    msg = email.message_from_bytes(out.stdout.encode("utf-8", "surrogateescape"),
                                   policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def imap_append(server: Server, address: str, folder: str, messages: list[bytes],
                flags: str = "()") -> None:
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=client_tls()) as c:
        c.login(address, PASSWORD)
        c.create(folder)
        for m in messages:
            assert c.append(folder, flags, None, m)[0] == "OK"


def test_send_with_attachments_cc_bcc_reply_to_then_list_and_read(
        users: dict[str, MailUser], tmp_path: Path) -> None:
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "notes.txt").write_text("line one\nline two\n")
    (tmp_path / "paper.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    alice.run("send", "--to", "Bob <bob@example.test>", "--cc", "carol@example.test",
              "--bcc", "alice@example.test", "--subject", "Tea at five? ünïcode",
              "--reply-to", "alice+tea@example.test",
              "--attach", str(tmp_path / "photo.png"), "--attach", str(tmp_path / "notes.txt"),
              "--attach", str(tmp_path / "paper.pdf"), stdin="Dear Bob,\n\nTea?\n-- \nAlice\n")
    listed = bob.run("list").stdout
    assert "Tea at five? ünïcode" in listed and "Alice" in listed
    uid = uid_of(bob, "Tea at five")
    assert re.search(rf"^\s*{uid} N ", listed, re.M)  # new: not seen yet
    shown = bob.run("read", str(uid)).stdout
    assert "Subject: Tea at five? ünïcode" in shown
    assert "Reply-To: alice+tea@example.test" in shown
    assert "Cc: carol@example.test" in shown and "Bcc" not in shown
    assert "Dear Bob,\n\nTea?\n" in shown
    assert "[1] photo.png (image/png, 264 octets)" in shown
    assert "[2] notes.txt (text/plain" in shown
    assert "[3] paper.pdf (application/pdf, 15 octets)" in shown
    # read marked it \Seen
    assert re.search(rf"^\s*{uid}   ", bob.run("list").stdout, re.M)
    # Cc and Bcc recipients have it; nobody's copy shows the Bcc, the Sent copy does
    assert uid_of(carol, "Tea at five")
    assert "Bcc" not in raw_of(carol, uid_of(carol, "Tea at five"))
    assert uid_of(alice, "Tea at five")
    sent = raw_of(alice, uid_of(alice, "Tea at five", "Sent"), "Sent")
    assert sent["Bcc"] == "alice@example.test"


def test_save_attachment(users: dict[str, MailUser], tmp_path: Path) -> None:
    alice, bob = users["alice"], users["bob"]
    data = bytes(range(256)) * 40
    (tmp_path / "blob.bin").write_bytes(data)
    alice.run("send", "--to", bob.address, "-s", "a blob", "--body", "see attached",
              "--attach", str(tmp_path / "blob.bin"), "--no-save")
    uid = uid_of(bob, "a blob")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = bob.run("save-attachment", str(uid), "1", "--output", str(out_dir))
    assert "saved" in r.stdout and (out_dir / "blob.bin").read_bytes() == data
    again = bob.run("save-attachment", str(uid), "blob.bin", "-o", str(out_dir), check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    missing = bob.run("save-attachment", str(uid), "7", check=False)
    assert missing.returncode == 1 and "no attachment '7'" in missing.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["blob.bin"]  # nothing half
    # --force replaces it whole, through a fresh temporary file: a symlink planted where a
    # fixed temporary name would be is neither followed nor reused
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (out_dir / ".blob.bin.part").symlink_to(victim)
    (out_dir / "blob.bin").write_bytes(b"old")
    r = bob.run("save-attachment", str(uid), "1", "-o", str(out_dir), "--force")
    assert (out_dir / "blob.bin").read_bytes() == data
    assert victim.read_bytes() == b"keep me"
    assert sorted(p.name for p in out_dir.iterdir()) == [".blob.bin.part", "blob.bin"]
    assert (out_dir / "blob.bin").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    nowhere = bob.run("save-attachment", str(uid), "1", "-o", str(tmp_path / "no" / "x.bin"),
                      check=False)
    assert nowhere.returncode == 1 and "is not a directory" in nowhere.stderr


def test_reply_reply_all_and_forward_thread(users: dict[str, MailUser]) -> None:
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    alice.run("send", "--to", bob.address, "--cc", carol.address, "-s", "Plans",
              "--body", "Shall we meet on Friday?\nAt noon.", "--no-save")
    uid = uid_of(bob, "Plans")
    original = raw_of(bob, uid)
    bob.run("reply", str(uid), "--body", "Friday works.", "--no-save")
    got = raw_of(alice, uid_of(alice, "Re: Plans"))
    assert got["In-Reply-To"] == original["Message-ID"]
    assert got["References"] == original["Message-ID"]
    assert got["To"] == "Alice <alice@example.test>" and got["Cc"] is None
    text = got.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "Friday works." in text and "> Shall we meet on Friday?\n> At noon." in text
    assert "wrote:" in text
    assert re.search(rf"^\s*{uid} ..R ", bob.run("list").stdout, re.M)  # \Answered

    bob.run("reply-all", str(uid), "--body", "See you all.", "--no-save")
    everyone = raw_of(carol, uid_of(carol, "Re: Plans"))
    assert everyone["To"] == "Alice <alice@example.test>"
    assert everyone["Cc"] == "carol@example.test"  # bob himself is left out

    # a reply to the reply keeps the whole chain in References
    reply_uid = uid_of(alice, "Re: Plans") if len(uids_of(alice, "Re: Plans")) == 1 else \
        max(uids_of(alice, "Re: Plans"))
    first_reply = raw_of(alice, reply_uid)
    alice.run("reply", str(reply_uid), "--body", "Great.", "--no-save")
    third = raw_of(bob, max(uids_of(bob, "Re: Plans")))
    assert third["Subject"] == "Re: Plans"  # no "Re: Re:"
    assert str(third["References"]).split() == [original["Message-ID"],
                                                first_reply["Message-ID"]]

    bob.run("forward", str(uid), "--to", carol.address, "--body", "FYI", "--no-save")
    fwd = raw_of(carol, uid_of(carol, "Fwd: Plans"))
    parts = list(fwd.iter_attachments())
    assert [p.get_content_type() for p in parts] == ["message/rfc822"]
    inner = parts[0].get_content()
    assert inner["Subject"] == "Plans" and inner["Message-ID"] == original["Message-ID"]
    shown = carol.run("read", str(uid_of(carol, "Fwd: Plans"))).stdout
    assert "FYI" in shown


def test_folders_move_delete_flag_search(users: dict[str, MailUser]) -> None:
    alice, bob = users["alice"], users["bob"]
    bob.run("folders", "create", "Projects")
    assert "Projects" in bob.run("folders").stdout
    bob.run("folders", "rename", "Projects", "Work")
    listed = bob.run("folders").stdout.splitlines()
    assert "Work" in listed and "Projects" not in listed
    assert "Sent  (\\Sent)" in listed
    for n in range(3):
        alice.run("send", "--to", bob.address, "-s", f"to file {n}", "--body", f"n={n}",
                  "--no-save")
    uids = [uid_of(bob, f"to file {n}") for n in range(3)]
    bob.run("move", f"{uids[0]},{uids[1]}", "Work")
    assert len(uids_of(bob, "to file", "Work")) == 2
    assert uids_of(bob, "to file") == [uids[2]]

    work = sorted(uids_of(bob, "to file", "Work"))
    bob.run("flag", "--folder", "Work", str(work[0]), "--add", "flagged", "--add", "seen")
    flagged = bob.run("search", "--folder", "Work", "--flagged").stdout
    assert "to file 0" in flagged and "to file 1" not in flagged
    unseen = bob.run("search", "--folder", "Work", "--unseen").stdout
    assert "to file 1" in unseen and "to file 0" not in unseen
    bob.run("flag", "--folder", "Work", str(work[0]), "--remove", "flagged")
    assert "-- 0 found --" in bob.run("search", "--folder", "Work", "--flagged").stdout
    by_body = bob.run("search", "--folder", "Work", "--body", "n=1").stdout
    assert "to file 1" in by_body and "to file 0" not in by_body
    assert "to file 1" in bob.run("search", "--folder", "Work", "--from", "alice").stdout
    assert "2 found" in bob.run("search", "--folder", "Work", "--since", "2000-01-01").stdout

    bob.run("delete", "--folder", "Work", str(work[0]))
    assert uids_of(bob, "to file", "Work") == [work[1]]
    bob.run("delete", "--trash", str(uids[2]))
    assert len(uids_of(bob, "to file 2", "Trash")) == 1
    bob.run("folders", "delete", "Work")
    assert "Work" not in bob.run("folders").stdout.splitlines()
    bad = bob.run("list", "--folder", "Nowhere", check=False)
    assert bad.returncode == 1 and "no folder 'Nowhere'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_list_pages_fetch_only_their_range(users: dict[str, MailUser], mail_server: Server) -> None:
    carol = users["carol"]
    messages = [f"From: n{n}@example.org\r\nSubject: page test {n:03d}\r\n"
                f"Date: Mon, 07 Dec 2026 0{n % 10}:00:00 +0000\r\n\r\nbody {n}\r\n".encode()
                for n in range(45)]
    imap_append(mail_server, carol.address, "Paged", messages)
    first = carol.run("list", "--folder", "Paged").stdout.splitlines()
    assert [line.split()[-2] for line in first[:20]] == [f"{n:03d}" for n in range(44, 24, -1)]
    assert first[-1] == "-- Paged: page 1 of 3, 45 messages --"
    third = carol.run("list", "--folder", "Paged", "--page", "3").stdout.splitlines()
    assert [line.split()[-2] for line in third[:-1]] == ["004", "003", "002", "001", "000"]
    assert carol.run("list", "-f", "Paged", "-p", "4").stdout.splitlines() == [
        "-- Paged: page 4 of 3, 45 messages --"]
    # the trace shows one FETCH of exactly the page's sequence range
    trace = (mail_server.data / "trace.log").read_text(errors="replace")
    assert re.search(r"FETCH 26:45 \(UID FLAGS", trace)
    assert not re.search(r"FETCH 1:\* ", trace)


def test_pop3_list_read_delete(users: dict[str, MailUser]) -> None:
    alice, carol = users["alice"], users["carol"]
    alice.run("send", "--to", carol.address, "-s", "over pop3", "--body", "pop me",
              "--no-save")
    listed = carol.run("list", "--pop3").stdout
    line = next(x for x in listed.splitlines() if "over pop3" in x)
    uidl = line.split()[0]
    assert "(POP3)" in listed
    shown = carol.run("read", "--pop3", uidl).stdout
    assert "Subject: over pop3" in shown and "pop me" in shown
    carol.run("delete", "--pop3", uidl)
    assert "over pop3" not in carol.run("list", "--pop3", "-n", "100").stdout
    gone = carol.run("read", "--pop3", uidl, check=False)
    assert gone.returncode == 1 and f"no message with UIDL {uidl}" in gone.stderr


def test_sync_to_maildir_incrementally(users: dict[str, MailUser], mail_server: Server,
                                       tmp_path: Path) -> None:
    bob = users["bob"]
    messages = [f"From: s{n}@example.org\r\nSubject: sync {n}\r\n\r\nbody {n}\r\n".encode()
                for n in range(30)]
    imap_append(mail_server, bob.address, "Synced", messages)
    box = tmp_path / "Maildir"
    out = bob.run("sync", "--folder", "Synced", str(box)).stdout
    assert "30 new, 0 with new flags, 0 removed (full download)" in out
    files = sorted((box / "cur").iterdir())
    assert len(files) == 30 and not list((box / "tmp").iterdir())
    bodies = {f.read_bytes().split(b"\n\n", 1)[1] for f in files}
    assert bodies == {f"body {n}\n".encode() for n in range(30)}
    assert all(f.name.endswith(":2,") for f in files)

    again = bob.run("sync", "--folder", "Synced", str(box)).stdout
    assert "0 new, 0 with new flags, 0 removed in" in again
    uids = sorted(uids_of(bob, "sync", "Synced"))
    bob.run("flag", "-f", "Synced", str(uids[0]), "--add", "seen", "--add", "flagged")
    bob.run("delete", "-f", "Synced", str(uids[1]))
    imap_append(mail_server, bob.address, "Synced", [b"Subject: sync late\r\n\r\nlate\r\n"])
    third = bob.run("sync", "--folder", "Synced", str(box)).stdout
    assert "1 new, 1 with new flags, 1 removed in" in third
    names = [f.name for f in (box / "cur").iterdir()]
    assert len(names) == 30
    assert sum(n.endswith(":2,FS") for n in names) == 1
    # a folder made again has a new UIDVALIDITY: everything is fetched again
    bob.run("folders", "delete", "Synced")
    imap_append(mail_server, bob.address, "Synced", [b"Subject: reborn\r\n\r\nnew\r\n"])
    fourth = bob.run("sync", "--folder", "Synced", str(box)).stdout
    assert "1 new" in fourth and "(full download)" in fourth
    assert len(list((box / "cur").iterdir())) == 1


def test_pinning_and_account_errors(users: dict[str, MailUser], mail_server: Server,
                                    tmp_path: Path) -> None:
    bob = users["bob"]
    pin = bob.run("pin").stdout.strip()
    assert pin.startswith('tls_fingerprint = "sha256:')
    wrong = write_account(mail_server, tmp_path / "wrong.toml", bob.address, pin="00" * 32)
    for args in (["list"], ["list", "--pop3"], ["send", "--to", bob.address, "--body", "x"]):
        r = MailUser(bob.address, wrong, bob.home).run(*args, check=False)
        assert r.returncode == 1, args
        assert "not the pinned sha256:00:00" in r.stderr and "refusing" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # no pin: the self-signed certificate fails verification
    (tmp_path / "nopin.toml").write_text(
        wrong.read_text().replace('tls_fingerprint = "' + "00" * 32 + '"', ""))
    r = MailUser(bob.address, tmp_path / "nopin.toml", bob.home).run("list", check=False)
    assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr
    missing = MailUser(bob.address, tmp_path / "none.toml", bob.home).run("list", check=False)
    assert missing.returncode == 1 and "no account file" in missing.stderr
    (tmp_path / "bad.toml").write_text('address = "x@y"\n[imap]\ntls = "none"\n')
    plain = MailUser(bob.address, tmp_path / "bad.toml", bob.home).run("list", check=False)
    assert plain.returncode == 1 and "allow_plaintext" in plain.stderr
    badpw = tmp_path / "badpw.toml"
    badpw.write_text(bob.account.read_text().replace("password_command = \"cat ",
                                                     "password_command = \"echo wrong #"))
    r = MailUser(bob.address, badpw, bob.home).run("list", check=False)
    assert r.returncode == 1 and "imap 127.0.0.1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_malformed_messages_are_shown_or_refused_in_one_line(
        users: dict[str, MailUser], mail_server: Server) -> None:
    carol = users["carol"]
    broken = [
        b"Subject: no end boundary\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: text/plain\r\n\r\nhalf a message\r\n",
        b"Subject: bad charset\r\nContent-Type: text/plain; charset=x-nonsense\r\n\r\nhi\r\n",
        b"Subject: fake signed\r\nContent-Type: multipart/signed; boundary=b; "
        b"protocol=\"application/pgp-signature\"\r\n\r\n--b\r\n\r\nonly one part\r\n--b--\r\n",
        b"Subject: fake encrypted\r\nContent-Type: multipart/encrypted; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\n\r\nnot openpgp at all\r\n--b--\r\n",
        b"\xff\xfe junk: without any proper header\r\n\r\n\xff\r\n",
    ]
    imap_append(mail_server, carol.address, "Broken", broken)
    results = {}
    for uid in range(1, len(broken) + 1):
        r = carol.run("read", "--folder", "Broken", str(uid), check=False)
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode:
            assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == "", r
        results[uid] = r
    assert "half a message" in results[1].stdout
    assert results[2].returncode == 1 and "cannot decode" in results[2].stderr
    assert results[3].returncode == 1 and "malformed multipart/signed" in results[3].stderr
    assert results[4].returncode == 1 and "encrypted" in results[4].stderr


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
