"""`sync`: a folder downloaded to a local Maildir, incrementally.

One way, server to local (what mbsync calls Pull). The state beside the Maildir
(`.netpost-sync.json`) remembers UIDVALIDITY, the UIDs already here and their file names, and
HIGHESTMODSEQ. Each run (RFC 4549 4.3, "downloading"):

1. SELECT; a different UIDVALIDITY means the UIDs changed meaning (RFC 9051 2.3.1.1): the
   files this sync made are removed and everything is fetched again.
2. New messages: UID FETCH n:* (RFC822.SIZE), then UID FETCH of whole bodies in batches
   of at most 1,000 messages and 16 MiB; each is
   written to tmp/, fsync'd and renamed into cur/ with its flags (the Maildir rule:
   a file appears whole or not at all). The state is saved after each batch, so an
   interrupted sync resumes where it stopped.
3. Flags of messages already here: with CONDSTORE only those changed since the last
   HIGHESTMODSEQ (RFC 7162 3.1.4, CHANGEDSINCE), else all.
4. Messages gone from the server are removed here (UID SEARCH ALL against the state).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netpost.agent import AgentError
from netpost.agent.imap import ImapSession, uid_set

STATE_NAME = ".netpost-sync.json"
BATCH = 1000  # messages per UID FETCH of bodies
BATCH_OCTETS = 16 << 20  # and octets (what one FETCH answer holds in memory)

# Maildir info letters (the "2," semantics), in the ASCII order Maildir wants.
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "$Forwarded": "P", "\\Answered": "R",
                "\\Seen": "S", "\\Deleted": "T"}


@dataclass
class SyncReport:
    new: int = 0
    flags_changed: int = 0
    removed: int = 0
    full: bool = False  # everything fetched again (first run or a new UIDVALIDITY)


def info(flags: tuple[str, ...] | list[str]) -> str:
    letters = sorted({FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS})
    return ":2," + "".join(letters)


class Maildir:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self.counter = 0

    def unique(self, uid: int) -> str:
        self.counter += 1
        now = time.time()
        return (f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{self.counter}"
                f".{self.host},U={uid}")

    def write(self, uid: int, data: bytes, flags: tuple[str, ...], fsync: bool) -> str:
        base = self.unique(uid)
        tmp = self.root / "tmp" / base
        name = base + info(flags)
        with open(tmp, "wb") as f:
            f.write(data.replace(b"\r\n", b"\n"))  # Maildir files use the local line end
            if fsync:
                os.fsync(f.fileno())
        os.rename(tmp, self.root / "cur" / name)
        return name

    def set_flags(self, name: str, flags: tuple[str, ...]) -> str:
        base = name.split(":2,", 1)[0]
        new = base + info(flags)
        if new != name:
            os.rename(self.root / "cur" / name, self.root / "cur" / new)
        return new

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.root / "cur" / name)
        except FileNotFoundError:
            pass

    def sync_dir(self) -> None:
        fd = os.open(self.root / "cur", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def batches(sizes: list[tuple[int, int]]) -> list[list[int]]:
    out: list[list[int]] = []
    current: list[int] = []
    octets = 0
    for uid, size in sizes:
        if current and (len(current) >= BATCH or octets + size > BATCH_OCTETS):
            out.append(current)
            current, octets = [], 0
        current.append(uid)
        octets += size
    if current:
        out.append(current)
    return out


def _load_state(path: Path) -> dict[str, object]:
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read the sync state {path}: {exc}") from None
    return state if isinstance(state, dict) else {}


def _save_state(path: Path, state: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def sync_folder(session: ImapSession, folder: str, root: Path, *, fsync: bool = True,
                progress: Callable[[int, int], None] | None = None) -> SyncReport:
    box = Maildir(root)
    state_path = root / STATE_NAME
    state = _load_state(state_path)
    selected = session.select(folder, readonly=True)
    report = SyncReport()
    names: dict[str, str] = dict(state.get("uids", {}))  # type: ignore[call-overload]
    if state.get("uidvalidity") != selected.uidvalidity:
        for name in names.values():
            box.remove(name)
        names = {}
        state = {"uidvalidity": selected.uidvalidity}
        report.full = True
    last_uid = max((int(u) for u in names), default=0)
    old_modseq = state.get("highestmodseq")

    # 3. flags of what is already here
    if names:
        items = "(UID FLAGS)"
        if isinstance(old_modseq, int) and selected.highestmodseq is not None:
            items = f"(UID FLAGS) (CHANGEDSINCE {old_modseq})"
        for f in session.fetch(f"1:{last_uid}", items):
            key = str(f.uid)
            if key in names:
                new = box.set_flags(names[key], f.flags)
                if new != names[key]:
                    names[key] = new
                    report.flags_changed += 1
        # 4. what the server no longer has
        present = {str(u) for u in session.search(["UID", f"1:{last_uid}"])}
        for key in [k for k in names if k not in present]:
            box.remove(names.pop(key))
            report.removed += 1

    # 2. new messages: their sizes first, then batches of whole bodies that stay under
    # BATCH messages and BATCH_OCTETS (one big message is a batch of its own)
    sizes = [(f.uid, f.size) for f in session.fetch(f"{last_uid + 1}:*", "(UID RFC822.SIZE)")
             if f.uid > last_uid and str(f.uid) not in names]
    sizes.sort()
    done = 0
    for batch in batches(sizes):
        for f in session.fetch(uid_set(batch), "(UID FLAGS BODY.PEEK[])"):
            if f.literal is None or f.uid <= last_uid or str(f.uid) in names:
                continue
            names[str(f.uid)] = box.write(f.uid, f.literal, f.flags, fsync)
            report.new += 1
        if fsync:
            box.sync_dir()
        state["uids"] = names
        _save_state(state_path, state)
        done += len(batch)
        if progress:
            progress(done, len(sizes))
    state["uids"] = names
    if selected.highestmodseq is not None:
        state["highestmodseq"] = selected.highestmodseq
    _save_state(state_path, state)
    return report
