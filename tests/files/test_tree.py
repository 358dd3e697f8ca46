"""FileTree: confinement, listings, atomic uploads, quota, resume, STOU, the LIST/MLSD lines."""

from __future__ import annotations

import calendar
import errno
import gc
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from netpost.files.tree import (
    TEMP_PREFIX,
    Entry,
    FileTree,
    NotAllowed,
    NotFound,
    QuotaExceeded,
    TreeError,
    format_facts,
    format_list,
)


def _tree(tmp_path: Path, quota: int | None = None) -> FileTree:
    return FileTree(tmp_path / "root", quota)


def _put(tree: FileTree, vpath: str, data: bytes) -> None:
    up = tree.begin_upload(vpath)
    up.write(data)
    up.commit()


def _read(tree: FileTree, vpath: str, offset: int = 0) -> bytes:
    with tree.open_read(vpath, offset) as f:
        return f.read()


def _temps(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX)]


# -- construction ------------------------------------------------------------------------------


def test_root_is_made_private_with_parents(tmp_path: Path) -> None:
    tree = FileTree(tmp_path / "a" / "b" / "root")
    assert (tmp_path / "a" / "b" / "root").is_dir()
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b" / "root").st_mode) == 0o700
    assert tree.root == (tmp_path / "a" / "b" / "root").resolve()
    assert tree.listdir("/") == []
    FileTree(tmp_path / "a" / "b" / "root")  # an existing root is fine


def test_negative_quota_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FileTree(tmp_path, -1)


# -- resolve -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cwd", "path", "expected"),
    [
        ("/", "a", "/a"),
        ("/a", "b/c", "/a/b/c"),
        ("/a", "/x", "/x"),
        ("/a/b", "..", "/a"),
        ("/a/b", "../../..", "/"),
        ("/a", "/../..", "/"),
        ("/a", "../../etc/passwd", "/etc/passwd"),
        ("/", "./a/./b/", "/a/b"),
        ("/", "a//b///c", "/a/b/c"),
        ("/a", "", "/a"),
        ("/a", ".", "/a"),
        ("/", "/", "/"),
        ("/", "my file.txt", "/my file.txt"),
        ("/ünï", "çødé €.txt", "/ünï/çødé €.txt"),
        ("/", "...", "/..."),
        ("/", "a\\..\\b", "/a\\..\\b"),
        ("a/b", "c", "/a/b/c"),  # a relative cwd is taken from "/"
        ("/a/../..", "b", "/b"),
    ],
)
def test_resolve(tmp_path: Path, cwd: str, path: str, expected: str) -> None:
    assert _tree(tmp_path).resolve(cwd, path) == expected


@pytest.mark.parametrize(
    "path",
    ["a\x00b", "a\rb", "a\nb", "\r\n", "x\x1b[31m", "a\x7f", "a\x85b", "a\ud800b", "a\tb"],
)
def test_resolve_refuses_control_characters(tmp_path: Path, path: str) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(NotAllowed):
        tree.resolve("/", path)
    with pytest.raises(NotAllowed):
        tree.resolve(path, "x")  # in the cwd as well
    with pytest.raises(NotAllowed) as info:
        tree.resolve("/", "/" + path)
    assert "\r" not in str(info.value) and "\n" not in str(info.value)


def test_resolve_refuses_temp_names_and_long_names(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with pytest.raises(NotAllowed):
        tree.resolve("/", TEMP_PREFIX + "123.abc")
    with pytest.raises(NotAllowed):
        tree.resolve("/", f"/a/{TEMP_PREFIX}x/..")
    assert tree.resolve("/", "x" * 255) == "/" + "x" * 255
    with pytest.raises(NotAllowed):
        tree.resolve("/", "x" * 256)
    with pytest.raises(NotAllowed):
        tree.resolve("/", "é" * 128)  # 256 bytes of UTF-8
    with pytest.raises(NotAllowed):
        tree.resolve("/", "/".join(["y" * 200] * 25))
    assert tree.resolve("/", "a" + TEMP_PREFIX) == "/a" + TEMP_PREFIX


# -- real and confinement ----------------------------------------------------------------------


def test_real_maps_into_root(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    root = tree.root
    assert tree.real("/") == root
    assert tree.real("/a/b") == root / "a" / "b"
    assert tree.real("/../../etc") == root / "etc"
    assert tree.real("../x") == root / "x"


@pytest.fixture
def escape(tmp_path: Path) -> tuple[FileTree, Path]:
    """A tree with links planted inside: `out` -> a file outside, `outdir` -> a dir outside,
    `in` -> a file inside, `indir` -> a dir inside, `dangling` -> nothing."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    tree = _tree(tmp_path)
    root = tree.root
    (root / "sub").mkdir()
    (root / "sub" / "f").write_bytes(b"inside")
    os.symlink(outside / "secret", root / "out")
    os.symlink(outside, root / "outdir")
    os.symlink(root / "sub" / "f", root / "in")
    os.symlink("sub", root / "indir")
    os.symlink(tmp_path / "nothing", root / "dangling")
    os.symlink("../../outside/secret", root / "sub" / "relout")
    return tree, outside


def test_symlink_to_a_file_outside_is_not_followed(escape: tuple[FileTree, Path]) -> None:
    tree, outside = escape
    for path in ("/out", "/sub/relout"):
        with pytest.raises(NotAllowed):
            tree.real(path)
        with pytest.raises(NotAllowed):
            tree.stat(path)
        with pytest.raises(NotAllowed):
            tree.open_read(path)
        with pytest.raises(NotAllowed):
            tree.begin_upload(path)
        with pytest.raises(NotAllowed):
            tree.begin_upload(path, append=True)
        with pytest.raises(NotAllowed):
            tree.begin_upload(path, offset=0)
        with pytest.raises(NotAllowed):
            tree.listdir(path)
        assert not tree.is_dir(path)
    assert (outside / "secret").read_bytes() == b"secret"


def test_symlinked_dir_outside_is_not_followed(escape: tuple[FileTree, Path]) -> None:
    tree, outside = escape
    with pytest.raises(NotAllowed):
        tree.listdir("/outdir")
    assert not tree.is_dir("/outdir")
    with pytest.raises(NotAllowed):
        tree.open_read("/outdir/secret")
    with pytest.raises(NotAllowed):
        tree.begin_upload("/outdir/new")
    with pytest.raises(NotAllowed):
        tree.mkdir("/outdir/newdir")
    with pytest.raises(NotAllowed):
        tree.delete("/outdir/secret")
    with pytest.raises(NotAllowed):
        tree.rename("/sub/f", "/outdir/f")
    with pytest.raises(NotAllowed):
        tree.rename("/outdir/secret", "/stolen")
    with pytest.raises(NotAllowed):
        tree.unique_name("/outdir")
    assert sorted(os.listdir(outside)) == ["secret"]


def test_dangling_symlink_outside_is_not_written(escape: tuple[FileTree, Path]) -> None:
    tree, _ = escape
    with pytest.raises(NotAllowed):
        tree.begin_upload("/dangling")
    assert not (tree.root.parent / "nothing").exists()


def test_symlinks_inside_the_tree_are_followed(escape: tuple[FileTree, Path]) -> None:
    tree, _ = escape
    assert _read(tree, "/in") == b"inside"
    assert tree.is_dir("/indir")
    assert [e.name for e in tree.listdir("/indir")] == ["f"]
    assert tree.stat("/in").size == 6


def test_listdir_hides_escaping_and_dangling_links(escape: tuple[FileTree, Path]) -> None:
    tree, _ = escape
    listing = {e.name: e for e in tree.listdir("/")}
    assert sorted(listing) == ["in", "indir", "sub"]
    assert listing["indir"].is_dir and not listing["in"].is_dir  # shown as their targets
    assert listing["in"].size == 6
    assert [e.name for e in tree.listdir("/sub")] == ["f"]


def test_delete_and_rename_act_on_the_link_itself(escape: tuple[FileTree, Path]) -> None:
    tree, outside = escape
    tree.rename("/out", "/moved")
    assert os.path.islink(tree.root / "moved")
    tree.delete("/moved")
    assert not os.path.lexists(tree.root / "moved")
    assert (outside / "secret").read_bytes() == b"secret"
    tree.delete("/in")  # a link to a file inside: the link goes, the file stays
    assert (tree.root / "sub" / "f").read_bytes() == b"inside"
    tree.delete("/outdir")
    assert (outside / "secret").exists()
    with pytest.raises(NotAllowed):
        tree.rmdir("/indir")  # not a directory itself
    assert (tree.root / "sub" / "f").exists()
    tree.delete("/indir")
    assert tree.is_dir("/sub")


def test_cwd_style_checks(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.mkdir("/d")
    _put(tree, "/f", b"x")
    assert tree.is_dir("/") and tree.is_dir("/d")
    assert not tree.is_dir("/f") and not tree.is_dir("/missing")
    assert not tree.is_dir("/a\r\nb")


# -- stat and listdir --------------------------------------------------------------------------


def test_stat(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _put(tree, "/file one.txt", b"hello")
    os.utime(tree.real("/file one.txt"), (1_000_000_000, 1_000_000_000))
    entry = tree.stat("file one.txt")
    assert entry == Entry("file one.txt", False, 5, 1_000_000_000.0, entry.mode)
    assert entry.mode == stat.S_IMODE(os.stat(tree.real("/file one.txt")).st_mode)
    assert tree.stat("/").name == "/" and tree.stat("/").is_dir
    with pytest.raises(NotFound, match="^/missing: no such file or directory$"):
        tree.stat("/missing")
    with pytest.raises(NotFound):
        tree.stat("/file one.txt/below")


def test_listdir(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    for name in ("b", "a b", "ä", "C"):
        _put(tree, "/" + name, name.encode())
    tree.mkdir("/dir")
    (tree.root / (TEMP_PREFIX + "1.abc")).write_bytes(b"half")
    names = [e.name for e in tree.listdir("/")]
    assert names == sorted(["b", "a b", "ä", "C", "dir"])
    by_name = {e.name: e for e in tree.listdir("/")}
    assert by_name["dir"].is_dir and by_name["ä"].size == 2
    assert tree.listdir("/a b") == [tree.stat("/a b")]
    assert tree.listdir("/dir") == []
    with pytest.raises(NotFound):
        tree.listdir("/nope")


def test_listdir_skips_names_no_client_could_use(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    root = os.fsencode(tree.root)
    open(os.path.join(root, b"bad\nname"), "wb").close()
    open(os.path.join(root, b"bad\xffbytes"), "wb").close()
    open(os.path.join(root, b"good"), "wb").close()
    assert [e.name for e in tree.listdir("/")] == ["good"]


# -- mkdir, rmdir, delete, rename --------------------------------------------------------------


def test_mkdir(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.mkdir("/new dir")
    tree.mkdir("/new dir/ñ")
    assert tree.is_dir("/new dir/ñ")
    with pytest.raises(NotAllowed, match="file exists"):
        tree.mkdir("/new dir")
    with pytest.raises(NotAllowed):
        tree.mkdir("/")
    with pytest.raises(NotFound, match="^/missing: no such file or directory$"):
        tree.mkdir("/missing/child")
    _put(tree, "/f", b"")
    with pytest.raises(NotAllowed):
        tree.mkdir("/f")
    with pytest.raises(NotFound):
        tree.mkdir("/f/child")


def test_rmdir(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.mkdir("/d")
    _put(tree, "/d/f", b"x")
    with pytest.raises(NotAllowed, match="directory not empty"):
        tree.rmdir("/d")
    with pytest.raises(NotAllowed, match="not a directory"):
        tree.rmdir("/d/f")
    tree.delete("/d/f")
    tree.rmdir("/d")
    assert not tree.is_dir("/d")
    with pytest.raises(NotFound):
        tree.rmdir("/d")
    with pytest.raises(NotAllowed):
        tree.rmdir("/")
    with pytest.raises(NotAllowed):
        tree.rmdir("/..")


def test_rmdir_removes_abandoned_temps_but_not_running_uploads(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.mkdir("/d")
    stale = tree.root / "d" / (TEMP_PREFIX + "1.stale")
    stale.write_bytes(b"old")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    up = tree.begin_upload("/d/f")
    up.write(b"running")
    assert tree.listdir("/d") == []
    with pytest.raises(NotAllowed, match="not empty"):
        tree.rmdir("/d")
    assert not stale.exists()
    up.abort()
    tree.rmdir("/d")


def test_delete(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _put(tree, "/f", b"12345")
    tree.mkdir("/d")
    assert tree.usage() == 5
    tree.delete("/f")
    assert tree.usage() == 0
    assert tree.listdir("/") == [tree.stat("/d")]
    with pytest.raises(NotFound):
        tree.delete("/f")
    with pytest.raises(NotAllowed, match="is a directory"):
        tree.delete("/d")
    with pytest.raises(NotAllowed):
        tree.delete("/")


def test_rename(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _put(tree, "/a", b"A")
    _put(tree, "/b", b"B")
    tree.mkdir("/d")
    tree.rename("/a", "/d/a moved")
    assert _read(tree, "/d/a moved") == b"A"
    assert not tree.is_dir("/a") and [e.name for e in tree.listdir("/")] == ["b", "d"]
    tree.rename("/d", "/e")
    assert _read(tree, "/e/a moved") == b"A"
    with pytest.raises(NotAllowed, match="file exists"):
        tree.rename("/b", "/e")
    with pytest.raises(NotAllowed, match="file exists"):
        tree.rename("/b", "/b")
    with pytest.raises(NotFound):
        tree.rename("/missing", "/z")
    with pytest.raises(NotFound, match="^/nodir: no such file or directory$"):
        tree.rename("/b", "/nodir/b")
    with pytest.raises(NotAllowed):
        tree.rename("/", "/z")
    with pytest.raises(NotAllowed):
        tree.rename("/b", "/")
    with pytest.raises(NotAllowed):
        tree.rename("/e", "/e/inside")
    assert tree.usage() == 2


# -- reading -----------------------------------------------------------------------------------


def test_open_read(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _put(tree, "/f", b"0123456789")
    assert _read(tree, "/f") == b"0123456789"
    assert _read(tree, "/f", 4) == b"456789"
    assert _read(tree, "/f", 10) == b""
    with pytest.raises(NotAllowed):
        tree.open_read("/f", 11)
    with pytest.raises(NotAllowed):
        tree.open_read("/f", -1)
    with pytest.raises(NotAllowed, match="is a directory"):
        tree.open_read("/")
    with pytest.raises(NotFound):
        tree.open_read("/missing")


def test_open_read_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    os.mkfifo(tree.root / "pipe")
    with pytest.raises(NotAllowed, match="not a regular file"):
        tree.open_read("/pipe")
    with pytest.raises(NotAllowed):
        tree.begin_upload("/pipe")


# -- uploads -----------------------------------------------------------------------------------


def test_upload_is_invisible_until_commit(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    up = tree.begin_upload("/new file")
    up.write(b"part one, ")
    up.write(b"part two")
    assert up.written == 18 and up.vpath == "/new file"
    assert not os.path.lexists(tree.root / "new file")
    assert tree.listdir("/") == []
    assert len(_temps(tree.root)) == 1
    up.commit()
    assert _read(tree, "/new file") == b"part one, part two"
    assert _temps(tree.root) == []
    up.commit()  # a second commit changes nothing


def test_overwrite_is_atomic_and_keeps_the_mode(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _put(tree, "/f", b"old")
    os.chmod(tree.real("/f"), 0o640)
    up = tree.begin_upload("/f")
    up.write(b"new content")
    assert _read(tree, "/f") == b"old"
    up.commit()
    assert _read(tree, "/f") == b"new content"
    assert tree.stat("/f").mode == 0o640


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _put(tree, "/f", b"old")
    up = tree.begin_upload("/f")
    up.write(b"half")
    up.abort()
    up.abort()  # idempotent
    assert _read(tree, "/f") == b"old"
    assert _temps(tree.root) == []
    with pytest.raises(TreeError):
        up.write(b"more")
    with pytest.raises(TreeError, match="aborted"):
        up.commit()
    up2 = tree.begin_upload("/g")
    up2.write(b"x")
    up2.abort()
    assert not os.path.lexists(tree.root / "g")


def test_dropped_upload_leaves_nothing(tmp_path: Path) -> None:
    tree = _tree(tmp_path, quota=100)
    _put(tree, "/f", b"old")
    up = tree.begin_upload("/f")
    up.write(b"x" * 50)
    up2 = tree.begin_upload("/g")
    up2.write(b"y" * 40)
    del up, up2
    gc.collect()
    assert _read(tree, "/f") == b"old"
    assert not os.path.lexists(tree.root / "g")
    assert _temps(tree.root) == []
    assert tree.usage() == 3
    _put(tree, "/h", b"z" * 97)  # the dropped uploads' reservations were released


def test_upload_as_context_manager_aborts_unless_committed(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with tree.begin_upload("/a") as up:
        up.write(b"a")
    with pytest.raises(RuntimeError), tree.begin_upload("/b") as up:
        up.write(b"b")
        raise RuntimeError
    with tree.begin_upload("/c") as up:
        up.write(b"c")
        up.commit()
    assert [e.name for e in tree.listdir("/")] == ["c"]
    assert _temps(tree.root) == []


def test_upload_errors(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.mkdir("/d")
    _put(tree, "/f", b"")
    with pytest.raises(NotFound, match="^/missing: no such file or directory$"):
        tree.begin_upload("/missing/f")
    with pytest.raises(NotFound):
        tree.begin_upload("/f/below")
    with pytest.raises(NotAllowed, match="is a directory"):
        tree.begin_upload("/d")
    with pytest.raises(NotAllowed):
        tree.begin_upload("/")
    with pytest.raises(NotAllowed):
        tree.begin_upload("/d", append=True)
    with pytest.raises(ValueError):
        tree.begin_upload("/f", append=True, offset=0)
    with pytest.raises(NotAllowed):
        tree.begin_upload(TEMP_PREFIX + "x")
    assert _temps(tree.root) == [] and _temps(tree.root / "d") == []


def test_upload_into_subdir_with_unicode_names(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.mkdir("/répertoire 1")
    _put(tree, "/répertoire 1/日本語 ファイル.txt", "数据".encode())
    assert _read(tree, "répertoire 1/日本語 ファイル.txt") == "数据".encode()
    assert os.path.exists(os.path.join(tree.root, "répertoire 1", "日本語 ファイル.txt"))


# -- resume ------------------------------------------------------------------------------------


def test_append(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _put(tree, "/f", b"abc")
    up = tree.begin_upload("/f", append=True)
    up.write(b"def")
    up.commit()
    assert _read(tree, "/f") == b"abcdef"
    assert tree.usage() == 6
    up = tree.begin_upload("/new", append=True)  # APPE creates a missing file
    up.write(b"x")
    up.commit()
    assert _read(tree, "/new") == b"x"
    assert tree.usage() == 7


def test_resume_at_offset_cuts_and_writes(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _put(tree, "/f", b"0123456789")
    up = tree.begin_upload("/f", offset=4)
    up.write(b"ab")
    up.commit()
    assert _read(tree, "/f") == b"0123ab"
    assert tree.usage() == 6
    up = tree.begin_upload("/f", offset=6)
    up.write(b"XYZ")
    up.commit()
    assert _read(tree, "/f") == b"0123abXYZ"
    up = tree.begin_upload("/f", offset=0)
    up.commit()
    assert _read(tree, "/f") == b""
    assert tree.usage() == 0
    with pytest.raises(NotAllowed, match="beyond end"):
        tree.begin_upload("/f", offset=1)
    with pytest.raises(NotAllowed, match="beyond end"):
        tree.begin_upload("/missing", offset=5)
    assert not os.path.lexists(tree.root / "missing")
    with pytest.raises(NotAllowed):
        tree.begin_upload("/f", offset=-1)


def test_aborted_resume_keeps_what_was_written(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    _put(tree, "/f", b"abc")
    up = tree.begin_upload("/f", append=True)
    up.write(b"def")
    up.abort()
    assert _read(tree, "/f") == b"abcdef"  # the client may resume from 6
    assert tree.usage() == 6
    up = tree.begin_upload("/f", offset=2)
    del up
    gc.collect()
    assert _read(tree, "/f") == b"ab"
    assert tree.usage() == 2


# -- quota and usage ---------------------------------------------------------------------------


def test_usage_walks_the_existing_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x" * 100)
    (root / "g").write_bytes(b"y" * 10)
    (root / "fresh-temp").write_bytes(b"")
    (root / (TEMP_PREFIX + "1.run")).write_bytes(b"z" * 1000)  # a running upload elsewhere
    stale = root / "a" / (TEMP_PREFIX + "2.old")
    stale.write_bytes(b"z" * 1000)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    os.symlink(root / "g", root / "link")
    tree = FileTree(root)
    assert tree.usage() == 110
    assert not stale.exists()


def test_quota_exceeded_aborts_and_keeps_the_old_file(tmp_path: Path) -> None:
    tree = _tree(tmp_path, quota=100)
    _put(tree, "/a", b"a" * 60)
    _put(tree, "/b", b"b" * 10)
    up = tree.begin_upload("/c")
    up.write(b"c" * 30)
    with pytest.raises(QuotaExceeded, match="quota"):
        up.write(b"c")
    assert not os.path.lexists(tree.root / "c") and _temps(tree.root) == []
    with pytest.raises(TreeError):
        up.commit()
    assert tree.usage() == 70
    up = tree.begin_upload("/b")  # an overwrite may use the space the old file frees
    up.write(b"B" * 40)
    with pytest.raises(QuotaExceeded):
        up.write(b"B")
    assert _read(tree, "/b") == b"b" * 10
    assert tree.usage() == 70


def test_usage_follows_overwrites_and_deletes(tmp_path: Path) -> None:
    tree = _tree(tmp_path, quota=100)
    _put(tree, "/a", b"a" * 80)
    _put(tree, "/a", b"a" * 20)
    assert tree.usage() == 20
    _put(tree, "/a", b"a" * 100)
    assert tree.usage() == 100
    tree.delete("/a")
    assert tree.usage() == 0
    _put(tree, "/b", b"b" * 100)
    tree.rename("/b", "/c")
    assert tree.usage() == 100
    assert FileTree(tree.root, quota=100).usage() == 100  # the walk agrees


def test_running_uploads_share_the_quota(tmp_path: Path) -> None:
    tree = _tree(tmp_path, quota=100)
    one = tree.begin_upload("/one")
    two = tree.begin_upload("/two")
    one.write(b"1" * 60)
    with pytest.raises(QuotaExceeded):
        two.write(b"2" * 41)
    three = tree.begin_upload("/three")
    three.write(b"3" * 40)
    one.commit()
    three.commit()
    assert tree.usage() == 100


def test_quota_applies_to_append_and_resume(tmp_path: Path) -> None:
    tree = _tree(tmp_path, quota=10)
    _put(tree, "/f", b"12345678")
    up = tree.begin_upload("/f", append=True)
    up.write(b"9")
    up.write(b"0")
    with pytest.raises(QuotaExceeded):
        up.write(b"!")
    assert _read(tree, "/f") == b"1234567890"
    assert tree.usage() == 10
    up = tree.begin_upload("/f", offset=5)
    up.write(b"abcde")
    with pytest.raises(QuotaExceeded):
        up.write(b"f")
    assert _read(tree, "/f") == b"12345abcde"
    assert tree.usage() == 10


def test_zero_quota_allows_empty_files(tmp_path: Path) -> None:
    tree = _tree(tmp_path, quota=0)
    _put(tree, "/empty", b"")
    with pytest.raises(QuotaExceeded):
        _put(tree, "/full", b"x")
    assert [e.name for e in tree.listdir("/")] == ["empty"]


# -- unique_name -------------------------------------------------------------------------------


def test_unique_name(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    tree.mkdir("/d")
    first = tree.unique_name("/d")
    assert first.startswith("/d/") and not tree.is_dir(first)
    with pytest.raises(NotFound):
        tree.stat(first)
    assert tree.unique_name("/d", "report.txt") == "/d/report.txt"
    _put(tree, "/d/report.txt", b"")
    assert tree.unique_name("/d", "report.txt") == "/d/report.txt.1"
    _put(tree, "/d/report.txt.1", b"")
    assert tree.unique_name("/d", "report.txt") == "/d/report.txt.2"
    assert tree.unique_name("/", "").startswith("/file.")
    _put(tree, "/" + "x" * 255, b"")
    long_name = tree.unique_name("/", "x" * 255)
    assert long_name.startswith("/file.")
    for bad in ("a/b", "..", "a\r\nb", TEMP_PREFIX + "1"):
        with pytest.raises(NotAllowed):
            tree.unique_name("/d", bad)
    with pytest.raises(NotFound):
        tree.unique_name("/missing")
    with pytest.raises(NotAllowed):
        tree.unique_name("/d/report.txt")


# -- listings ----------------------------------------------------------------------------------

_DEC_7 = float(calendar.timegm((2026, 12, 7, 2, 50, 13)))


def test_format_list_recent_and_old() -> None:
    now = _DEC_7 + 86400
    line = format_list(Entry("name", True, 4096, _DEC_7, 0o755), now)
    assert line == "drwxr-xr-x    1 owner    group        4096 Dec 07 02:50 name"
    old = format_list(Entry("old file", False, 12, _DEC_7 - 200 * 86400, 0o644), now)
    assert old == "-rw-r--r--    1 owner    group          12 May 21  2026 old file"
    future = format_list(Entry("f", False, 1, _DEC_7 + 365 * 86400, 0o600), now)
    assert future.endswith(" Dec 07  2027 f") and future.startswith("-rw------- ")
    big = format_list(Entry("big", False, 12_345_678_901, _DEC_7, 0o4755), now)
    assert big == "-rwsr-xr-x    1 owner    group    12345678901 Dec 07 02:50 big"


def test_format_list_matches_what_clients_parse() -> None:
    line = format_list(Entry("my file.txt", False, 1234, _DEC_7, 0o644), _DEC_7)
    fields = line.split(None, 8)
    assert fields[0] == "-rw-r--r--" and fields[4] == "1234"
    assert fields[5:8] == ["Dec", "07", "02:50"] and fields[8] == "my file.txt"


def test_format_facts() -> None:
    f = Entry("name.txt", False, 12, _DEC_7, 0o644)
    line = format_facts(f, "/d/name.txt")
    facts, name = line.split(" ", 1)
    assert name == "name.txt"
    parts = dict(p.split("=", 1) for p in facts.rstrip(";").split(";"))
    assert parts["type"] == "file" and parts["size"] == "12"
    assert parts["modify"] == "20261207025013" and parts["perm"] == "adfrw"
    assert parts["unique"] and parts["unique"] != format_facts(f, "/other").split("unique=")[1]
    d = Entry("sub", True, 4096, _DEC_7, 0o755)
    assert format_facts(d, "/sub").startswith("type=dir;modify=20261207025013;perm=cdeflmp;")
    assert "perm=celmp;" in format_facts(Entry("/", True, 0, _DEC_7, 0o700), "/", kind="cdir")
    assert format_facts(d, "/sub", kind="cdir").startswith("type=cdir;")
    assert format_facts(d, "/", kind="pdir", name="..").endswith("; ..")
    ro = Entry("ro", False, 1, _DEC_7, 0o444)
    assert "perm=dfr;" in format_facts(ro, "/ro")
    assert format_facts(f, "/d/name.txt", facts=["Type", "SIZE"]) == "type=file;size=12; name.txt"
    assert format_facts(f, "/d/name.txt", name="/d/name.txt").endswith("; /d/name.txt")
    with pytest.raises(ValueError):
        format_facts(f, "/x", kind="link")


def test_formatters_never_break_a_line() -> None:
    bad = Entry("evil\r\n226 done", False, 1, _DEC_7, 0o644)
    for line in (format_list(bad, _DEC_7), format_facts(bad, "/x")):
        assert "\r" not in line and "\n" not in line
    weird = Entry("w", False, 0, float("nan"), 0o644)
    assert format_list(weird, _DEC_7).endswith(" w")
    assert "modify=19700101000000;" in format_facts(weird, "/w")
    assert format_list(Entry("w", False, 0, 1e20, 0o644), _DEC_7).endswith("Dec 31  9999 w")


# -- properties --------------------------------------------------------------------------------

_segments = st.sampled_from(["..", ".", "", "a", "b c", "é", "..."]) | st.text(max_size=8)
_paths = st.lists(_segments, max_size=8).map("/".join) | st.text(max_size=40)


@pytest.fixture(scope="module")
def prop_tree(tmp_path_factory: pytest.TempPathFactory) -> FileTree:
    return FileTree(tmp_path_factory.mktemp("props") / "root")


@settings(max_examples=300, deadline=None)
@given(cwd=_paths, path=_paths)
def test_resolve_stays_inside_and_is_idempotent(prop_tree: FileTree, cwd: str, path: str) -> None:
    try:
        cwd = prop_tree.resolve("/", cwd)
        vpath = prop_tree.resolve(cwd, path)
    except NotAllowed:
        return
    assert vpath.startswith("/")
    assert vpath == "/" or not vpath.endswith("/")
    parts = vpath.split("/")[1:] if vpath != "/" else []
    assert all(p not in ("", ".", "..") for p in parts)
    assert prop_tree.resolve("/", vpath) == vpath
    assert prop_tree.resolve(cwd, vpath) == vpath
    real = os.fspath(prop_tree.real(vpath))
    root = os.fspath(prop_tree.root)
    assert real == root or real.startswith(root + os.sep)


@given(path=st.text(max_size=20), bad=st.sampled_from(["\r", "\n", "\x00", "\x1f", "\x9b"]))
def test_control_characters_always_refused(prop_tree: FileTree, path: str, bad: str) -> None:
    text = path[: len(path) // 2] + bad + path[len(path) // 2 :]
    with pytest.raises(NotAllowed):
        prop_tree.resolve("/", text)


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(min_size=1, max_size=30),
    size=st.integers(min_value=0, max_value=2**50),
    mtime=st.floats(allow_nan=True, allow_infinity=True),
    mode=st.integers(min_value=0, max_value=0o7777),
    is_dir=st.booleans(),
)
def test_listing_lines_end_with_the_name(
    prop_tree: FileTree, name: str, size: int, mtime: float, mode: int, is_dir: bool
) -> None:
    try:
        vpath = prop_tree.resolve("/", name)
    except NotAllowed:
        return
    assume(vpath != "/")
    base = vpath.rpartition("/")[2]
    entry = Entry(base, is_dir, size, mtime, mode)
    for line in (format_list(entry, _DEC_7), format_facts(entry, vpath)):
        assert line.endswith(" " + base)
        assert "\r" not in line and "\n" not in line
    assert format_facts(entry, vpath).split("; ", 1)[1] == base
    if base == base.lstrip():  # what split-based client parsers recover
        assert format_list(entry, _DEC_7).split(None, 8)[8] == base


# -- failures and threads ----------------------------------------------------------------------


def test_commit_fails_cleanly_when_the_name_became_a_directory(tmp_path: Path) -> None:
    tree = _tree(tmp_path, quota=100)
    up = tree.begin_upload("/x")
    up.write(b"data")
    tree.mkdir("/x")
    with pytest.raises(NotAllowed):
        up.commit()
    assert tree.is_dir("/x") and _temps(tree.root) == []
    assert tree.usage() == 0
    _put(tree, "/y", b"y" * 100)  # nothing left reserved


def test_os_errors_become_tree_errors() -> None:
    from netpost.files.tree import _error

    assert isinstance(_error(OSError(errno.ENOSPC, "full"), "/f"), QuotaExceeded)
    assert isinstance(_error(OSError(errno.EACCES, "no"), "/f"), NotAllowed)
    assert isinstance(_error(OSError(errno.ENOTDIR, "no"), "/f"), NotFound)
    other = _error(OSError(errno.EIO, "io"), "/f")
    assert type(other) is TreeError and str(other) == "/f: input/output error"


def test_threads_never_pass_the_quota(tmp_path: Path) -> None:
    tree = _tree(tmp_path, quota=1000)
    outcomes: list[bool] = []

    def upload(n: int) -> None:
        up = tree.begin_upload(f"/t{n}")
        try:
            for _ in range(20):
                up.write(b"x" * 10)
            up.commit()
            outcomes.append(True)
        except QuotaExceeded:
            outcomes.append(False)

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    on_disk = sum(e.size for e in tree.listdir("/"))
    assert on_disk == tree.usage() == 200 * outcomes.count(True) <= 1000
    assert len(outcomes) == 8 and _temps(tree.root) == []
    _put(tree, "/rest", b"r" * (1000 - tree.usage()))  # the failed ones released their bytes
