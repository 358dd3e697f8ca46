"""Real FTP clients against netpost's FTP and FTPS (issue 8's proof): lftp, curl and Python's
ftplib, plain (with `[auth] allow_plaintext`), explicit (AUTH TLS, PROT P) and implicit TLS,
passive and active, recursive mirrors, resumed transfers and byte-identical round trips up to
200 MiB, checked both on the client and in the account's tree on the server's disk.
"""

from __future__ import annotations

import contextlib
import ftplib
import functools
import hashlib
import io
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import CONFIG, PASSWORD, Server, client_tls, require_tool, start_server
from tests.interop.helpers import ALICE, BOB, CAROL, run, trace_tail
from tests.security import BASE_CONFIG, server_log, stop, template

pytestmark = pytest.mark.interop

HOST = "127.0.0.1"
MIB = 1024 * 1024
BIG = 200 * MIB
QUOTA = 100_000
PLAINTEXT_CONFIG = BASE_CONFIG.replace("[auth]\n", "[auth]\nallow_plaintext = true\n", 1)
assert PLAINTEXT_CONFIG != BASE_CONFIG and CONFIG in BASE_CONFIG


# --- servers ------------------------------------------------------------------------------------


def control_port() -> int:
    """A port P for the `ftp` listener, below the ephemeral range, with P - 1 free as well.

    Active-mode data connections come from P - 1 (`active_port = L-1`, the default, like 20
    beside 21).  With an ephemeral P, P - 1 is a port the kernel hands to clients' connect(),
    and on a busy machine one of them in TIME_WAIT holds it for a minute: every active
    transfer would then fail (425, address in use), as it never does on 10021 or 21.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(max(2000, low - 12000), low)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((HOST, port))
                b.bind((HOST, port - 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free FTP control port below the ephemeral range")


def _launch(factory: pytest.TempPathFactory, name: str, config: str) -> Iterator[Server]:
    """A server for the module; at the end it must stop promptly and have logged no error."""
    data = factory.mktemp(name) / "data"
    shutil.copytree(template(factory.getbasetemp()), data)
    for attempt in range(3):
        try:
            srv = start_server(data, config, ports={"ftp": control_port()})
            break
        except RuntimeError:  # the port was taken meanwhile
            if attempt == 2:
                raise
    yield srv
    started = time.monotonic()
    stop(srv)
    log = server_log(srv)
    assert time.monotonic() - started < 10, f"{name}: slow to stop\n{log[-3000:]}"
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The defaults: no login before AUTH TLS, PROT P required, TLS session reuse required."""
    yield from _launch(tmp_path_factory, "ftp-tls", BASE_CONFIG)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`[auth] allow_plaintext = true`: plain FTP logins work."""
    yield from _launch(tmp_path_factory, "ftp-plain", PLAINTEXT_CONFIG)


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _launch(tmp_path_factory, "ftp-quota",
                       PLAINTEXT_CONFIG + f"[ftp]\nquota = {QUOTA}\n")


def on_disk(server: Server, user: str, path: str = "") -> Path:
    """Where `path` of `user`'s tree is on the server's disk."""
    return server.data / "files" / user.lower() / path.lstrip("/")


# --- comparing files ----------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """Streaming: never the whole file in memory."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """relative path → sha256 for files, "dir" for directories (upload temporaries skipped)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for d in dirnames:
            out[str((base / d).relative_to(root))] = "dir"
        for f in filenames:
            out[str((base / f).relative_to(root))] = sha256_of(base / f)
    return out


def same_file(a: Path, b: Path) -> None:
    assert a.stat().st_size == b.stat().st_size, (a, b)
    assert sha256_of(a) == sha256_of(b), (a, b)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """200 MiB of random bytes and their sha256, written in chunks."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    h = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(BIG // (8 * MIB)):
            chunk = os.urandom(8 * MIB)
            h.update(chunk)
            f.write(chunk)
    return path, h.hexdigest()


# --- lftp ---------------------------------------------------------------------------------------


def lftp(server: Server, cwd: Path, commands: list[str], *, user: str = ALICE,
         listener: str = "ftp", scheme: str = "ftp", settings: tuple[str, ...] = (),
         expect: int = 0, timeout: float = 120) -> str:
    """Run lftp commands against the server (fails on the first failed command)."""
    url = f"{scheme}://{HOST}:{server.port(listener)}"
    script = ["set cmd:fail-exit true", "set net:max-retries 1", "set net:timeout 20",
              "set net:reconnect-interval-base 1", "set xfer:clobber true",
              "set cmd:interactive false", *settings,
              f'open -u "{user},{PASSWORD}" {url}', *commands]
    r = run(server, [require_tool("lftp"), "-c", "; ".join(script)], cwd, expect=expect,
            timeout=timeout)
    return r.stdout.decode("utf-8", "replace") + r.stderr.decode("utf-8", "replace")


PLAIN = ("set ftp:ssl-allow no",)
EXPLICIT_TLS = ("set ftp:ssl-force true", "set ftp:ssl-protect-data true",
                "set ssl:verify-certificate no")
IMPLICIT_TLS = ("set ftp:ssl-protect-data true", "set ssl:verify-certificate no")
ACTIVE = ("set ftp:passive-mode no",)


def lq(text: str) -> str:
    """A name quoted for lftp's command line."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- curl ---------------------------------------------------------------------------------------


def curl(server: Server, cwd: Path, *args: str, user: str = ALICE, expect: int = 0) -> bytes:
    cmd = [require_tool("curl"), "-sS", "--max-time", "120", "--user", f"{user}:{PASSWORD}",
           *args]
    return run(server, cmd, cwd, expect=expect, timeout=150).stdout


@functools.cache
def curl_version() -> tuple[int, int]:
    out = subprocess.run([require_tool("curl"), "--version"], capture_output=True, text=True,
                         check=True).stdout
    m = re.match(r"curl (\d+)\.(\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def url(server: Server, path: str = "", *, scheme: str = "ftp", listener: str = "ftp") -> str:
    return f"{scheme}://{HOST}:{server.port(listener)}/{quote(path)}"


# --- ftplib -------------------------------------------------------------------------------------


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session (the known
    recipe for vsftpd's require_ssl_reuse; stock FTP_TLS makes a new session each time)."""

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            assert isinstance(self.sock, ssl.SSLSocket)
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


@contextlib.contextmanager
def ftp_plain(server: Server, user: str = ALICE) -> Iterator[ftplib.FTP]:
    ftp = ftplib.FTP(timeout=30)
    ftp.connect(HOST, server.port("ftp"))
    try:
        ftp.login(user, PASSWORD)
        yield ftp
        ftp.quit()
    finally:
        ftp.close()


@contextlib.contextmanager
def ftp_tls(server: Server, user: str = ALICE,
            cls: type[ftplib.FTP_TLS] = ReusingFTP_TLS) -> Iterator[ftplib.FTP_TLS]:
    ftp = cls(context=client_tls(), timeout=30)
    ftp.connect(HOST, server.port("ftp"))
    try:
        ftp.login(user, PASSWORD)  # AUTH TLS first
        ftp.prot_p()
        yield ftp
        ftp.quit()
    finally:
        ftp.close()


def put(ftp: ftplib.FTP, name: str, data: bytes) -> str:
    return ftp.storbinary(f"STOR {name}", io.BytesIO(data))


def get(ftp: ftplib.FTP, name: str, rest: int | None = None) -> bytes:
    out = bytearray()
    ftp.retrbinary(f"RETR {name}", out.extend, rest=rest)
    return bytes(out)


def refused(ftp: ftplib.FTP, action: Callable[[], Any]) -> str:
    """Run a transfer the server is expected to refuse; its final (4xx or 5xx) reply.  The
    data connection may break under the client first, then the reply waits on the control
    one."""
    try:
        action()
    except (ftplib.error_perm, ftplib.error_temp) as exc:
        return str(exc)
    except (OSError, EOFError):
        try:
            ftp.getresp()
        except (ftplib.error_perm, ftplib.error_temp) as exc:
            return str(exc)
        raise AssertionError("the server's reply after a broken transfer was not an "
                             "error") from None
    raise AssertionError("the server did not refuse the transfer")


# ================================================================================================
# lftp
# ================================================================================================


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_lftp_plain(plain_server: Server, tmp_path: Path, mode: str) -> None:
    data = os.urandom(300_000)
    (tmp_path / "up.bin").write_bytes(data)
    settings = PLAIN + (ACTIVE if mode == "active" else ())
    name = f"lftp-{mode}.bin"
    out = lftp(plain_server, tmp_path, [f"put up.bin -o {name}", "cls -1",
                                        f"get {name} -o down.bin"], settings=settings)
    assert name in out.split()
    assert (tmp_path / "down.bin").read_bytes() == data
    assert on_disk(plain_server, ALICE, name).read_bytes() == data
    lftp(plain_server, tmp_path, [f"rm {name}"], settings=settings)
    assert not on_disk(plain_server, ALICE, name).exists()


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_lftp_explicit_ftps_prot_p(tls_server: Server, tmp_path: Path, mode: str) -> None:
    data = os.urandom(500_000)
    (tmp_path / "up.bin").write_bytes(data)
    settings = EXPLICIT_TLS + (ACTIVE if mode == "active" else ())
    name = f"lftp-tls-{mode}.bin"
    out = lftp(tls_server, tmp_path, [f"put up.bin -o {name}", "cls -1",
                                      f"get {name} -o down.bin"], settings=settings)
    assert name in out.split()
    assert (tmp_path / "down.bin").read_bytes() == data
    assert on_disk(tls_server, ALICE, name).read_bytes() == data


def test_lftp_without_tls_is_refused_before_login(tls_server: Server, tmp_path: Path) -> None:
    out = lftp(tls_server, tmp_path, ["cls -1"], settings=PLAIN, expect=1)
    assert re.search(r"\b5\d\d\b", out), out


def test_lftp_implicit_ftps(tls_server: Server, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    (tmp_path / "up.bin").write_bytes(data)
    out = lftp(tls_server, tmp_path, ["put up.bin -o lftp-implicit.bin", "cls -1",
                                      "get lftp-implicit.bin -o down.bin"],
               listener="ftps", scheme="ftps", settings=IMPLICIT_TLS)
    assert "lftp-implicit.bin" in out.split()
    assert (tmp_path / "down.bin").read_bytes() == data
    assert on_disk(tls_server, ALICE, "lftp-implicit.bin").read_bytes() == data


def make_tree(root: Path) -> None:
    """Nested directories, names with spaces and UTF-8, an empty file and an empty directory."""
    (root / "dir with spaces" / "nested" / "deeper").mkdir(parents=True)
    (root / "日本語").mkdir()
    (root / "empty dir").mkdir()
    (root / "top.txt").write_bytes(b"top level\n")
    (root / "dir with spaces" / "inner file.txt").write_bytes(b"line one\r\nline two\n")
    (root / "dir with spaces" / "nested" / "deeper" / "résumé 2026.txt").write_bytes(
        "résumé\n".encode() * 1000)
    (root / "dir with spaces" / "nested" / "empty.dat").write_bytes(b"")
    (root / "日本語" / "日本語.bin").write_bytes(os.urandom(700_000))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "explicit-tls"])
def test_lftp_mirror_round_trip(plain_server: Server, tls_server: Server, tmp_path: Path,
                                tls: bool) -> None:
    server = tls_server if tls else plain_server
    settings = EXPLICIT_TLS if tls else PLAIN
    local = tmp_path / "local"
    make_tree(local)
    # Up with four transfers at a time (each its own data connection); back over LIST, or
    # over MLSD in the TLS variant.
    lftp(server, tmp_path, ["mirror -R --parallel=4 local mirrored",
                            f"set ftp:use-mlsd {'true' if tls else 'false'}",
                            "mirror mirrored back"], user=BOB, settings=settings)
    want = tree_digest(local)
    assert len(want) == 10
    assert tree_digest(tmp_path / "back") == want
    assert tree_digest(on_disk(server, BOB, "mirrored")) == want


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "explicit-tls"])
def test_lftp_resume(plain_server: Server, tls_server: Server, tmp_path: Path,
                     tls: bool) -> None:
    server = tls_server if tls else plain_server
    settings = EXPLICIT_TLS if tls else PLAIN
    data = os.urandom(3 * MIB + 12345)
    full = tmp_path / "full.bin"
    full.write_bytes(data)
    remote = on_disk(server, CAROL)
    remote.mkdir(parents=True, exist_ok=True)

    # get -c: the local file has the first part; lftp fetches the rest (REST + RETR).
    (remote / "get-c.bin").write_bytes(data)
    (tmp_path / "partial.bin").write_bytes(data[:MIB + 7])
    lftp(server, tmp_path, ["get -c get-c.bin -o partial.bin"], user=CAROL, settings=settings)
    assert (tmp_path / "partial.bin").read_bytes() == data
    assert "RETR get-c.bin" in trace_tail(server, 400)
    assert f"REST {MIB + 7}" in trace_tail(server, 400)

    # put -c and reput: the server has the first part; lftp sends the rest (REST + STOR).
    for command, name, cut in (("put -c full.bin -o", "put-c.bin", 999_999),
                               ("reput full.bin -o", "reput.bin", 2 * MIB + 1)):
        (remote / name).write_bytes(data[:cut])
        lftp(server, tmp_path, [f"{command} {name}"], user=CAROL, settings=settings)
        assert (remote / name).read_bytes() == data, command
        assert f"REST {cut}" in trace_tail(server, 400), command

    # pget: one file in four segments over four connections at once (REST + RETR + ABOR each).
    lftp(server, tmp_path, ["pget -n 4 get-c.bin -o pget.bin"], user=CAROL, settings=settings)
    assert (tmp_path / "pget.bin").read_bytes() == data


# ================================================================================================
# curl
# ================================================================================================


def test_curl_list_nlst_stor_retr(plain_server: Server, tmp_path: Path) -> None:
    data = os.urandom(123_457)
    (tmp_path / "up.bin").write_bytes(data)
    curl(plain_server, tmp_path, "--ftp-create-dirs", "-T", "up.bin",
         url(plain_server, "curl/stored.bin"))
    assert on_disk(plain_server, ALICE, "curl/stored.bin").read_bytes() == data
    listing = curl(plain_server, tmp_path, url(plain_server, "curl/")).decode()
    assert re.search(r"^-\S+ .* 123457 .* stored\.bin\r?$", listing, re.M), listing
    names = curl(plain_server, tmp_path, "-l", url(plain_server, "curl/")).decode()
    assert names.split() == ["stored.bin"]
    curl(plain_server, tmp_path, "-o", "down.bin", url(plain_server, "curl/stored.bin"))
    assert (tmp_path / "down.bin").read_bytes() == data


def test_curl_active(plain_server: Server, tmp_path: Path) -> None:
    data = os.urandom(400_000)
    (tmp_path / "up.bin").write_bytes(data)
    curl(plain_server, tmp_path, "--ftp-port", HOST, "-T", "up.bin",
         url(plain_server, "curl-active.bin"))
    curl(plain_server, tmp_path, "--ftp-port", HOST, "-o", "down.bin",
         url(plain_server, "curl-active.bin"))
    assert (tmp_path / "down.bin").read_bytes() == data
    names = curl(plain_server, tmp_path, "--ftp-port", HOST, "-l", url(plain_server)).decode()
    assert "curl-active.bin" in names.split()
    trace = trace_tail(plain_server, 200)
    assert "EPRT |1|127.0.0.1|" in trace or "PORT 127,0,0,1," in trace


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_curl_explicit_ftps(tls_server: Server, tmp_path: Path, mode: str) -> None:
    data = os.urandom(600_000)
    (tmp_path / "up.bin").write_bytes(data)
    extra = ["--ssl-reqd", "-k", *(["--ftp-port", HOST] if mode == "active" else [])]
    name = f"curl-tls-{mode}.bin"
    if mode == "active" and (7, 87) <= curl_version() < (8, 0):
        # curl 7.87.0 to 7.88.x (Debian 12 has 7.88.1) forget TLS on active-mode data
        # connections (curl issue #10666, fixed in 8.0.0 by PR #10669) and send the file in
        # the clear after PROT P: the server must refuse that, store nothing and say 425.
        r = run(tls_server, [require_tool("curl"), "-sS", "--max-time", "60", "--user",
                             f"{ALICE}:{PASSWORD}", *extra, "-T", "up.bin",
                             url(tls_server, name)], tmp_path, expect=None)
        assert r.returncode != 0
        assert not on_disk(tls_server, ALICE, name).exists()
        assert re.search(r"S: 425 .*TLS handshake failed", trace_tail(tls_server, 20))
        return
    curl(tls_server, tmp_path, *extra, "-T", "up.bin", url(tls_server, name))
    assert on_disk(tls_server, ALICE, name).read_bytes() == data
    curl(tls_server, tmp_path, *extra, "-o", "down.bin", url(tls_server, name))
    assert (tmp_path / "down.bin").read_bytes() == data
    names = curl(tls_server, tmp_path, *extra, "--disable-epsv", "-l", url(tls_server)).decode()
    assert name in names.split()


def test_curl_without_tls_is_refused(tls_server: Server, tmp_path: Path) -> None:
    curl(tls_server, tmp_path, "-l", url(tls_server), expect=67)  # login denied


def test_curl_implicit_ftps(tls_server: Server, tmp_path: Path) -> None:
    data = os.urandom(250_000)
    (tmp_path / "up.bin").write_bytes(data)
    implicit = {"scheme": "ftps", "listener": "ftps"}
    curl(tls_server, tmp_path, "-k", "-T", "up.bin",
         url(tls_server, "curl-implicit.bin", **implicit))
    curl(tls_server, tmp_path, "-k", "-o", "down.bin",
         url(tls_server, "curl-implicit.bin", **implicit))
    assert (tmp_path / "down.bin").read_bytes() == data
    names = curl(tls_server, tmp_path, "-k", "-l", url(tls_server, **implicit)).decode()
    assert "curl-implicit.bin" in names.split()


def test_curl_mlsd(plain_server: Server, tmp_path: Path) -> None:
    home = on_disk(plain_server, BOB, "mlsd")
    home.mkdir(parents=True, exist_ok=True)
    (home / "f one.txt").write_bytes(b"12345")
    (home / "sub").mkdir(exist_ok=True)
    out = curl(plain_server, tmp_path, "-X", "MLSD", url(plain_server, "mlsd/"),
               user=BOB).decode()
    facts = {}
    for line in out.splitlines():
        text, _, name = line.partition(" ")
        facts[name] = {k.lower(): v for k, _, v in
                       (f.partition("=") for f in text.rstrip(";").split(";"))}
    assert facts["f one.txt"]["type"] == "file" and facts["f one.txt"]["size"] == "5"
    assert facts["sub"]["type"] == "dir"
    assert re.fullmatch(r"\d{14}(\.\d+)?", facts["f one.txt"]["modify"])


def test_curl_quote_commands(plain_server: Server, tmp_path: Path) -> None:
    curl(plain_server, tmp_path, "-Q", "MKD quoted dir", "-l", url(plain_server), user=BOB)
    assert on_disk(plain_server, BOB, "quoted dir").is_dir()
    curl(plain_server, tmp_path, "-Q", "RMD quoted dir", "-l", url(plain_server), user=BOB)
    assert not on_disk(plain_server, BOB, "quoted dir").exists()
    (tmp_path / "x.txt").write_bytes(b"x")
    curl(plain_server, tmp_path, "-T", "x.txt", url(plain_server, "to delete.txt"), user=BOB)
    assert on_disk(plain_server, BOB, "to delete.txt").exists()
    # A post-quote ("-" prefix) after the listing.
    names = curl(plain_server, tmp_path, "-Q", "-DELE to delete.txt", "-l", url(plain_server),
                 user=BOB).decode()
    assert "to delete.txt" in names.splitlines()
    assert not on_disk(plain_server, BOB, "to delete.txt").exists()
    # A refused quote command fails curl (21: quote error).
    curl(plain_server, tmp_path, "-Q", "RMD no such dir", "-l", url(plain_server), user=BOB,
         expect=21)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "explicit-tls"])
def test_curl_resume(plain_server: Server, tls_server: Server, tmp_path: Path,
                     tls: bool) -> None:
    server = tls_server if tls else plain_server
    extra = ["--ssl-reqd", "-k"] if tls else []
    data = os.urandom(2 * MIB + 3)
    remote = on_disk(server, CAROL)
    remote.mkdir(parents=True, exist_ok=True)
    # Download: -C - continues after what the local file has (REST + RETR).
    (remote / "curl-c.bin").write_bytes(data)
    (tmp_path / "partial.bin").write_bytes(data[:777_777])
    curl(server, tmp_path, *extra, "-C", "-", "-o", "partial.bin",
         url(server, "curl-c.bin"), user=CAROL)
    assert (tmp_path / "partial.bin").read_bytes() == data
    assert "REST 777777" in trace_tail(server, 200)
    # Upload: -C - asks SIZE and appends the rest (APPE).
    (tmp_path / "full.bin").write_bytes(data)
    (remote / "curl-up-c.bin").write_bytes(data[:1_000_001])
    curl(server, tmp_path, *extra, "-C", "-", "-T", "full.bin",
         url(server, "curl-up-c.bin"), user=CAROL)
    assert (remote / "curl-up-c.bin").read_bytes() == data


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "implicit-tls"])
def test_curl_ranges_and_head(plain_server: Server, tls_server: Server, tmp_path: Path,
                              tls: bool) -> None:
    """-r reads a part (REST, then ABOR once it has enough); -I asks MDTM and SIZE."""
    server = tls_server if tls else plain_server
    where = {"scheme": "ftps", "listener": "ftps"} if tls else {}
    extra = ["-k"] if tls else []
    data = os.urandom(3 * MIB)
    on_disk(server, CAROL).mkdir(parents=True, exist_ok=True)
    on_disk(server, CAROL, "ranges.bin").write_bytes(data)
    for first, last in ((0, 99), (1000, 1999), (2 * MIB, 2 * MIB + 65535)):
        out = curl(server, tmp_path, *extra, "-r", f"{first}-{last}",
                   url(server, "ranges.bin", **where), user=CAROL)
        assert out == data[first:last + 1], (first, last)
    head = curl(server, tmp_path, *extra, "-I", url(server, "ranges.bin", **where),
                user=CAROL).decode()
    assert f"Content-Length: {3 * MIB}" in head, head
    mtime = on_disk(server, CAROL, "ranges.bin").stat().st_mtime
    assert "Last-Modified: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                             time.gmtime(mtime)) in head, head
    # The session is still good after the aborts: the whole file.
    assert curl(server, tmp_path, *extra, url(server, "ranges.bin", **where),
                user=CAROL) == data


# ================================================================================================
# Python ftplib
# ================================================================================================


def test_ftplib_plain_with_allow_plaintext(plain_server: Server) -> None:
    with ftp_plain(plain_server, BOB) as ftp:
        assert ftp.pwd() == "/"
        ftp.mkd("ftplib")
        ftp.cwd("ftplib")
        put(ftp, "a.bin", b"abc" * 1000)
        assert ftp.nlst() == ["a.bin"]
        lines: list[str] = []
        ftp.retrlines("LIST", lines.append)
        assert len(lines) == 1 and lines[0].endswith(" a.bin") and " 3000 " in lines[0]
        assert get(ftp, "a.bin") == b"abc" * 1000
        ftp.set_pasv(False)  # active: PORT
        assert get(ftp, "a.bin") == b"abc" * 1000
        # The data connection comes from the control port minus one (active_port = L-1).
        with ftp.transfercmd("NLST") as conn:
            assert conn.getpeername()[1] == plain_server.port("ftp") - 1
            assert conn.recv(100) == b"a.bin\r\n"
        ftp.voidresp()
        assert list(ftp.mlsd()) and dict(ftp.mlsd())["a.bin"]["size"] == "3000"
        ftp.delete("a.bin")
        ftp.cwd("/")
        ftp.rmd("ftplib")
    assert not on_disk(plain_server, BOB, "ftplib").exists()


def test_ftplib_plain_login_refused_without_tls(tls_server: Server) -> None:
    ftp = ftplib.FTP(timeout=30)
    ftp.connect(HOST, tls_server.port("ftp"))
    try:
        with pytest.raises(ftplib.error_perm):
            ftp.login(ALICE, PASSWORD)
    finally:
        ftp.close()


def test_ftplib_tls_without_session_reuse_gets_522(tls_server: Server) -> None:
    """Stock FTP_TLS makes a new TLS session on each data connection: with require_tls_reuse
    (the default) the server refuses it, 522, and the control connection stays usable."""
    on_disk(tls_server, ALICE, "stock.bin").parent.mkdir(parents=True, exist_ok=True)
    on_disk(tls_server, ALICE, "stock.bin").write_bytes(b"stock")
    with ftp_tls(tls_server, cls=ftplib.FTP_TLS) as ftp:
        reply = refused(ftp, lambda: get(ftp, "stock.bin"))
        assert reply.startswith("522"), reply
        reply = refused(ftp, lambda: ftp.nlst())
        assert reply.startswith("522"), reply
        reply = refused(ftp, lambda: put(ftp, "stock-up.bin", b"x" * 100_000))
        assert reply.startswith("522"), reply
        assert ftp.voidcmd("NOOP").startswith("200")
    assert not on_disk(tls_server, ALICE, "stock-up.bin").exists()


def test_ftplib_tls_with_session_reuse(tls_server: Server) -> None:
    data = os.urandom(MIB)
    with ftp_tls(tls_server, BOB) as ftp:
        assert put(ftp, "reuse.bin", data).startswith("226")
        assert get(ftp, "reuse.bin") == data
        assert "reuse.bin" in ftp.nlst()
        ftp.set_pasv(False)
        assert get(ftp, "reuse.bin") == data
    assert on_disk(tls_server, BOB, "reuse.bin").read_bytes() == data


ROUND_TRIP_FILES = [("empty.bin", 0), ("one.bin", 1), ("one-mib.bin", MIB),
                    ("résumé 2026.txt", 5000), ("日本語.bin", 70_000),
                    ("with  two spaces .bin", 10)]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "explicit-tls"])
def test_ftplib_round_trips(plain_server: Server, tls_server: Server, tls: bool) -> None:
    server = tls_server if tls else plain_server
    session = ftp_tls(server, CAROL) if tls else ftp_plain(server, CAROL)
    with session as ftp:
        ftp.mkd("rt")
        ftp.cwd("rt")
        for name, size in ROUND_TRIP_FILES:
            data = os.urandom(size)
            put(ftp, name, data)
            assert get(ftp, name) == data, name
            assert ftp.size(name) == size
            assert on_disk(server, CAROL, f"rt/{name}").read_bytes() == data, name
        assert sorted(ftp.nlst()) == sorted(n for n, _ in ROUND_TRIP_FILES)
        assert {n for n, _ in ftp.mlsd()} == {n for n, _ in ROUND_TRIP_FILES}


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "explicit-tls"])
def test_curl_round_trips(plain_server: Server, tls_server: Server, tmp_path: Path,
                          tls: bool) -> None:
    server = tls_server if tls else plain_server
    extra = ["--ssl-reqd", "-k"] if tls else []
    for i, (name, size) in enumerate(ROUND_TRIP_FILES):
        data = os.urandom(size)
        src = tmp_path / f"src-{i}"
        src.write_bytes(data)
        curl(server, tmp_path, *extra, "--ftp-create-dirs", "-T", src.name,
             url(server, f"curl-rt/{name}"), user=BOB)
        assert on_disk(server, BOB, f"curl-rt/{name}").read_bytes() == data, name
        dst = tmp_path / f"dst-{i}"
        curl(server, tmp_path, *extra, "-o", dst.name, url(server, f"curl-rt/{name}"),
             user=BOB)
        assert dst.exists() or size == 0, name  # curl may skip writing an empty download
        assert (dst.read_bytes() if dst.exists() else b"") == data, name


def test_ftplib_stou_appe_rest(plain_server: Server) -> None:
    with ftp_plain(plain_server, ALICE) as ftp:
        ftp.mkd("ops")
        ftp.cwd("ops")
        # STOU: the server picks the name and says it, both in the 150 and in the 226.
        reply = ftp.storbinary("STOU", io.BytesIO(b"unique one"))
        m = re.search(r"stored as (\S+)", reply)
        assert reply.startswith("226") and m, reply
        stored = m.group(1)
        assert get(ftp, stored) == b"unique one"
        reply = ftp.storbinary("STOU", io.BytesIO(b"unique two"))
        second = re.search(r"stored as (\S+)", reply)
        assert second and second.group(1) != stored
        assert get(ftp, second.group(1)) == b"unique two"
        # APPE: onto an existing file, and creating a new one.
        put(ftp, "log.txt", b"first\n")
        ftp.storbinary("APPE log.txt", io.BytesIO(b"second\n"))
        ftp.storbinary("APPE new.txt", io.BytesIO(b"created\n"))
        assert get(ftp, "log.txt") == b"first\nsecond\n"
        assert get(ftp, "new.txt") == b"created\n"
        # REST + RETR: from an offset; REST + STOR: rewrite from an offset.
        data = os.urandom(100_000)
        put(ftp, "rest.bin", data)
        assert get(ftp, "rest.bin", rest=12_345) == data[12_345:]
        assert get(ftp, "rest.bin", rest=100_000) == b""
        ftp.storbinary("STOR rest.bin", io.BytesIO(b"TAIL"), rest=50_000)
        assert get(ftp, "rest.bin") == data[:50_000] + b"TAIL"
        with pytest.raises(ftplib.error_perm, match="^55"):
            get(ftp, "rest.bin", rest=10**9)  # beyond the end


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "explicit-tls"])
def test_ftplib_abort_then_carry_on(plain_server: Server, tls_server: Server,
                                    tls: bool) -> None:
    server = tls_server if tls else plain_server
    data = os.urandom(20 * MIB)
    on_disk(server, BOB).mkdir(parents=True, exist_ok=True)
    on_disk(server, BOB, "abort.bin").write_bytes(data)
    session = ftp_tls(server, BOB) if tls else ftp_plain(server, BOB)
    with session as ftp:
        conn = ftp.transfercmd("RETR abort.bin")
        assert conn.recv(1000)
        # ABOR: 426 for the aborted transfer, then 226 for the ABOR (RFC 959 4.1.3); ftplib
        # reads the first one only.  Without TLS, ftplib sends ABOR as TCP urgent data.
        assert ftp.abort().startswith("426")
        assert ftp.getresp().startswith("226")
        conn.close()
        assert ftp.voidcmd("NOOP").startswith("200")
        assert get(ftp, "abort.bin") == data


def test_telnet_synch_abort(plain_server: Server) -> None:
    """BSD ftp/tnftp's abort (no such client is packaged here, so its bytes): IAC IP, then
    IAC DM as TCP urgent data (the Telnet Synch, RFC 959 4.1.3 and RFC 854), then ABOR."""
    data = os.urandom(20 * MIB)
    on_disk(plain_server, BOB).mkdir(parents=True, exist_ok=True)
    on_disk(plain_server, BOB, "synch.bin").write_bytes(data)
    with ftp_plain(plain_server, BOB) as ftp:
        conn = ftp.transfercmd("RETR synch.bin")
        assert conn.recv(1000)
        ftp.sock.sendall(b"\xff\xf4")  # IAC IP
        ftp.sock.sendall(b"\xff\xf2", socket.MSG_OOB)  # IAC DM, urgent
        ftp.sock.sendall(b"ABOR\r\n")
        assert ftp.getmultiline().startswith("426")
        assert ftp.getresp().startswith("226")
        conn.close()
        assert get(ftp, "synch.bin") == data


def test_ftplib_type_a_converts_line_ends(plain_server: Server) -> None:
    with ftp_plain(plain_server, BOB) as ftp:
        # Upload in TYPE A: CRLF on the wire becomes LF on disk.
        ftp.voidcmd("TYPE A")
        conn = ftp.transfercmd("STOR ascii.txt")
        conn.sendall(b"one\r\ntwo\r\n\r\nlast line\r\nbare\rcr\r\n")
        conn.close()
        ftp.voidresp()
        assert on_disk(plain_server, BOB, "ascii.txt").read_bytes() == (
            b"one\ntwo\n\nlast line\nbare\rcr\n")
        # Download in TYPE A: LF on disk goes out as CRLF.
        on_disk(plain_server, BOB, "unix.txt").write_bytes(b"a\nb\n\nc\r\nd\n")
        ftp.voidcmd("TYPE A")
        conn = ftp.transfercmd("RETR unix.txt")
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
        conn.close()
        ftp.voidresp()
        assert got == b"a\r\nb\r\n\r\nc\r\nd\r\n"
        # ftplib's own line API (TYPE A both ways).
        ftp.storlines("STOR lines.txt", io.BytesIO(b"x\ny\r\nz\n"))
        assert on_disk(plain_server, BOB, "lines.txt").read_bytes() == b"x\ny\nz\n"
        lines: list[str] = []
        ftp.retrlines("RETR lines.txt", lines.append)
        assert lines == ["x", "y", "z"]
        # Binary leaves the bytes alone; SIZE is refused in TYPE A (it would mean a read).
        ftp.voidcmd("TYPE I")
        assert get(ftp, "ascii.txt") == b"one\ntwo\n\nlast line\nbare\rcr\n"
        ftp.voidcmd("TYPE A")
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.sendcmd("SIZE ascii.txt")


def test_ftplib_size_mdtm_rename(plain_server: Server) -> None:
    with ftp_plain(plain_server, CAROL) as ftp:
        put(ftp, "sized.bin", b"z" * 4321)
        assert ftp.size("sized.bin") == 4321
        mtime = int(on_disk(plain_server, CAROL, "sized.bin").stat().st_mtime)
        reply = ftp.sendcmd("MDTM sized.bin")
        assert reply == "213 " + time.strftime("%Y%m%d%H%M%S", time.gmtime(mtime))
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.size("no such file")
        ftp.mkd("moved here")
        ftp.rename("sized.bin", "moved here/renamed é.bin")
        assert not on_disk(plain_server, CAROL, "sized.bin").exists()
        assert on_disk(plain_server, CAROL, "moved here/renamed é.bin").stat().st_size == 4321
        assert ftp.size("/moved here/renamed é.bin") == 4321
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.rename("no such file", "x")
        with pytest.raises(ftplib.error_perm, match="^503"):
            ftp.sendcmd("RNTO lonely")


def test_ftplib_quota_552(quota_server: Server) -> None:
    with ftp_plain(quota_server, ALICE) as ftp:
        put(ftp, "fits.bin", os.urandom(60_000))
        reply = refused(ftp, lambda: put(ftp, "too-big.bin", os.urandom(50_000)))
        assert reply.startswith("552"), reply
        assert not on_disk(quota_server, ALICE, "too-big.bin").exists()
        reply = refused(ftp, lambda: ftp.storbinary("APPE fits.bin",
                                                    io.BytesIO(os.urandom(50_000))))
        assert reply.startswith("552"), reply
        # Overwriting in place may use the space the old file frees; deleting frees it.
        put(ftp, "fits.bin", os.urandom(90_000))
        ftp.delete("fits.bin")
        put(ftp, "now-fits.bin", os.urandom(90_000))
        assert ftp.voidcmd("NOOP").startswith("200")


def test_full_disk_is_452_and_leaves_nothing(plain_server: Server) -> None:
    # RFC 959 4.2: 452 "insufficient storage space in system" when the disk itself is full
    # (552 is the account's allocation, above).  CAROL's tree is a 1 MiB tmpfs here.
    if os.geteuid() != 0:
        raise RuntimeError("this test mounts a small tmpfs: run the suite as root (CI does)")
    tree = on_disk(plain_server, CAROL)
    tree.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "netpost-full", str(tree)],
                   check=True)
    try:
        with ftp_plain(plain_server, CAROL) as ftp:
            reply = refused(ftp, lambda: put(ftp, "big.bin", os.urandom(3_000_000)))
            assert reply.startswith("452"), reply
            assert [p.name for p in tree.iterdir()] == []  # no half file, no temporary
            assert put(ftp, "small.bin", b"fits").startswith("226")
        assert (tree / "small.bin").read_bytes() == b"fits"
    finally:
        subprocess.run(["umount", "-l", str(tree)], check=False)


# ================================================================================================
# 200 MiB round trips
# ================================================================================================


def test_big_file_curl_plain(plain_server: Server, big_file: tuple[Path, str],
                             tmp_path: Path) -> None:
    path, digest = big_file
    curl(plain_server, path.parent, "-T", path.name, url(plain_server, "big plain.bin"),
         user=CAROL)
    assert sha256_of(on_disk(plain_server, CAROL, "big plain.bin")) == digest
    curl(plain_server, tmp_path, "-o", "down.bin", url(plain_server, "big plain.bin"),
         user=CAROL)
    assert (tmp_path / "down.bin").stat().st_size == BIG
    assert sha256_of(tmp_path / "down.bin") == digest
    (tmp_path / "down.bin").unlink()
    on_disk(plain_server, CAROL, "big plain.bin").unlink()


def test_big_file_lftp_ftps(tls_server: Server, big_file: tuple[Path, str],
                            tmp_path: Path) -> None:
    path, digest = big_file
    lftp(tls_server, tmp_path, [f"put {lq(str(path))} -o {lq('big tls.bin')}",
                                f"get {lq('big tls.bin')} -o down.bin"],
         user=CAROL, settings=EXPLICIT_TLS)
    assert sha256_of(on_disk(tls_server, CAROL, "big tls.bin")) == digest
    assert (tmp_path / "down.bin").stat().st_size == BIG
    assert sha256_of(tmp_path / "down.bin") == digest
    (tmp_path / "down.bin").unlink()
    on_disk(tls_server, CAROL, "big tls.bin").unlink()


@pytest.fixture(scope="module")
def lenient_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`[ftp] require_close_notify = false`: a protected upload may end with a bare FIN."""
    yield from _launch(tmp_path_factory, "ftp-lenient",
                       BASE_CONFIG + "[ftp]\nrequire_close_notify = false\n")


def _upload_cut_without_close_notify(server: Server, name: str, data: bytes) -> str:
    """STOR over PROT P whose data connection is closed under TLS (no close_notify)."""
    with ftp_tls(server, BOB) as ftp:
        ftp.voidcmd("TYPE I")
        conn = ftp.transfercmd(f"STOR {name}")
        conn.sendall(data)
        raw = socket.socket(fileno=os.dup(conn.fileno()))
        raw.shutdown(socket.SHUT_WR)  # a bare FIN where the TLS close_notify belongs
        reply = ftp.getmultiline()
        raw.close()
        conn.close()
        return reply


@pytest.mark.parametrize("strict", [True, False])
def test_protected_upload_cut_without_close_notify(tls_server: Server,
                                                   lenient_tls_server: Server,
                                                   strict: bool) -> None:
    # RFC 4217 12.6: by default an upload that ends without close_notify may be truncated:
    # 426, and nothing under the name; require_close_notify = false takes the bare FIN.
    server = tls_server if strict else lenient_tls_server
    data = os.urandom(300_000)
    on_disk(server, BOB).mkdir(parents=True, exist_ok=True)
    reply = _upload_cut_without_close_notify(server, "cut.bin", data)
    target = on_disk(server, BOB, "cut.bin")
    if strict:
        assert reply.startswith("426"), reply
        assert not target.exists()
    else:
        assert reply.startswith("226"), reply
        assert target.read_bytes() == data
    # Either way the session goes on: a proper upload works.
    with ftp_tls(server, BOB) as ftp:
        assert put(ftp, "after.bin", b"whole").startswith("226")
    assert on_disk(server, BOB, "after.bin").read_bytes() == b"whole"
