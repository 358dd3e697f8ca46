"""Dovecot's imaptest against netpost: all 71 scripted compliance groups, and its stress mode
with state tracking (many sessions on one mailbox: EXISTS/EXPUNGE/flags must stay consistent).

imaptest is built once from shared/tools into a cache outside the repo (imaptest_tool.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netpost.imap.protocol import IMAPConnection, IMAPSettings
from tests.conftest import CONFIG, PASSWORD, Server, start_server
from tests.interop import imaptest_tool

DOMAIN = "imaptest.test"


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    imaptest_tool.imaptest()  # build (or find) it before the server starts
    srv = start_server(tmp_path_factory.mktemp("imaptest"), CONFIG)
    assert srv.cli("domain", "add", DOMAIN).returncode == 0
    for user in ("compliance", "stress"):
        srv.add_user(f"{user}@{DOMAIN}")
    yield srv
    srv.stop()


def test_every_group_the_capabilities_need_runs() -> None:
    """No group is skipped for a capability we lack... except those we do not offer: say
    which, so that advertising one more capability brings its group in."""
    offered = {c.upper() for c in IMAPConnection(IMAPSettings(), tls_active=True).capabilities()}
    offered |= {c.upper() for c in _authenticated_capabilities()}
    missing = {group: [c for c in caps if c.upper() not in offered]
               for group, caps in imaptest_tool.required_capabilities().items()}
    not_run = sorted(g for g, caps in missing.items() if caps)
    # These need extensions netpost does not implement (yet): CATENATE, URLAUTH, NOTIFY,
    # CONTEXT=SEARCH, ESORT, SEARCH=PARTIAL-style groups.
    allowed = {"catenate", "catenate-multiappend", "esort", "notify", "search-context-update",
               "search-context-update2", "search-context-update3", "search-partial",
               "sort-partial", "urlauth", "urlauth-binary", "urlauth2"}
    assert set(not_run) <= allowed, not_run


def _authenticated_capabilities() -> list[str]:
    conn = IMAPConnection(IMAPSettings(), tls_active=True)
    conn.state = "authenticated"
    return conn.capabilities()


def test_scripted_compliance(imap_server: Server, tmp_path: Path) -> None:
    result = imaptest_tool.run_scripted(
        "127.0.0.1", imap_server.port("imaps"), f"compliance@{DOMAIN}", PASSWORD,
        extra=["ssl=any-cert"], cwd=tmp_path)
    assert result.ok, result.report()
    assert result.groups == 71 and result.groups_skipped == 0, result.report()
    assert result.base_failed == 0 and result.ext_failed == 0, result.report()


def test_stress_with_state_tracking(imap_server: Server, tmp_path: Path) -> None:
    mbox = imaptest_tool.write_mbox(tmp_path / "stress.mbox", 200)
    result = imaptest_tool.run_stress(
        "127.0.0.1", imap_server.port("imaps"), f"stress@{DOMAIN}", PASSWORD, mbox,
        clients=10, secs=5, extra=["ssl=any-cert"], cwd=tmp_path)
    # some 2,000 commands in 5 s on a loaded 2-core machine (4,400 in 10 s)
    assert not result.errors, "\n".join(result.errors[:20])
    assert result.commands > 500, result.output[-2000:]


def test_checkpoint_one_mailbox_many_sessions(imap_server: Server, tmp_path: Path) -> None:
    """checkpoint=1: every second imaptest compares all sessions' views of one mailbox
    (flags, \\Recent in exactly one session, EXISTS): four checkpoints, some 2,000 commands."""
    mbox = imaptest_tool.write_mbox(tmp_path / "checkpoint.mbox", 100)
    imap_server.add_user(f"checkpoint@{DOMAIN}")
    # imaptest is built with a fix for its own panic at the end of checkpoint runs
    # (imaptest_tool._patch_checkpoint_teardown): one run, no retries.
    result = imaptest_tool.run_stress(
        "127.0.0.1", imap_server.port("imaps"), f"checkpoint@{DOMAIN}", PASSWORD, mbox,
        clients=10, secs=4, extra=["ssl=any-cert", "checkpoint=1"], cwd=tmp_path)
    assert result.rc == 0, result.output[-2000:]
    assert not result.errors, "\n".join(result.errors[:20])
    assert result.commands > 200, result.output[-2000:]
