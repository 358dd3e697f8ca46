"""The NTP fuzz target runs over its seed corpus and mutations of it (as tests/test_fuzz_targets.py
does for the other engines)."""

from __future__ import annotations

import random

from fuzz import fuzz_ntp
from fuzz.replay import corpus_files, replay

CORPUS = "fuzz/corpus/ntp"


def test_ntp_target_replays_corpus() -> None:
    assert replay(fuzz_ntp.one_input, [CORPUS]) >= 9


def test_ntp_target_survives_mutated_corpus() -> None:
    rng = random.Random(5905)
    seeds = [f.read_bytes() for f in corpus_files([CORPUS])]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data) + 1)
            if rng.random() < 0.5 and pos < len(data):
                data[pos] = rng.randrange(256)
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 4)))
        fuzz_ntp.one_input(bytes(data))
