"""The fuzz targets run over their seed corpora (and random inputs) in the suite."""

from __future__ import annotations

import random

from fuzz import fuzz_dhcp, fuzz_ftp, fuzz_imap, fuzz_mbox, fuzz_pop3, fuzz_smtp, fuzz_smtp_client
from fuzz.replay import corpus_files, replay


def test_smtp_target_replays_corpus() -> None:
    assert replay(fuzz_smtp.one_input, ["fuzz/corpus/smtp"]) >= 3


def test_smtp_client_target_replays_corpus() -> None:
    assert replay(fuzz_smtp_client.one_input, ["fuzz/corpus/smtp_client"]) >= 6


def test_pop3_target_replays_corpus() -> None:
    assert replay(fuzz_pop3.one_input, ["fuzz/corpus/pop3"]) >= 2


def test_mbox_target_replays_corpus() -> None:
    assert replay(fuzz_mbox.one_input, ["fuzz/corpus/mbox"]) >= 3


def test_imap_target_replays_corpus() -> None:
    assert replay(fuzz_imap.one_input, ["fuzz/corpus/imap"]) >= 8


def test_ftp_target_replays_corpus() -> None:
    assert replay(fuzz_ftp.one_input, ["fuzz/corpus/ftp"]) >= 10


def test_dhcp_target_replays_corpus() -> None:
    assert replay(fuzz_dhcp.one_input, ["fuzz/corpus/dhcp"]) >= 9


def test_targets_survive_mutated_corpus() -> None:
    rng = random.Random(1234)
    for target, corpus in ((fuzz_smtp.one_input, "fuzz/corpus/smtp"),
                           (fuzz_pop3.one_input, "fuzz/corpus/pop3"),
                           (fuzz_mbox.one_input, "fuzz/corpus/mbox"),
                           (fuzz_imap.one_input, "fuzz/corpus/imap"),
                           (fuzz_smtp_client.one_input, "fuzz/corpus/smtp_client"),
                           (fuzz_ftp.one_input, "fuzz/corpus/ftp"),
                           (fuzz_dhcp.one_input, "fuzz/corpus/dhcp")):
        seeds = [f.read_bytes() for f in corpus_files([corpus])]
        for _ in range(300):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(data) + 1)
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 4)))
            target(bytes(data))
