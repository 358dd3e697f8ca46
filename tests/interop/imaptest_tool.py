"""Dovecot's imaptest for the IMAP interop tests: built once, outside the repo, and driven here.

imaptest is not packaged in Debian; its source (branch release-2.3) is kept in
shared/tools/imaptest-release-2.3.tar.gz. `imaptest()` builds it against Debian's dovecot-dev
into a cache (default ~/.cache/netpost-tools/imaptest-release-2.3, root overridable with
NETPOST_TOOL_CACHE), once: a marker file records what was built, a file lock keeps two pytest
processes from building at the same time. The scratch build tree gets two small patches, one
for Debian 12's dovecot-dev (`_patch_for_installed_dovecot`) and one for a teardown bug in
checkpoint mode (`_patch_checkpoint_teardown`); nothing is written to the repo.

`run_scripted()` runs imaptest's scripted compliance tests (`test=DIR`, all 71 groups or one)
and parses the summary; `run_stress()` runs its stress/state-tracking mode; `write_mbox()` makes
the deterministic CRLF mbox that stress mode APPENDs from.

Both modes are destructive for the user they log in as: tests delete and recreate mailboxes.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

NAME = "imaptest-release-2.3"
TARBALL_ENV = "NETPOST_IMAPTEST_TARBALL"
CACHE_ENV = "NETPOST_TOOL_CACHE"
DOVECOT_CONFIG = Path("/usr/lib/dovecot/dovecot-config")  # from dovecot-dev
DOVECOT_INCLUDE = Path("/usr/include/dovecot")  # from dovecot-dev
DOVECOT_LIBDIR = Path("/usr/lib/dovecot")  # libdovecot.so.0, from dovecot-core
BUILD_PACKAGES = ("dovecot-dev build-essential autoconf automake libtool pkg-config "
                  "libssl-dev zlib1g-dev")
# Bump when the build recipe or the patch changes: a cache built by an older recipe is rebuilt.
RECIPE = 2
BUILD_TIMEOUT = 900.0

REPO = Path(__file__).resolve().parents[2]


def tarball() -> Path:
    """The imaptest source: $NETPOST_IMAPTEST_TARBALL, or shared/tools/ beside the repo."""
    if os.environ.get(TARBALL_ENV):
        return Path(os.environ[TARBALL_ENV])
    for shared in (REPO.parent / "shared", Path("/work/shared")):
        candidate = shared / "tools" / f"{NAME}.tar.gz"
        if candidate.is_file():
            return candidate
    pytest.fail(f"imaptest source {NAME}.tar.gz not found in shared/tools beside the repo; "
                f"set {TARBALL_ENV} to its path")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "netpost-tools")


def missing_build_deps() -> list[str]:
    """What the build needs and this machine lacks (empty when it can build)."""
    missing = []
    if not DOVECOT_CONFIG.is_file() or not (DOVECOT_INCLUDE / "imap-parser.h").is_file():
        missing.append(f"dovecot-dev ({DOVECOT_CONFIG}, {DOVECOT_INCLUDE}/)")
    if not (DOVECOT_LIBDIR / "libdovecot.so.0").exists():
        missing.append(f"dovecot-core ({DOVECOT_LIBDIR}/libdovecot.so.0)")
    for tool, package in (("autoreconf", "autoconf"), ("automake", "automake"),
                          ("libtoolize", "libtool"), ("make", "build-essential"),
                          ("cc", "build-essential")):
        if shutil.which(tool) is None:
            missing.append(f"{package} ({tool})")
    return missing


def _dovecot_version() -> str:
    """The installed libdovecot's version: the cached binary is linked against it."""
    exe = shutil.which("dovecot") or "/usr/sbin/dovecot"
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except OSError:
        return "unknown"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _patch_for_installed_dovecot(src: Path, header: Path = DOVECOT_INCLUDE / "imap-parser.h"
                                 ) -> list[str]:
    """Debian 12's dovecot-dev (2.3.19.1+dfsg1-2.1+deb12u*) carries the backported fix that
    gave imap_parser_create() a fourth argument, `const struct imap_parser_params *params`;
    release-2.3 imaptest still calls it with three ("too few arguments to function
    'imap_parser_create'"). Pass NULL (no list-count limit) when the installed header wants it.
    Returns the files patched."""
    if not re.search(r"imap_parser_create\s*\([^;]*imap_parser_params",
                     header.read_text(errors="replace")):
        return []
    patched = []
    call = re.compile(r"imap_parser_create\(([^;()]*), \(size_t\)-1\);")
    for path in sorted((src / "src").glob("*.c")):
        text = path.read_text()
        new = call.sub(r"imap_parser_create(\1, (size_t)-1, NULL);", text)
        if new != text:
            path.write_text(new)
            patched.append(path.name)
    return patched


CHECKPOINT_LOOP = ("\t\tif (array_count(&client->commands) == 0 &&\n"
                   "\t\t    client->client.state != STATE_BANNER) {")


def _patch_checkpoint_teardown(src: Path) -> None:
    """imaptest 2.3's checkpoint mode panics at the end of a run ("client_update_plan: assertion
    failed: (client->plan_size == 0)"), against Dovecot as well as netpost. When the run ends,
    each client's next planned command is replaced by LOGOUT but the rest of its plan is kept;
    a client whose LOGOUT has completed (BYE: not authenticated any more) stays in the client
    list until a zero-length timer frees it, and a checkpoint that finishes in between hands it
    new commands from that stale plan. The checkpoint's resume loop must skip clients that have
    logged out or been disconnected: they will never send another command."""
    path = src / "src" / "checkpoint.c"
    text = path.read_text()
    if text.count(CHECKPOINT_LOOP) != 1:
        pytest.fail(f"imaptest source changed: the checkpoint resume loop is not in {path}; "
                    "update _patch_checkpoint_teardown")
    path.write_text(text.replace(CHECKPOINT_LOOP, CHECKPOINT_LOOP.removesuffix(") {") + " &&\n"
                                 "\t\t    !client->client.logout_sent &&\n"
                                 "\t\t    !client->client.disconnected) {"))


def _build(dest: Path, source: Path) -> None:
    """Unpack, patch, configure and make in a scratch tree; install bin/ and tests/ to dest."""
    root = dest.parent
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-build-", dir=root) as tmp:
        scratch = Path(tmp)
        log = scratch / "build.log"
        subprocess.run(["tar", "-xzf", str(source), "-C", str(scratch)], check=True)
        (src,) = [p for p in scratch.iterdir() if p.is_dir()]
        patched = _patch_for_installed_dovecot(src)
        _patch_checkpoint_teardown(src)
        # libdovecot.so lives in /usr/lib/dovecot, off the loader's path: link with an rpath.
        env = dict(os.environ, LDFLAGS=f"-Wl,-rpath,{DOVECOT_LIBDIR}", LC_ALL="C")
        steps = [["./autogen.sh"],
                 ["./configure", f"--with-dovecot={DOVECOT_CONFIG.parent}"],
                 ["make", f"-j{os.cpu_count() or 2}"]]
        with open(log, "w") as out:
            out.write(f"patched for installed dovecot-dev: {patched}; checkpoint.c: "
                      "resume loop skips logged-out clients\n")
            for step in steps:
                out.write(f"$ {' '.join(step)}\n")
                out.flush()
                r = subprocess.run(step, cwd=src, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   timeout=BUILD_TIMEOUT)
                if r.returncode != 0:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                    pytest.fail(f"building imaptest failed at '{' '.join(step)}' "
                                f"(rc {r.returncode}):\n{tail}")
        staged = scratch / "install"
        (staged / "bin").mkdir(parents=True)
        shutil.copy2(src / "src" / "imaptest", staged / "bin" / "imaptest")
        shutil.copytree(src / "src" / "tests", staged / "tests")
        for extra in ("profile.conf", "pop3-profile.conf"):
            if (src / extra).is_file():
                shutil.copy2(src / extra, staged / extra)
        shutil.copy2(log, staged / "build.log")
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)


@cache
def imaptest() -> tuple[Path, Path]:
    """(imaptest binary, scripted tests directory), building them first if needed.

    Fails the calling test, naming the packages to install, when the build deps are missing."""
    source = tarball()
    dest = cache_root() / NAME
    binary, tests = dest / "bin" / "imaptest", dest / "tests"
    marker = dest / ".built"
    want = json.dumps({"tarball_sha256": _sha256(source), "dovecot": _dovecot_version(),
                       "recipe": RECIPE}, sort_keys=True)
    with _locked(cache_root() / f"{NAME}.lock"):
        if not (marker.is_file() and marker.read_text() == want and binary.is_file()):
            missing = missing_build_deps()
            if missing:
                pytest.fail("imaptest cannot be built here, missing: " + ", ".join(missing)
                            + f"\n  install: apt-get install {BUILD_PACKAGES}"
                            + "\n  (scripts/install-test-deps.sh does this when run as root)")
            _build(dest, source)
            marker.write_text(want)
    return binary, tests


# --- scripted compliance tests ---------------------------------------------------------------

@dataclass
class ScriptedResult:
    """What `imaptest test=DIR` reported. Counts are None when the summary is missing
    (imaptest died: rc 89 is its fatal/config error, e.g. it could not connect or log in)."""

    rc: int
    command: list[str]
    output: str
    groups: int | None = None
    groups_failed: int | None = None
    groups_skipped: int | None = None
    base_failed: int | None = None
    base_total: int | None = None
    ext_failed: int | None = None
    ext_total: int | None = None
    failed_tests: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # each failure's block of output
    errors: list[str] = field(default_factory=list)  # "Error: ..." / "Fatal: ..." lines

    @property
    def ok(self) -> bool:
        """Every group ran to its end and none failed (imaptest's rc 0: 2 means failures)."""
        return self.rc == 0 and self.groups is not None and self.groups_failed == 0

    def report(self, max_failures: int = 20) -> str:
        """A readable account for an assertion message: summary, failed tests, first failures."""
        lines = [f"imaptest rc={self.rc}: {self.groups} groups, {self.groups_failed} failed, "
                 f"{self.groups_skipped} skipped; base {self.base_failed}/{self.base_total} "
                 f"commands failed, extensions {self.ext_failed}/{self.ext_total}",
                 f"failed tests: {' '.join(self.failed_tests) or '-'}",
                 f"command: {' '.join(self.command)}"]
        lines += self.errors[:max_failures]
        lines += self.failures[:max_failures]
        if len(self.failures) > max_failures:
            lines.append(f"... {len(self.failures) - max_failures} more failures")
        if self.groups is None:
            lines += ["--- output (tail)", *self.output.splitlines()[-30:]]
        return "\n".join(lines)


_SUMMARY = {
    ("groups", "groups_failed", "groups_skipped"):
        r"^(\d+) test groups: (\d+) failed, (\d+) skipped",
    ("base_failed", "base_total"): r"^base protocol: (\d+)/(\d+) individual commands failed",
    ("ext_failed", "ext_total"): r"^extensions: (\d+)/(\d+) individual commands failed",
}


def parse_scripted(output: str, rc: int, command: Sequence[str] = ()) -> ScriptedResult:
    result = ScriptedResult(rc=rc, command=list(command), output=output)
    for names, pattern in _SUMMARY.items():
        m = re.search(pattern, output, re.M)
        if m:
            for name, value in zip(names, m.groups(), strict=True):
                setattr(result, name, int(value))
    # "*** Test NAME command I/N (line L)\n - failed: ...\n ...\n - Command: ..." up to a
    # blank line; or "*** Test NAME initialization failed: ..." on one line.
    result.failures = [m.group(0).rstrip() for m in re.finditer(
        r"^\*\*\* Test \S+ (?:initialization failed:.*?$|command .*?(?=\n\s*\n|\n\*\*\* |\Z))",
        output, re.M | re.S)]
    result.errors = [line for line in output.splitlines() if line.startswith(("Error:", "Fatal:"))]
    result.failed_tests = sorted(set(re.findall(r"^\*\*\* Test (\S+)", output, re.M)))
    return result


def run_scripted(host: str, port: int, user: str, password: str, group: str | None = None, *,
                 tests_dir: Path | None = None, extra: Sequence[str] = (),
                 cwd: Path | None = None, timeout: float = 300) -> ScriptedResult:
    """Run the scripted tests (all groups, or one: group="fetch") as user; parse the summary.

    extra: more imaptest options, e.g. "rawlog" (protocol transcripts rawlog.* in cwd),
    "box=NAME", "ssl=any-cert". A run that overruns timeout comes back with rc -9 and the
    output so far."""
    binary, default_tests = imaptest()
    tests = tests_dir or default_tests
    target = tests / group if group else tests
    if group and not target.is_file():
        pytest.fail(f"no imaptest test group {group!r} in {tests}")
    cmd = [str(binary), f"host={host}", f"port={port}", f"user={user}", f"pass={password}",
           f"test={target}", *extra]
    try:
        r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout)
        rc, out = r.returncode, r.stdout
    except subprocess.TimeoutExpired as e:
        rc = -9
        out = (e.stdout or b"") + f"\n[timed out after {timeout:g} s]\n".encode()
    return parse_scripted(out.decode(errors="replace"), rc, cmd)


def required_capabilities(tests_dir: Path | None = None) -> dict[str, list[str]]:
    """Each test group and the capabilities it needs (its `capabilities:` header; empty for the
    IMAP4rev1 core groups). imaptest skips a group the server does not advertise all of."""
    tests = tests_dir or imaptest()[1]
    out: dict[str, list[str]] = {}
    for path in sorted(tests.iterdir()):
        if not path.is_file() or path.suffix == ".mbox":
            continue
        caps: list[str] = []
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                break  # the header ends at the first empty line
            key, _, value = line.partition(":")
            if key.strip().lower() == "capabilities":
                caps = value.split()
        out[path.name] = caps
    return out


# --- stress / state-tracking mode ------------------------------------------------------------

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "mu", "nu", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi",
         "psi", "omega")


def make_mbox(count: int = 500, seed: int = 1) -> bytes:
    """A deterministic mbox with CRLF line ends and unique Message-IDs (the same bytes as
    shared/peer-bench/gen_mbox.py for the same arguments, so results compare with the peers')."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        lines = [" ".join(rnd.choice(WORDS) for _ in range(12))
                 for _ in range(rnd.randint(3, 150))]
        sender = f"sender{i % 7}@example.com"
        out.append(
            f"From {sender} Mon Jan  1 00:00:00 2024\r\n"
            f"From: Sender {i % 7} <{sender}>\r\n"
            f"To: rcpt{i % 5}@example.com\r\n"
            f"Subject: bench message {i} {rnd.choice(WORDS)}\r\n"
            f"Date: Mon, 01 Jan 2024 {i // 60 % 24:02d}:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <bench-{seed}-{i}@example.com>\r\n"
            "\r\n" + "\r\n".join(lines) + "\r\n\r\n")
    return "".join(out).encode()


def write_mbox(path: Path, count: int = 500, seed: int = 1) -> Path:
    path.write_bytes(make_mbox(count, seed))
    return path


@dataclass
class StressResult:
    rc: int
    command: list[str]
    output: str
    totals: dict[str, int] = field(default_factory=dict)  # state name -> commands completed
    errors: list[str] = field(default_factory=list)  # imaptest's "Error: ..." lines

    @property
    def commands(self) -> int:
        return sum(self.totals.values())


def parse_stress(output: str, rc: int, command: Sequence[str] = ()) -> StressResult:
    lines = output.splitlines()
    result = StressResult(rc=rc, command=list(command), output=output,
                          errors=[line for line in lines if line.startswith("Error:")])
    if "Totals:" in lines:
        tail = lines[lines.index("Totals:") + 1:]
        numbers = [line.split() for line in tail[1:] if re.fullmatch(r"[\d\s]+", line.strip())
                   and line.strip()]
        if tail and numbers:
            result.totals = dict(zip(tail[0].split(), map(int, numbers[0]), strict=False))
    return result


def run_stress(host: str, port: int, user: str, password: str, mbox: Path, *,
               clients: int = 5, secs: int = 10, seed: int = 1, extra: Sequence[str] = (),
               cwd: Path | None = None) -> StressResult:
    """imaptest's stress mode: `clients` sessions for `secs` seconds, APPENDing from mbox.

    user may be a template ("u%d" with extra=["users=50"]); extra takes imaptest options such
    as "checkpoint=1", "error_quit", "no_pipelining", "-", "append=100,0".
    Against Dovecot 2.3.19 (the peer) the default mix with users=50 and "checkpoint=1" on one
    user give no "Error:" lines, but "own_flags" gives dozens ("STORE didn't return FETCH FLAGS"),
    so own_flags is no pass/fail gate."""
    binary, _ = imaptest()
    cmd = [str(binary), f"host={host}", f"port={port}", f"user={user}", f"pass={password}",
           f"mbox={mbox}", f"clients={clients}", f"secs={secs}", f"seed={seed}", *extra]
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, timeout=secs + 120)
    return parse_stress(r.stdout.decode(errors="replace"), r.returncode, cmd)


@functools.cache
def script_files() -> dict[str, bytes]:
    """The scripted tests and their mbox files (src/tests/*), read from the tarball: for the
    engine tests that play imaptest's expectations without a server."""
    import tarfile

    files: dict[str, bytes] = {}
    with tarfile.open(tarball()) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and parts[-3:-1] == ["src", "tests"]:
                extracted = tar.extractfile(member)
                if extracted is not None:
                    files[parts[-1]] = extracted.read()
    return files
