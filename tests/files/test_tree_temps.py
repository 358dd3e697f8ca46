"""Upload temporary files left by a killed process are recognised and removed (crash safety)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from netpost.files.tree import TEMP_PREFIX, FileTree


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_killed_uploads_temporary_file_is_removed_at_the_next_walk(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "sub").mkdir()
    # A process that starts an upload and is killed with it half written.
    code = ("import os, signal, sys; from netpost.files.tree import FileTree; "
            "u = FileTree(sys.argv[1]).begin_upload('/sub/big.bin'); u.write(b'x' * 100000); "
            "u._file.flush(); os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code, str(root)], check=False, timeout=60)
    left = [p for p in (root / "sub").iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(left) == 1 and left[0].stat().st_size == 100000
    age(left[0], 1.0)
    tree = FileTree(root)
    # A running upload of this process (its file locked) and one just made are kept.
    running = tree.begin_upload("/sub/running.bin")
    running.write(b"y" * 10)
    (fresh := root / f"{TEMP_PREFIX}1.fresh").write_bytes(b"z")
    ours = [p for p in (root / "sub").iterdir()
            if p.name.startswith(TEMP_PREFIX) and p != left[0]]
    assert len(ours) == 1
    age(ours[0], 10.0)
    assert tree.listdir("/sub") == []  # never listed
    assert FileTree(root).usage() == 0  # a new walk: the killed upload's file goes
    assert not left[0].exists()
    assert ours[0].exists() and fresh.exists()
    running.commit()
    assert [e.name for e in tree.listdir("/sub")] == ["running.bin"]
    # An old unlocked one goes with rmdir too.
    (root / "empty").mkdir()
    (stale := root / "empty" / f"{TEMP_PREFIX}2.old").write_bytes(b"old")
    age(stale, 5.0)
    tree.rmdir("/empty")
    assert not (root / "empty").exists()
