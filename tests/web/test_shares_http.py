"""Files over HTTP against a real `netpost serve`: curl, http.client and httpx.

Shares are made with the `netpost share` command; the files are put straight into the users'
trees (DATA/files/<address>/), as FTP or SFTP uploads would leave them.
"""

from __future__ import annotations

import email
import hashlib
import http.client
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import httpx
import pytest

from tests.conftest import CONFIG, DOMAIN, Server, require_tool, start_server

ALICE = f"alice@{DOMAIN}"
BASE_URL = "https://files.example.test"
BIG = 200 * 1024 * 1024


@dataclass
class Site:
    server: Server
    port: int
    tree: Path  # alice's file tree
    folder: str  # token of /pub (a folder)
    file: str  # token of /report.pdf (a file)
    big_sha: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, method: str = "GET", headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            body = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, body
        finally:
            conn.close()

    def share(self, *args: str) -> str:
        r = self.server.cli("share", "add", *args)
        assert r.returncode == 0, r.stderr
        url = r.stdout.splitlines()[0]
        assert url.startswith(BASE_URL + "/s/")
        return url.rpartition("/s/")[2]


def _write_big(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(BIG // (4 << 20)):
            chunk = os.urandom(4 << 20)
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("web")
    srv = start_server(data, CONFIG + f'[web]\nbase_url = "{BASE_URL}"\n')
    try:
        assert srv.cli("domain", "add", DOMAIN).returncode == 0
        srv.add_user(ALICE)
        srv.add_user(f"bob@{DOMAIN}")
        tree = data / "files" / ALICE
        (tree / "pub" / "sub dir").mkdir(parents=True)
        (tree / "pub" / "a.txt").write_bytes(b"hello, world\n")
        (tree / "pub" / "<script>.txt").write_bytes(b"<script>alert(1)</script>\n")
        (tree / "pub" / "x&y \"q\".html").write_bytes(b"<html><script>alert(2)</script>")
        (tree / "pub" / "sub dir" / "data.bin").write_bytes(bytes(range(256)) * 40)
        (tree / "pub" / "empty").write_bytes(b"")
        (tree / "secret.txt").write_bytes(b"top secret\n")
        (tree / "report.pdf").write_bytes(b"%PDF-1.4 not really\n")
        os.symlink("../secret.txt", tree / "pub" / "link-up")  # inside the tree, not the share
        os.symlink("/etc/passwd", tree / "pub" / "link-out")  # outside the tree
        os.symlink("a.txt", tree / "pub" / "link-in")  # inside the share: followed
        big_sha = _write_big(tree / "pub" / "big.bin")
        s = Site(srv, srv.port("http"), tree, "", "", big_sha)
        s.folder = s.share(ALICE, "/pub")
        s.file = s.share(ALICE, "/report.pdf")
        yield s
    finally:
        srv.stop()


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([require_tool("curl"), "-sS", *args], capture_output=True, timeout=120)


def _status_of(r: subprocess.CompletedProcess[bytes]) -> int:
    return int(r.stdout.rsplit(b"\n", 1)[-1])


# --- files and folders -----------------------------------------------------------------------


def test_listed_at_start(site: Site) -> None:
    assert any(line.split()[:2] == ["listening", "http"] for line in site.server.output)


def test_get_a_file_with_curl(site: Site) -> None:
    r = _curl("-i", site.url(f"/s/{site.folder}/a.txt"))
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"hello, world\n"
    status, h, _ = site.get(f"/s/{site.folder}/a.txt")
    assert status == 200
    assert h["content-type"].startswith("text/plain")
    assert h["x-content-type-options"] == "nosniff"
    assert h["content-length"] == "13"
    assert h["accept-ranges"] == "bytes"
    assert h["content-disposition"].startswith('inline; filename="a.txt"')
    assert h["etag"].startswith('"') and h["last-modified"].endswith(" GMT")
    assert h["referrer-policy"] == "no-referrer"


def test_a_shared_file_and_downloads(site: Site) -> None:
    status, h, body = site.get(f"/s/{site.file}")
    assert status == 200 and body == b"%PDF-1.4 not really\n"
    assert h["content-type"] == "application/pdf"
    status, h, _ = site.get(f"/s/{site.file}?download")
    assert h["content-disposition"].startswith('attachment; filename="report.pdf"')
    # A shared file has no inside.
    assert site.get(f"/s/{site.file}/x")[0] == 404
    # HTML is never shown as a page of this site: an attachment, and sandboxed anyway.
    status, h, _ = site.get(f"/s/{site.folder}/x%26y%20%22q%22.html")
    assert status == 200
    assert h["content-disposition"].startswith("attachment;")
    assert "filename*=UTF-8''x%26y%20%22q%22.html" in h["content-disposition"]
    assert "sandbox" in h["content-security-policy"]


def test_listing_escapes_names(site: Site) -> None:
    status, h, body = site.get(f"/s/{site.folder}")
    assert status == 200 and h["content-type"].startswith("text/html")
    assert h["x-content-type-options"] == "nosniff"
    page = body.decode()
    assert "<script>" not in page
    assert "&lt;script&gt;.txt" in page
    assert f'href="/s/{site.folder}/%3Cscript%3E.txt"' in page
    assert "x&amp;y &quot;q&quot;.html" in page
    assert f'href="/s/{site.folder}/sub%20dir/"' in page
    assert "link-in" in page  # a link inside the share is listed
    assert "link-up" not in page and "link-out" not in page and "secret" not in page
    # A folder inside the share, with a link back up (absolute, within the share).
    status, _, body = site.get(f"/s/{site.folder}/sub%20dir/")
    assert status == 200
    assert f'href="/s/{site.folder}/sub%20dir/data.bin"' in body.decode()
    assert f'href="/s/{site.folder}/"' in body.decode()
    assert site.get(f"/s/{site.folder}/link-in")[2] == b"hello, world\n"


def test_head_has_no_body(site: Site) -> None:
    status, h, body = site.get(f"/s/{site.folder}/a.txt", method="HEAD")
    assert status == 200 and body == b"" and h["content-length"] == "13"
    status, h, body = site.get(f"/s/{site.folder}/big.bin", method="HEAD")
    assert status == 200 and body == b"" and h["content-length"] == str(BIG)
    r = _curl("-I", site.url(f"/s/{site.folder}/a.txt"))
    assert r.stdout.startswith(b"HTTP/1.1 200") and b"content-length: 13" in r.stdout
    assert r.stdout.endswith(b"\r\n\r\n")  # nothing after the head
    assert site.get(f"/s/{site.folder}/", method="HEAD")[2] == b""
    # Other methods are not allowed.
    assert site.get(f"/s/{site.folder}/a.txt", method="POST")[0] == 405
    assert site.get(f"/s/{site.folder}/a.txt", method="DELETE")[0] == 405


def test_empty_file(site: Site) -> None:
    status, h, body = site.get(f"/s/{site.folder}/empty")
    assert status == 200 and body == b"" and h["content-length"] == "0"
    assert site.get(f"/s/{site.folder}/empty", headers={"Range": "bytes=0-"})[0] == 416


# --- ranges ------------------------------------------------------------------------------------


def test_curl_ranges(site: Site) -> None:
    url = site.url(f"/s/{site.folder}/sub%20dir/data.bin")
    data = bytes(range(256)) * 40  # 10240 octets
    r = _curl("-r", "0-99", "-D", "-", "-o", "/dev/null", url)
    assert r.stdout.startswith(b"HTTP/1.1 206")
    assert b"content-range: bytes 0-99/10240" in r.stdout
    assert _curl("-r", "0-99", url).stdout == data[:100]
    assert _curl("-r", "-500", url).stdout == data[-500:]
    assert _curl("-r", "500-", url).stdout == data[500:]
    assert _curl("-r", "10000-20000", url).stdout == data[10000:]
    r = _curl("-r", "20000-", "-D", "-", "-o", "/dev/null", url)
    assert r.stdout.startswith(b"HTTP/1.1 416")
    assert b"content-range: bytes */10240" in r.stdout


def test_invalid_range_is_ignored(site: Site) -> None:
    path = f"/s/{site.folder}/sub%20dir/data.bin"
    for field in ("bytes=50-10", "bytes=x-y", "items=0-1"):
        status, h, body = site.get(path, headers={"Range": field})
        assert status == 200 and len(body) == 10240, field


def test_multiple_ranges_multipart(site: Site) -> None:
    """Several ranges: 206 multipart/byteranges (RFC 9110 14.6), coalesced and in order."""
    path = f"/s/{site.folder}/sub%20dir/data.bin"
    data = bytes(range(256)) * 40
    status, h, body = site.get(path, headers={"Range": "bytes=20-29,0-9,5-12,-4"})
    assert status == 206
    assert h["content-type"].startswith("multipart/byteranges; boundary=")
    assert int(h["content-length"]) == len(body)
    msg: Message = email.message_from_bytes(
        f"Content-Type: {h['content-type']}\r\n\r\n".encode() + body)
    parts = msg.get_payload()
    assert isinstance(parts, list)
    got = [(p["content-range"], p.get_payload(decode=True)) for p in parts]
    assert got == [("bytes 0-12/10240", data[0:13]), ("bytes 20-29/10240", data[20:30]),
                   ("bytes 10236-10239/10240", data[-4:])]
    assert all(p["content-type"] == "application/octet-stream" for p in parts)
    # curl asks for several ranges too.
    r = _curl("-r", "0-1,100-101", "-D", "-", site.url(path))
    assert b"multipart/byteranges" in r.stdout


def test_httpx_streams_a_range(site: Site) -> None:
    with httpx.Client() as client:
        url = site.url(f"/s/{site.folder}/big.bin")
        with client.stream("GET", url, headers={"Range": "bytes=1000-1048575"}) as r:
            assert r.status_code == 206
            assert r.headers["content-range"] == f"bytes 1000-1048575/{BIG}"
            total = sum(len(chunk) for chunk in r.iter_bytes())
        assert total == 1048576 - 1000


# --- conditional requests ----------------------------------------------------------------------


def test_etag_and_if_none_match(site: Site, tmp_path: Path) -> None:
    url = site.url(f"/s/{site.folder}/a.txt")
    etags = tmp_path / "etags"
    r = _curl("--etag-save", str(etags), "-o", "/dev/null", "-w", "\n%{http_code}", url)
    assert _status_of(r) == 200
    r = _curl("--etag-compare", str(etags), "-D", "-", "-o", "/dev/null", url)
    assert r.stdout.startswith(b"HTTP/1.1 304")
    status, h, _ = site.get(f"/s/{site.folder}/a.txt")
    status, h304, body = site.get(f"/s/{site.folder}/a.txt",
                                  headers={"If-None-Match": f'"nope", {h["etag"]}'})
    assert status == 304 and body == b"" and h304["etag"] == h["etag"]
    assert site.get(f"/s/{site.folder}/a.txt", headers={"If-None-Match": '"nope"'})[0] == 200
    # A stale If-Range: the whole file, not the range.
    status, _, body = site.get(f"/s/{site.folder}/a.txt",
                               headers={"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert status == 200 and body == b"hello, world\n"
    status, _, body = site.get(f"/s/{site.folder}/a.txt",
                               headers={"Range": "bytes=0-1", "If-Range": h["etag"]})
    assert status == 206 and body == b"he"
    assert site.get(f"/s/{site.folder}/a.txt", headers={"If-Match": '"nope"'})[0] == 412


def test_if_modified_since(site: Site) -> None:
    url = site.url(f"/s/{site.folder}/a.txt")
    r = _curl("-z", "Sat, 01 Jan 2000 00:00:00 GMT", "-w", "\n%{http_code}", url)
    assert _status_of(r) == 200
    status, h, _ = site.get(f"/s/{site.folder}/a.txt")
    r = _curl("-z", h["last-modified"], "-D", "-", "-o", "/dev/null", url)
    assert r.stdout.startswith(b"HTTP/1.1 304")
    # A file changed afterwards is sent again.
    path = site.tree / "pub" / "a.txt"
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 10))
    try:
        status, h2, _ = site.get(f"/s/{site.folder}/a.txt",
                                 headers={"If-Modified-Since": h["last-modified"]})
        assert status == 200 and h2["etag"] != h["etag"]
    finally:
        os.utime(path, (st.st_atime, st.st_mtime))


# --- the big download ----------------------------------------------------------------------


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_200_mib_download_streams(site: Site, tmp_path: Path) -> None:
    before = _vm_hwm(site.server.proc.pid)
    out = tmp_path / "big.bin"
    r = _curl("-o", str(out), "-w", "\n%{http_code}", site.url(f"/s/{site.folder}/big.bin"))
    assert _status_of(r) == 200
    digest = hashlib.sha256()
    with out.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert out.stat().st_size == BIG and digest.hexdigest() == site.big_sha
    # The server streamed it: its peak memory grew by far less than the file.
    assert _vm_hwm(site.server.proc.pid) - before < 64 * 1024 * 1024
    # A client that goes away mid-download costs the server nothing lasting.
    with httpx.Client() as client, \
            client.stream("GET", site.url(f"/s/{site.folder}/big.bin")) as resp:
        assert resp.status_code == 200
        next(resp.iter_bytes())
    assert site.get(f"/s/{site.folder}/a.txt")[0] == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if " (cut short)" in (site.server.data / "trace.log").read_text():
            break
        time.sleep(0.1)
    assert "S: 200 " in (site.server.data / "trace.log").read_text()
    assert " (cut short)" in (site.server.data / "trace.log").read_text()


# --- nothing unshared --------------------------------------------------------------------------


def test_traversal_refused(site: Site) -> None:
    t = site.folder
    attempts = [
        f"/s/{t}/../secret.txt", f"/s/{t}/%2e%2e/secret.txt", f"/s/{t}/%2E%2E/secret.txt",
        f"/s/{t}/sub%20dir/../../secret.txt", f"/s/{t}/sub%20dir/%2e%2e/%2e%2e/secret.txt",
        f"/s/{t}/..%2fsecret.txt", f"/s/{t}/a.txt%00", f"/s/{t}/%00", f"/s/{t}/link-up",
        f"/s/{t}/link-out", f"/s/{t}/./a.txt", f"/s/{t}/%2e/a.txt", f"/s/{t}/..",
        f"/s/{site.file}/../secret.txt", f"/s/{site.file}/%2e%2e/secret.txt",
        f"/s/{t}/.netpost-upload.x", f"/s/{t}/a.txt%0d%0aX-Injected:%201",
        "/s/", "/s", "/secret.txt", f"/{ALICE}/secret.txt",
    ]
    for path in attempts:
        status, h, body = site.get(path)
        assert status == 404, path
        assert b"secret" not in body and b"root:" not in body, path
    status, h, body = site.get("/")  # the web UI's page (web/ui), nothing of a tree
    assert status == 200 and b"<title>netpost</title>" in body and b"secret" not in body
    r = _curl("--path-as-is", "-w", "\n%{http_code}", site.url(f"/s/{t}/../secret.txt"))
    assert _status_of(r) == 404 and b"top secret" not in r.stdout
    # Also on a raw socket, so that no client tidies the path first.
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as sock:
        sock.sendall(f"GET /s/{t}/sub%20dir/../../secret.txt HTTP/1.1\r\nHost: x\r\n"
                     "Connection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 404") and b"top secret" not in reply


def test_unknown_removed_and_expired_tokens(site: Site) -> None:
    unknown = site.get("/s/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert unknown[0] == 404
    assert site.get("/s/short")[0] == 404
    assert site.get("/s/" + "A" * 32 + "/a.txt")[2] == unknown[2]
    token = site.share(ALICE, "/pub/a.txt")
    assert site.get(f"/s/{token}")[2] == b"hello, world\n"
    r = site.server.cli("share", "remove", token)
    assert r.returncode == 0, r.stderr
    removed = site.get(f"/s/{token}")
    assert removed[0] == 404 and removed[2] == unknown[2]  # no hint that it existed
    token = site.share(ALICE, "/pub/a.txt", "--expires", "0.00002")  # 1.7 s
    assert site.get(f"/s/{token}")[0] == 200
    time.sleep(2)
    status, _, body = site.get(f"/s/{token}")
    assert status == 410 and b"hello" not in body
    assert site.get(f"/s/{token}/x")[0] == 410


def test_trace_shortens_tokens(site: Site) -> None:
    site.get(f"/s/{site.folder}/a.txt", headers={"Range": "bytes=0-3"})
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = (site.server.data / "trace.log").read_text()
        if f"C: GET /s/{site.folder[:6]}…/a.txt  Range: bytes=0-3" in text:
            break
        time.sleep(0.05)
    assert f"C: GET /s/{site.folder[:6]}…/a.txt  Range: bytes=0-3" in text
    assert "S: 206 4" in text
    assert site.folder not in text
    assert " http#" in text and "*: connected" in text


# --- the CLI -----------------------------------------------------------------------------------


def test_share_cli(site: Site) -> None:
    cli = site.server.cli
    r = cli("share", "list", ALICE)
    assert r.returncode == 0
    assert f"{BASE_URL}/s/{site.folder}  {ALICE}  /pub  (no expiry)" in r.stdout
    (site.tree.parent / f"bob@{DOMAIN}").mkdir(exist_ok=True)
    token = site.share(f"bob@{DOMAIN}", "/")
    assert f"/s/{token}" in cli("share", "list").stdout
    assert token not in cli("share", "list", ALICE).stdout
    r = cli("share", "remove", f"{BASE_URL}/s/{token}")  # the URL works as well
    assert r.returncode == 0 and token in r.stdout
    errors = {
        ("share", "add", f"carol@{DOMAIN}", "/pub"): f"no user carol@{DOMAIN}",
        ("share", "add", "not an address", "/pub"): "is not a valid user",
        ("share", "add", ALICE, "/nope"): f"{ALICE} has no file or folder /nope",
        ("share", "add", ALICE, "../../etc/passwd"): "has no file or folder",
        ("share", "add", ALICE, "/pub/bad\x01name"): "cannot share",
        ("share", "add", ALICE): "share add needs USER and PATH",
        ("share", "add", ALICE, "/pub", "--expires", "0"): "--expires",
        ("share", "remove", "nosuchtoken"): "no share nosuchtoken",
        ("share", "remove"): "share remove needs the TOKEN",
    }
    for args, message in errors.items():
        r = cli(*args)
        assert r.returncode == 1, args
        assert message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one clear line
        assert "Traceback" not in r.stderr


def test_share_url_without_base_url(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    data = tmp_path / "d"
    data.mkdir()
    (data / "netpost.toml").write_text('[server]\nhostname = "files.example.test"\n'
                                       '[listen]\nhttp = ":8080"\n')
    assert run_cli(data, "domain", "add", DOMAIN).returncode == 0
    assert run_cli(data, "user", "add", ALICE, "--password-stdin",
                   stdin="pw\n").returncode == 0
    r = run_cli(data, "share", "add", ALICE, "/")
    assert r.returncode == 1 and f"{ALICE} has no files yet" in r.stderr
    assert not (data / "files" / ALICE).exists()
    (data / "files" / ALICE).mkdir(parents=True)
    (data / "files" / ALICE / "f").write_bytes(b"x")
    r = run_cli(data, "share", "add", ALICE, "f", "--expires", "7")
    assert r.returncode == 0, r.stderr
    url, line = r.stdout.splitlines()
    assert url.startswith("http://files.example.test:8080/s/")
    assert len(url.rpartition("/s/")[2]) >= 32
    assert line.startswith(f"shares /f of {ALICE} until ")


# --- limits ------------------------------------------------------------------------------------


def test_connection_limits_and_idle_timeout(tmp_path: Path) -> None:
    config = CONFIG + "[limits]\nmax_connections_per_ip = 2\n[web]\nidle_timeout = 1.0\n"
    srv = start_server(tmp_path / "limits", config)
    try:
        port = srv.port("http")
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        time.sleep(0.2)
        third = socket.create_connection(("127.0.0.1", port), timeout=5)
        reply = third.recv(4096)
        assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply
        third.close()
        # The two silent connections are closed after the idle timeout; then a request works.
        for s in held:
            s.settimeout(5)
            assert s.recv(4096) == b""
            s.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/s/nothing-here-at-all-0000")
        assert conn.getresponse().status == 404
        conn.close()
        # A download in flight (a client that stopped reading) does not hold up SIGTERM.
        assert srv.cli("domain", "add", DOMAIN).returncode == 0
        srv.add_user(ALICE)
        (srv.data / "files" / ALICE).mkdir(parents=True)
        (srv.data / "files" / ALICE / "f.bin").write_bytes(os.urandom(32 << 20))
        r = srv.cli("share", "add", ALICE, "/f.bin")
        token = r.stdout.split()[0].rpartition("/s/")[2]
        stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET /s/{token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert stalled.recv(12) == b"HTTP/1.1 200"
        time.sleep(0.5)
        started = time.monotonic()
        assert srv.stop(timeout=30) == 0
        assert time.monotonic() - started < 15
        stalled.close()
    finally:
        assert srv.stop() == 0


def test_parallel_range_requests(site: Site) -> None:
    """Download managers fetch pieces in parallel on several connections."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    path = site.tree / "pub" / "big.bin"
    rng = random.Random(8)
    pieces = [(start, start + rng.randrange(1, 3 << 20))
              for start in (rng.randrange(0, BIG - (3 << 20)) for _ in range(40))]

    def fetch(piece: tuple[int, int]) -> bool:
        first, last = piece
        status, h, body = site.get(f"/s/{site.folder}/big.bin",
                                   headers={"Range": f"bytes={first}-{last}"})
        with path.open("rb") as f:
            f.seek(first)
            want = f.read(last - first + 1)
        return status == 206 and h["content-range"] == f"bytes {first}-{last}/{BIG}" \
            and body == want

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(fetch, pieces))
