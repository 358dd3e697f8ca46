"""ShareFiles.find on its own: whatever path a client sends, nothing outside the shared
folder is opened or listed (a property test over hostile path segments)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpost.files.trees import FileTrees
from netpost.store.sqlite import SQLiteStore
from netpost.store.sqlshares import SQLiteShares
from netpost.web.shares import Gone, ShareFiles

ALICE = "alice@example.com"
TOKEN = "T" * 32
FILE_TOKEN = "F" * 32
EXPIRED = "E" * 32


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ShareFiles, Path]]:
    root = tmp_path_factory.mktemp("conf")
    store = SQLiteStore(str(root / "netpost.db"))
    store.add_domain("example.com")
    store.add_account(ALICE, "x")
    tree = root / "files" / ALICE
    (tree / "pub" / "sub").mkdir(parents=True)
    (tree / "pub" / "a.txt").write_text("a")
    (tree / "pub" / "sub" / "b.txt").write_text("b")
    (tree / "secret.txt").write_text("secret")
    (tree / "other").mkdir()
    (tree / "other" / "c.txt").write_text("c")
    os.symlink("../secret.txt", tree / "pub" / "up")
    os.symlink("../other", tree / "pub" / "updir")
    os.symlink("/etc", tree / "pub" / "etc")
    os.symlink("sub", tree / "pub" / "sublink")
    os.mkfifo(tree / "pub" / "fifo")
    shares = SQLiteShares(store)
    shares.add_share(TOKEN, ALICE, "/pub")
    shares.add_share(FILE_TOKEN, ALICE, "/pub/a.txt")
    shares.add_share(EXPIRED, ALICE, "/pub", expires=1.0)
    yield ShareFiles(shares, FileTrees(root / "files")), (tree / "pub").resolve()
    store.close()


SEGMENTS = st.sampled_from(["..", ".", "", "pub", "sub", "a.txt", "b.txt", "up", "updir",
                            "etc", "passwd", "sublink", "secret.txt", "other", "c.txt", "fifo",
                            "\x00", "a.txt\x00", "..\x00", "%2e%2e", "\\..", ".netpost-upload.x"])


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SEGMENTS, max_size=6), st.booleans())
def test_nothing_outside_the_share(files: tuple[ShareFiles, Path], segments: list[str],
                                   file_share: bool) -> None:
    finder, shared = files
    found = finder.find(FILE_TOKEN if file_share else TOKEN, "/".join(segments))
    if found is None:
        return
    assert ".." not in segments and "." not in segments
    if found.file is not None:
        fd, _, _ = found.file
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)
        if file_share:
            assert real == shared / "a.txt"
        else:
            assert shared in real.parents
        assert real.read_text() in ("a", "b")
    else:
        assert found.entries is not None
        names = {e.name for e in found.entries}
        assert not names & {"up", "updir", "etc"}


def test_what_is_reachable(files: tuple[ShareFiles, Path]) -> None:
    finder, _ = files
    root = finder.find(TOKEN, "")
    assert root is not None and root.entries is not None
    assert {e.name for e in root.entries} == {"a.txt", "sub", "sublink", "fifo"}
    for path in ("sublink/b.txt", "sub/b.txt", "a.txt", "/a.txt", "sub//b.txt"):
        found = finder.find(TOKEN, path)
        assert found is not None and found.file is not None, path
        os.close(found.file[0])
    for path in ("up", "updir/c.txt", "etc/passwd", "fifo", "../secret.txt", "sub/../a.txt",
                 "a.txt\x00", "missing"):
        assert finder.find(TOKEN, path) is None, path
    assert finder.find("T" * 31 + "!", "") is None  # not a token at all
    assert finder.find("x", "") is None
    with pytest.raises(Gone):
        finder.find(EXPIRED, "a.txt")
