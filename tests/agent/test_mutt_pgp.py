"""mutt, with its GnuPG set-up (gpgme), reads a message netpost signed and encrypted: the
recipient's key is GnuPG's, the message is synced to a Maildir by `netpost mail sync` and
opened in mutt inside tmux."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.conftest import GPG_HOMES, MailUser, write_account
from tests.agent.test_pgp import gpg, gpg_keygen
from tests.agent.test_tmux import Terminal
from tests.conftest import Server, require_tool

pytestmark = pytest.mark.interop


def test_mutt_reads_a_netpost_encrypted_message(users: dict[str, MailUser],
                                                mail_server: Server, tmp_path: Path) -> None:
    require_tool("mutt")
    alice = users["alice"]
    if "sec " not in alice.run("key", "list").stdout:
        alice.run("key", "generate")
    mail_server.add_user("frank@example.test")
    home = tmp_path / "frank"
    home.mkdir()
    fpr = gpg_keygen(home, "Frank <frank@example.test>")
    (tmp_path / "alice.asc").write_text(alice.run("key", "export").stdout)
    gpg(home, "--import", str(tmp_path / "alice.asc"))
    alice.run("key", "import", stdin=gpg(home, "--armor", "--export", fpr).stdout)
    alice.run("send", "--sign", "--encrypt", "--to", "frank@example.test", "-s",
              "for mutt", "--body", "Frank, this is for your eyes only.", "--no-save")

    frank = MailUser("frank@example.test",
                     write_account(mail_server, home / "mail.toml", "frank@example.test"), home)
    frank.run("sync", str(home / "Mail"))
    (home / ".muttrc").write_text(
        "set crypt_use_gpgme = yes\nset crypt_verify_sig = yes\n"
        "set mbox_type = Maildir\nset folder = ~/Mail\nset spoolfile = ~/Mail\n"
        "set sort = date\nset pager_stop = yes\nset wait_key = no\n"
        "set crypt_autosign = no\nset pgp_check_gpg_decrypt_status_fd = yes\n")
    GPG_HOMES.add(home)  # mutt's gpgme starts an agent there too
    t = Terminal(tmp_path, frank)
    try:
        t.type(f"GNUPGHOME={home / '.gnupg'} {require_tool('mutt')} -n -F ~/.muttrc "
               f"-f {home / 'Mail'}")
        t.keys("Enter")
        t.wait_for("for mutt")
        t.keys("Enter")
        screen = t.wait_for("Frank, this is for your eyes only.")
        assert "encrypted" in screen.lower()
        assert "Good signature from" in screen and "alice@example.test" in screen
        t.keys("q")
        t.keys("q")
    finally:
        t.close()
