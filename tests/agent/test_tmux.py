"""The interactive compose flow in a real terminal: tmux runs `netpost mail send` and
`reply`, vim ($EDITOR) gets the draft, keys are typed with send-keys and the screen read with
capture-pane."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.conftest import MailUser, user_env
from tests.agent.test_commands import raw_of, uid_of, uids_of
from tests.conftest import Server, require_tool

pytestmark = pytest.mark.interop


class Terminal:
    def __init__(self, tmp: Path, user: MailUser) -> None:
        self.tmux = require_tool("tmux")
        require_tool("vim")
        self.socket = str(tmp / "tmux.sock")
        env = user_env(user.home)
        env["EDITOR"] = "vim -u NONE -N -n"
        env.pop("VISUAL", None)
        env["TERM"] = "xterm-256color"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()
                           if k in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "EDITOR",
                                    "PATH", "PYTHONPATH", "TERM"))
        subprocess.run([self.tmux, "-S", self.socket, "new-session", "-d", "-s", "compose",
                        "-x", "150", "-y", "40", f"env -i {exports} bash --norc --noprofile"],
                       check=True, timeout=10)
        self.base = f"{shlex.quote(sys.executable)} -m netpost mail --account " \
                    f"{shlex.quote(str(user.account))}"

    def keys(self, *keys: str) -> None:
        subprocess.run([self.tmux, "-S", self.socket, "send-keys", "-t", "compose", *keys],
                       check=True, timeout=10)

    def type(self, text: str) -> None:
        subprocess.run([self.tmux, "-S", self.socket, "send-keys", "-t", "compose", "-l", text],
                       check=True, timeout=10)

    def screen(self) -> str:
        return subprocess.run([self.tmux, "-S", self.socket, "capture-pane", "-p", "-t",
                               "compose"], capture_output=True, text=True, check=True,
                              timeout=10).stdout

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} did not appear; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([self.tmux, "-S", self.socket, "kill-server"], timeout=10)


@pytest.fixture
def terminal(tmp_path: Path, users: dict[str, MailUser]) -> Iterator[Terminal]:
    t = Terminal(tmp_path, users["alice"])
    yield t
    t.close()


def vim_ex(t: Terminal, command: str) -> None:
    t.keys("Escape")
    t.type(":" + command)
    t.keys("Enter")


def test_compose_and_send_in_vim(terminal: Terminal, users: dict[str, MailUser]) -> None:
    t = terminal
    t.type(t.base + " send")
    t.keys("Enter")
    screen = t.wait_for("Subject:")
    assert "To:" in screen and "Cc:" in screen and "Bcc:" in screen
    vim_ex(t, "1s/$/bob@example.test/")
    vim_ex(t, "4s/$/typed in vim/")
    t.keys("G", "o")
    t.type("Hello from vim.")
    vim_ex(t, "wq")
    t.wait_for("Send to bob@example.test? [y/N]")
    t.type("y")
    t.keys("Enter")
    t.wait_for("sent to bob@example.test")
    bob = users["bob"]
    msg = raw_of(bob, uid_of(bob, "typed in vim"))
    assert msg["From"] == "Alice <alice@example.test>"
    assert "Hello from vim." in msg.get_content()

    # answering "n" sends nothing
    t.type(t.base + " send --to bob@example.test --subject 'not this one'")
    t.keys("Enter")
    t.wait_for("Subject: not this one")
    t.keys("G", "o")
    t.type("draft")
    vim_ex(t, "wq")
    t.wait_for("[y/N]")
    t.type("n")
    t.keys("Enter")
    t.wait_for("not sent")
    assert uids_of(bob, "not this one") == []


def test_reply_in_vim_quotes_the_original(tmp_path: Path, users: dict[str, MailUser]) -> None:
    alice, bob = users["alice"], users["bob"]
    alice.run("send", "--to", bob.address, "-s", "question for vim", "--body",
              "What is the answer?", "--no-save")
    uid = uid_of(bob, "question for vim")
    t = Terminal(tmp_path, bob)
    try:
        t.type(f"{t.base} reply {uid} --no-save")
        t.keys("Enter")
        screen = t.wait_for("> What is the answer?")
        assert "Subject: Re: question for vim" in screen
        assert "To: Alice <alice@example.test>" in screen
        t.keys("G", "o")
        t.type("Forty-two.")
        vim_ex(t, "wq")
        t.wait_for("[y/N]")
        t.type("y")
        t.keys("Enter")
        t.wait_for("sent to")
    finally:
        t.close()
    got = raw_of(alice, uid_of(alice, "Re: question for vim"))
    text = got.get_content().replace("\r\n", "\n")
    assert "Forty-two." in text and "> What is the answer?" in text
    assert got["In-Reply-To"] is not None


def test_key_generate_asks_for_the_passphrase_twice(mail_server: Server,
                                                    tmp_path: Path) -> None:
    """On a terminal `key generate` asks for the new key's passphrase twice, without echo;
    two different ones make no key."""
    from tests.agent.test_pgp import _bare_account

    mail_server.add_user("kim@example.test")
    home = tmp_path / "kim"
    home.mkdir()
    kim = _bare_account(mail_server, home, "kim@example.test")
    t = Terminal(tmp_path, kim)
    try:
        t.type(f"{t.base} key generate")
        t.keys("Enter")
        t.wait_for("Passphrase for the new key Kim <kim@example.test>:")
        t.type("first try")
        t.keys("Enter")
        t.wait_for("The same passphrase again:")
        t.type("second try")
        t.keys("Enter")
        t.wait_for("netpost: the two passphrases differ; no key was made")
        t.type("clear")
        t.keys("Enter")
        deadline = time.monotonic() + 10
        while "differ" in t.screen() and time.monotonic() < deadline:
            time.sleep(0.1)
        t.type(f"{t.base} key generate")
        t.keys("Enter")
        t.wait_for("Passphrase for the new key Kim <kim@example.test>:")
        t.type("kim's tmux phrase")
        t.keys("Enter")
        t.wait_for("The same passphrase again:")
        t.type("kim's tmux phrase")
        t.keys("Enter")
        screen = t.wait_for("protected by its passphrase")
        assert "tmux phrase" not in screen
    finally:
        t.close()
    assert kim.run("key", "list").stdout.count("sec ") == 1
    wrong = kim.run("send", "--sign", "--to", kim.address, "-s", "x", "--body", "x",
                    "--no-save", check=False,
                    env={"NETPOST_PGP_PASSPHRASE_COMMAND": "echo first try"})
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    kim.run("send", "--sign", "--to", kim.address, "-s", "signed after tmux", "--body", "x",
            "--no-save", env={"NETPOST_PGP_PASSPHRASE_COMMAND": 'echo "kim\'s tmux phrase"'})
    uid = uids_of(kim, "signed after tmux")[0]
    assert "PGP: good signature from Kim" in kim.run("read", str(uid)).stdout
