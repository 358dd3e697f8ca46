"""`netpost import` / `netpost export`: mbox and Maildir, flags and dates, resumable without
duplicates (also after SIGKILL), round trips between the formats."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from netpost.store.embedded import open_stores
from tests.conftest import netpost_cmd, run_cli

USER = "u@example.com"


def make_mbox(path: Path, count: int) -> None:
    out = []
    for i in range(count):
        status = "Status: RO\nX-Status: F\n" if i % 3 == 0 else ""
        body = "\n".join(f"line {j} of message {i}" for j in range(i % 40 + 1))
        out.append(f"From sender{i % 7}@example.com Mon Jan  1 00:{i // 60 % 60:02d}:{i % 60:02d} "
                   f"2024\n{status}From: s{i}@example.com\nSubject: m {i}\n"
                   f"Message-ID: <m{i}@example.com>\n\n{body}\nFrom the body {i}\n\n")
    path.write_text("".join(out))


def setup_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert run_cli(data, "domain", "add", "example.com").returncode == 0
    r = run_cli(data, "user", "add", USER, "--password-stdin", stdin="pw\n")
    assert r.returncode == 0, r.stderr
    return data


def mailbox(data: Path, name: str) -> list[tuple[bytes, frozenset[str], float]]:
    stores = open_stores(data)
    try:
        account = stores.accounts.get_account(USER)
        assert account is not None
        box = stores.mailboxes.get_mailbox(account.id, name)
        assert box is not None
        return [(stores.blobs.read(r.blob), r.flags, r.internaldate)
                for r in stores.messages.messages(box.id)]
    finally:
        stores.close()


def test_mbox_import_is_resumable_and_exports_round_trip(tmp_path: Path) -> None:
    data = setup_data(tmp_path)
    mbox = tmp_path / "in.mbox"
    make_mbox(mbox, 300)
    r = run_cli(data, "import", str(mbox), "--user", USER)
    assert r.returncode == 0, r.stderr
    assert "imported 300 messages" in r.stdout and "0 were there already" in r.stdout
    inbox = mailbox(data, "INBOX")
    assert len(inbox) == 300
    assert inbox[0][0].startswith(b"From: s0@example.com\r\nSubject: m 0\r\n")
    assert inbox[0][0].endswith(b"line 0 of message 0\r\nFrom the body 0\r\n")
    assert inbox[0][1] == {"\\Seen", "\\Flagged"} and inbox[1][1] == frozenset()
    assert inbox[1][2] == 1704067201.0  # the From_ line's date
    r = run_cli(data, "import", str(mbox), "--user", USER)
    assert "imported 0 messages" in r.stdout and "300 were there already" in r.stdout
    # mbox out, and into another mailbox: the same messages, flags and dates.
    out = tmp_path / "out.mbox"
    r = run_cli(data, "export", str(out), "--user", USER)
    assert r.returncode == 0 and "wrote 300 messages" in r.stdout, r.stderr
    r = run_cli(data, "import", str(out), "--user", USER, "--mailbox", "Copy")
    assert "imported 300 messages" in r.stdout, r.stdout + r.stderr
    assert mailbox(data, "Copy") == inbox
    # Maildir out (twice: the second writes nothing), and back in.
    md = tmp_path / "Maildir"
    r = run_cli(data, "export", str(md), "--user", USER, "--format", "maildir")
    assert "wrote 300 messages" in r.stdout, r.stderr
    r = run_cli(data, "export", str(md), "--user", USER, "--format", "maildir")
    assert "wrote 0 messages" in r.stdout and "300 were there already" in r.stdout
    r = run_cli(data, "import", str(md), "--user", USER, "--mailbox", "FromMaildir")
    assert "imported 300 messages" in r.stdout, r.stdout + r.stderr
    got = mailbox(data, "FromMaildir")
    assert sorted((c, f, d) for c, f, d in got) == sorted(inbox)


def test_bad_input_is_named(tmp_path: Path) -> None:
    data = setup_data(tmp_path)
    r = run_cli(data, "import", str(tmp_path / "missing"), "--user", USER)
    assert r.returncode == 1 and "is not an mbox file" in r.stderr
    r = run_cli(data, "import", str(tmp_path), "--user", USER, "--format", "maildir")
    assert r.returncode == 1 and "is not a Maildir" in r.stderr
    box = tmp_path / "x.mbox"
    box.write_text("")
    r = run_cli(data, "import", str(box), "--user", "nobody@example.com")
    assert r.returncode == 1 and "no user nobody@example.com" in r.stderr
    r = run_cli(data, "export", str(tmp_path / "o"), "--user", USER, "--mailbox", "Nope")
    assert r.returncode == 1 and "has no mailbox 'Nope'" in r.stderr


@pytest.mark.slow
def test_sigkill_during_import_then_rerun_gives_each_message_once(tmp_path: Path) -> None:
    data = setup_data(tmp_path)
    mbox = tmp_path / "big.mbox"
    make_mbox(mbox, 20_000)
    proc = subprocess.Popen(netpost_cmd(data, "import", str(mbox), "--user", USER),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # "importing big.mbox: DONE/TOTAL (P%)", every tenth
        percent = line.rpartition("(")[2].rstrip("%)\n")
        if percent.isdigit() and 0 < int(percent) < 90:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    partial = len(mailbox(data, "INBOX"))
    assert 0 < partial < 20_000, partial  # killed half-way, what was committed is whole
    r = subprocess.run(netpost_cmd(data, "import", str(mbox), "--user", USER),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{20_000 - partial} messages" in r.stdout and f"{partial} were there" in r.stdout
    inbox = mailbox(data, "INBOX")
    assert len(inbox) == 20_000 and len({c for c, _, _ in inbox}) == 20_000


def test_files_agree_with_an_independent_reader_and_writer(tmp_path: Path) -> None:
    """Python's own `mailbox` module (not ours) reads what export writes and writes what
    import reads, flags included."""
    import mailbox as stdlib_mailbox

    data = setup_data(tmp_path)
    # A Maildir written by the standard library, with flags, imported.
    md = stdlib_mailbox.Maildir(str(tmp_path / "std-maildir"), create=True)
    for i, flags in enumerate(("", "S", "RS", "F", "DT")):
        msg = stdlib_mailbox.MaildirMessage(f"Subject: std {i}\n\nbody {i}\n")
        msg.set_subdir("cur")
        msg.set_flags(flags)
        md.add(msg)
    r = run_cli(data, "import", str(tmp_path / "std-maildir"), "--user", USER,
                "--mailbox", "Std")
    assert "imported 5 messages" in r.stdout, r.stdout + r.stderr
    got = {c.split(b"\r\n")[0].decode(): f for c, f, _ in mailbox(data, "Std")}
    assert got == {"Subject: std 0": frozenset(), "Subject: std 1": {"\\Seen"},
                   "Subject: std 2": {"\\Answered", "\\Seen"},
                   "Subject: std 3": {"\\Flagged"}, "Subject: std 4": {"\\Draft", "\\Deleted"}}
    # Exported as mbox and as a Maildir: the standard library reads both back the same.
    assert run_cli(data, "export", str(tmp_path / "out.mbox"), "--user", USER,
                   "--mailbox", "Std").returncode == 0
    assert run_cli(data, "export", str(tmp_path / "out-md"), "--user", USER, "--mailbox", "Std",
                   "--format", "maildir").returncode == 0
    mbox_flags = {m["subject"]: set(m.get_flags()) for m in
                  stdlib_mailbox.mbox(str(tmp_path / "out.mbox"))}
    assert mbox_flags == {"std 0": {"O"}, "std 1": {"R", "O"}, "std 2": {"R", "O", "A"},
                          "std 3": {"O", "F"}, "std 4": {"O", "D", "T"}}
    md_flags = {m["subject"]: m.get_flags() for m in
                stdlib_mailbox.Maildir(str(tmp_path / "out-md"), create=False)}
    assert md_flags == {"std 0": "", "std 1": "S", "std 2": "RS", "std 3": "F", "std 4": "DT"}
    bodies = {m["subject"]: m.get_payload() for m in
              stdlib_mailbox.mbox(str(tmp_path / "out.mbox"))}
    assert bodies["std 3"] == "body 3\n"
