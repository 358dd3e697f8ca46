"""files/reads.py: page-cache-first reads give exactly what pread(2) gives."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpost.files import reads

DATA = os.urandom(300_000)


def _read(path: Path, size: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return asyncio.run(reads.pread(fd, size, offset))
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reads") / "f"
    path.write_bytes(DATA)
    return path


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 400_000), offset=st.integers(0, 350_000))
def test_same_as_pread(data_file: Path, size: int, offset: int) -> None:
    got = _read(data_file, size, offset)
    # Never more than asked, never past the end, and what is there is the file's.
    assert got == DATA[offset:offset + len(got)]
    if size and offset < len(DATA):
        assert got  # not the end: something comes
    else:
        assert got == b""


def test_whole_file_in_pieces_cold_and_warm(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    for cold in (True, False):
        fd = os.open(path, os.O_RDONLY)
        try:
            if cold:  # drop it from the page cache: the worker path must give the same
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            out = asyncio.run(_read_all(fd))
        finally:
            os.close(fd)
        assert out == DATA


async def _read_all(fd: int) -> bytes:
    out, offset = bytearray(), 0
    while piece := await reads.pread(fd, 65536, offset):
        out.extend(piece)
        offset += len(piece)
    return bytes(out)
