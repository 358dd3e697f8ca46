"""Run a fuzz target once over every file of a corpus (no atheris needed)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def corpus_files(paths: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return files


def replay(target: Callable[[bytes], None], paths: Iterable[str]) -> int:
    files = corpus_files(paths)
    for f in files:
        target(f.read_bytes())
    print(f"replayed {len(files)} inputs")
    return len(files)


def fuzz_main(target: Callable[[bytes], None], default_corpus: str) -> None:
    """Fuzz `target` with atheris when it is installed, else replay the corpus once."""
    try:
        import atheris
    except ImportError:
        replay(target, sys.argv[1:] or [default_corpus])
        return
    atheris.instrument_all()  # coverage of the already-imported netpost modules
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
