"""The imaptest tooling's own pure parts: output parsers, the build patch, the mbox generator.

No imaptest binary, build or server is needed here; the canned outputs are imaptest
release-2.3's, captured against Dovecot 2.3.19.
"""

from __future__ import annotations

import mailbox
from pathlib import Path

from tests.interop.imaptest_tool import (
    _patch_for_installed_dovecot,
    make_mbox,
    parse_scripted,
    parse_stress,
    required_capabilities,
    write_mbox,
)

PASSED = """\
71 test groups: 0 failed, 0 skipped due to missing capabilities
base protocol: 0/457 individual commands failed
extensions: 0/330 individual commands failed
"""

FAILED = """\
*** Test deliberately-fail command 1/3 (line 3)
 - failed: Missing 1 untagged replies (6 mismatches)
 - first unexpanded: 5 exists
 - first expanded: 5 exists
 - best match:
 - Command: select $mailbox

*** Test list-fail command 1/2 (line 3)
 - failed: Missing 1 untagged replies (0 mismatches)
 - first unexpanded: list ($!unordered) "/" nonexistentbox
 - first expanded: list ( "/" nonexistentbox
 - best match:
 - Command: list "" $mailbox

3 test groups: 2 failed, 1 skipped due to missing capabilities
base protocol: 2/9 individual commands failed
extensions: 0/4 individual commands failed
"""

LOGIN_FAILED = """\
Error: testuser[1]: LOGIN failed: 1.1 NO [AUTHENTICATIONFAILED] Authentication failed.
*** Test fetch initialization failed: Unexpected disconnection
1 test groups: 1 failed, 0 skipped due to missing capabilities
base protocol: 1/0 individual commands failed
extensions: 0/0 individual commands failed
"""

STRESS = """\
Logi List Stat Sele Fetc Fet2 Stor Dele Expu Appe Logo
100%  50%  50% 100% 100% 100%  50% 100% 100% 100% 100%
                          30%                  5%
 129   64   73  129  108  170   24   55  108  129  129   2/ 10
Error: u3[7]: STORE didn't return FETCH FLAGS for seq 4 (expunged=?): 7.6 OK Store completed.
 136   65   70  136  136  198   40   62  136  135  135   3/ 10
   6    1    1    1    0    0    0    1    1    3    0 ms/cmd avg

Totals:
Logi List Stat Sele Fetc Fet2 Stor Dele Expu Appe Logo
100%  50%  50% 100% 100% 100%  50% 100% 100% 100% 100%
                          30%                  5%
 708  358  371  707  685  986  210  338  685  706  716

"""


def test_parse_scripted_all_passed() -> None:
    r = parse_scripted(PASSED, 0, ["imaptest"])
    assert r.ok
    assert (r.groups, r.groups_failed, r.groups_skipped) == (71, 0, 0)
    assert (r.base_failed, r.base_total, r.ext_failed, r.ext_total) == (0, 457, 0, 330)
    assert r.failed_tests == [] and r.failures == [] and r.errors == []


def test_parse_scripted_failures() -> None:
    r = parse_scripted(FAILED, 2)
    assert not r.ok
    assert (r.groups, r.groups_failed, r.groups_skipped) == (3, 2, 1)
    assert (r.base_failed, r.base_total, r.ext_failed, r.ext_total) == (2, 9, 0, 4)
    assert r.failed_tests == ["deliberately-fail", "list-fail"]
    assert len(r.failures) == 2
    assert r.failures[0].startswith("*** Test deliberately-fail command 1/3 (line 3)\n")
    assert r.failures[0].endswith(" - Command: select $mailbox")
    assert r.failures[1].endswith(' - Command: list "" $mailbox')
    report = r.report()
    assert "2 failed" in report and "list-fail" in report and "select $mailbox" in report


def test_parse_scripted_login_failure() -> None:
    r = parse_scripted(LOGIN_FAILED, 2)
    assert not r.ok and r.failed_tests == ["fetch"]
    assert r.failures == ["*** Test fetch initialization failed: Unexpected disconnection"]
    assert r.errors == [LOGIN_FAILED.splitlines()[0]]


def test_parse_scripted_no_summary() -> None:
    r = parse_scripted("Fatal: Unknown setting: foo\n", 89)
    assert not r.ok and r.groups is None and r.base_total is None
    assert r.errors == ["Fatal: Unknown setting: foo"]
    assert "Fatal: Unknown setting: foo" in r.report()


def test_parse_stress() -> None:
    r = parse_stress(STRESS, 0)
    assert r.totals["Logi"] == 708 and r.totals["Logo"] == 716 and len(r.totals) == 11
    assert r.commands == 6470
    assert len(r.errors) == 1 and "STORE didn't return FETCH FLAGS" in r.errors[0]
    assert parse_stress("Fatal: connect() failed\n", 89).totals == {}


def test_make_mbox_is_deterministic_crlf_and_unique(tmp_path: Path) -> None:
    data = make_mbox(40, seed=7)
    assert data == make_mbox(40, seed=7) and data != make_mbox(40, seed=8)
    assert b"\n" not in data.replace(b"\r\n", b"")
    path = write_mbox(tmp_path / "test.mbox", 40, seed=7)
    ids = [m["Message-ID"] for m in mailbox.mbox(path)]
    assert len(ids) == 40 == len(set(ids))


def test_patch_only_when_the_header_wants_params(tmp_path: Path) -> None:
    src = tmp_path / "imaptest"
    (src / "src").mkdir(parents=True)
    call = "\tparser = imap_parser_create(input, NULL, (size_t)-1);\n"
    (src / "src" / "commands.c").write_text(call)
    (src / "src" / "other.c").write_text("int x;\n")
    old = tmp_path / "old.h"
    old.write_text("struct imap_parser *\nimap_parser_create(struct istream *input, "
                   "struct ostream *output,\n\t\t   size_t max_line_size);\n")
    assert _patch_for_installed_dovecot(src, old) == []
    assert (src / "src" / "commands.c").read_text() == call
    new = tmp_path / "new.h"
    new.write_text("struct imap_parser *\nimap_parser_create(struct istream *input, "
                   "struct ostream *output,\n\t\t   size_t max_line_size,\n"
                   "\t\t   const struct imap_parser_params *params);\n")
    assert _patch_for_installed_dovecot(src, new) == ["commands.c"]
    assert (src / "src" / "commands.c").read_text() == (
        "\tparser = imap_parser_create(input, NULL, (size_t)-1, NULL);\n")
    assert _patch_for_installed_dovecot(src, new) == []  # idempotent


def test_required_capabilities(tmp_path: Path) -> None:
    (tmp_path / "fetch").write_text("messages: 3\n\nok fetch 1 (uid)\n")
    (tmp_path / "move").write_text("capabilities: MOVE UIDPLUS\nmessages: 2\n\nok move 1 x\n")
    (tmp_path / "fetch.mbox").write_text("From x\n")
    (tmp_path / "broken").mkdir()
    assert required_capabilities(tmp_path) == {"fetch": [], "move": ["MOVE", "UIDPLUS"]}
