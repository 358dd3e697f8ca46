"""FileBlobStore: content addressing, dedup, put_many, threads, no temporary leftovers."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from netpost.store.blobs import FileBlobStore
from netpost.store.interfaces import BlobRef


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_put_read_layout(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path))
    ref = store.put(b"hello\r\n")
    sha = hashlib.sha256(b"hello\r\n").hexdigest()
    assert ref == BlobRef(sha, 7)
    path = store.local_path(ref)
    assert path == str(tmp_path / sha[:2] / sha)
    assert store.read(ref) == b"hello\r\n"
    assert not list((tmp_path / "tmp").iterdir())


def test_put_dedup_does_not_rewrite(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path))
    ref = store.put(b"same")
    ino = os.stat(store.local_path(ref)).st_ino
    assert store.put(b"same") == ref
    assert os.stat(store.local_path(ref)).st_ino == ino
    assert len(_files(tmp_path)) == 1


def test_empty_blob(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path))
    ref = store.put(b"")
    assert ref.size == 0
    assert store.read(ref) == b""


def test_delete_missing_is_fine(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path))
    ref = store.put(b"x")
    store.delete(ref)
    store.delete(ref)
    assert not os.path.exists(store.local_path(ref))
    assert store.put(b"x") == ref  # and it can come back
    assert store.read(ref) == b"x"


def test_local_path_rejects_non_digest(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path))
    with pytest.raises(ValueError):
        store.local_path(BlobRef("../../etc/passwd", 1))


def test_put_many(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path), fsync_workers=4)
    existing = store.put(b"old")
    items = [b"a" * 10, b"b" * 20, b"a" * 10, b"old", os.urandom(5000)]
    refs = store.put_many(items)
    assert [r.size for r in refs] == [len(i) for i in items]
    assert refs[0] == refs[2]
    assert refs[3] == existing
    for ref, data in zip(refs, items, strict=True):
        assert store.read(ref) == data
    assert len(_files(tmp_path)) == 4
    assert not list((tmp_path / "tmp").iterdir())
    assert store.put_many([]) == []
    store.close()


def test_put_many_single_worker(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path), fsync_workers=1)
    refs = store.put_many([b"1", b"2"])
    assert [store.read(r) for r in refs] == [b"1", b"2"]


def test_concurrent_put_same_and_different_content(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path))
    payloads = [b"shared content" * 100, b"other" * 50]
    errors: list[BaseException] = []
    results: list[BlobRef] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(20):
                data = payloads[i % 2] if n % 2 else f"unique {n} {i}".encode()
                ref = store.put(data)
                with lock:
                    results.append(ref)
                assert store.read(ref) == data
            refs = store.put_many([payloads[0], payloads[1], f"many {n}".encode()])
            assert store.read(refs[0]) == payloads[0]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # 2 shared + 8 threads * 20 unique + 16 "many"
    assert len(_files(tmp_path)) == 2 + 8 * 20 + 16
    assert not list((tmp_path / "tmp").iterdir())


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileBlobStore(str(tmp_path))

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        store.put(b"never")
    with pytest.raises(OSError):
        store.put_many([b"never 1", b"never 2", b"never 3"])
    monkeypatch.undo()
    assert not list((tmp_path / "tmp").iterdir())
    assert _files(tmp_path) == []


def test_cleanup_tmp_removes_old_leftovers(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    old = tmp_path / "tmp" / "leftover"
    old.write_bytes(b"partial")
    os.utime(old, (1, 1))
    young = tmp_path / "tmp" / "in-flight"
    young.write_bytes(b"partial")
    FileBlobStore(str(tmp_path))
    assert not old.exists()
    assert young.exists()


def test_stage_then_finish(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path))
    staged = store.stage_many([b"one", b"two", b"one"])
    assert [store.read(r) for r in staged.refs] == [b"one", b"two", b"one"]
    assert staged.pending  # entries not yet durable until finish()
    store.finish(staged)
    # A second store over the same tree dedups against what is there.
    again = FileBlobStore(str(tmp_path))
    assert again.put_many([b"one"]) == staged.refs[:1]
    assert len(_files(tmp_path)) == 2


def test_streaming_writer(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path))
    w = store.create()
    for part in (b"a" * 100_000, b"b" * 5, b""):
        w.write(part)
    ref = w.commit()
    assert ref.size == 100_005 and store.read(ref) == b"a" * 100_000 + b"b" * 5
    with store.open(ref) as f:
        assert f.read(3) == b"aaa"
    # The same content again: deduplicated, one file.
    again = store.create()
    again.write(b"a" * 100_000 + b"b" * 5)
    assert again.commit() == ref
    # An aborted blob leaves nothing, not even a temporary file.
    gone = store.create()
    gone.write(b"never")
    gone.abort()
    assert os.listdir(tmp_path / "tmp") == []
    assert sorted(sha for sha, _ in store.stored()) == [ref.sha256]
