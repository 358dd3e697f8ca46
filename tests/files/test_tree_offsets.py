"""Upload.write_at and begin_upload(in_place=True): the writes SFTP makes at offsets."""

from __future__ import annotations

from pathlib import Path

import pytest

from netpost.files.tree import FileTree, QuotaExceeded


def test_write_at_in_order_out_of_order_and_gaps(tmp_path: Path) -> None:
    tree = FileTree(tmp_path / "t")
    up = tree.begin_upload("/f")
    up.write_at(0, b"abc")
    up.write_at(6, b"ghi")  # a gap: zeros until written
    up.write_at(3, b"def")
    up.write_at(9, b"jkl")  # in order again, through the buffer
    assert not (tree.root / "f").exists()  # a temporary file until commit
    up.commit()
    assert (tree.root / "f").read_bytes() == b"abcdefghijkl"
    assert tree.usage() == 12


def test_gap_reads_as_zeros(tmp_path: Path) -> None:
    tree = FileTree(tmp_path / "t")
    with tree.begin_upload("/f") as up:
        up.write_at(4, b"x")
        up.commit()
    assert (tree.root / "f").read_bytes() == b"\0\0\0\0x"


def test_in_place_keeps_the_rest_and_grows(tmp_path: Path) -> None:
    tree = FileTree(tmp_path / "t")
    (tree.root / "f").write_bytes(b"0123456789")
    up = tree.begin_upload("/f", in_place=True)
    up.write_at(2, b"X")
    up.write(b"ab")  # `write` continues at the end
    up.write_at(12, b"c")
    up.commit()
    assert (tree.root / "f").read_bytes() == b"01X3456789abc"
    assert tree.usage() == 13


def test_in_place_makes_a_missing_file(tmp_path: Path) -> None:
    tree = FileTree(tmp_path / "t")
    up = tree.begin_upload("/new", in_place=True)
    up.write_at(0, b"hi")
    up.commit()
    assert (tree.root / "new").read_bytes() == b"hi"


def test_write_at_charges_only_growth_against_the_quota(tmp_path: Path) -> None:
    tree = FileTree(tmp_path / "t", quota=10)
    up = tree.begin_upload("/f")
    up.write_at(0, b"x" * 8)
    up.write_at(0, b"y" * 8)  # rewriting costs nothing
    with pytest.raises(QuotaExceeded):
        up.write_at(8, b"z" * 3)
    assert not (tree.root / "f").exists()
    assert tree.usage() == 0
    assert not list(tree.root.iterdir())


def test_modes_exclude_each_other(tmp_path: Path) -> None:
    tree = FileTree(tmp_path / "t")
    with pytest.raises(ValueError):
        tree.begin_upload("/f", append=True, in_place=True)


def test_truncate_cuts_or_extends_and_writes_continue_there(tmp_path: Path) -> None:
    tree = FileTree(tmp_path / "t")
    (tree.root / "f").write_bytes(b"0123456789")
    up = tree.begin_upload("/f", in_place=True)
    up.write_at(0, b"ab")
    up.truncate(4)
    up.write(b"!")
    up.commit()
    assert (tree.root / "f").read_bytes() == b"ab23!"
    assert tree.usage() == 5
    with tree.begin_upload("/g") as up:
        up.write(b"x")
        up.truncate(3)
        up.commit()
    assert (tree.root / "g").read_bytes() == b"x\0\0"


def test_truncate_beyond_the_quota_aborts(tmp_path: Path) -> None:
    tree = FileTree(tmp_path / "t", quota=10)
    up = tree.begin_upload("/f")
    with pytest.raises(QuotaExceeded):
        up.truncate(11)
    assert not list(tree.root.iterdir())
    assert tree.usage() == 0
