#!/usr/bin/env python3
"""Web UI benchmark: the webmail's first page of a 100,000-message mailbox in a real browser.

usage: bench/webmail_first_page.py [--messages 100000] [--runs 30] [--port 12081] [--keep]
                                   [--prepare-only]

Setup: a snapshot of src/ (benchlib), a fresh data dir $BENCH_ROOT/netpost/webmail with
domain bench.test and user big1@bench.test; N messages (350-600 octets, 50 senders)
imported into INBOX with `netpost import` (the generator of bench/api_list.py); netpost
serving only the http listener on 127.0.0.1:--port.  Browser: headless Chromium driven by
Playwright (Debian's /usr/bin/chromium unless $NETPOST_CHROMIUM says otherwise).
Measure, for each run, in a new browser context (an empty cache: the page, script and
style sheet are fetched anew) logged in through POST /api/v1/login:
  interactive  from navigation start (performance.timeOrigin) to the moment the 50 rows of
               the newest page are in the list and the page answers a click
               (performance.now() in the page, after the click handler ran once)
  open         from a click on the newest message to its subject shown in the reader
  older        from a click on "Older" to the next 50 rows drawn
after 3 warm-up runs.  Target: the median of `interactive` <= 1000 ms.
Results: JSON lines and summary.md in $OUT (default $BENCH_ROOT/results/<time>-webmail/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402
from api_list import PASSWORD, USER, write_mbox  # noqa: E402

TARGET_MS = 1000.0

# Resolves when the newest page's 50 rows are drawn, then clicks the first row's
# neighbour-free spot (the list itself) to see the page answer input: the time is read in the
# click handler, so it includes any script work still queued before it.
WAIT_INTERACTIVE = """async () => {
  while (document.querySelectorAll('#messages li.row').length < 50) {
    await new Promise((r) => requestAnimationFrame(r));
  }
  const list = document.getElementById('messages');
  return await new Promise((resolve) => {
    list.addEventListener('pointerdown', () => resolve(performance.now()), { once: true });
    list.dispatchEvent(new PointerEvent('pointerdown', { bubbles: true }));
  });
}"""


def chromium() -> str | None:
    chosen = os.environ.get("NETPOST_CHROMIUM")
    if chosen:
        return chosen
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_cli(server: B.NetpostServer, *args: str) -> str:
    cmd, env = B.netpost_cmd()
    return subprocess.run([*cmd, "--data", str(server.data), *args], text=True, check=True,
                          capture_output=True, timeout=3600, env=env).stdout


def summarise(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"median_ms": round(s[len(s) // 2], 1), "p95_ms": round(s[int(len(s) * 0.95)], 1),
            "min_ms": round(s[0], 1), "max_ms": round(s[-1], 1), "n": len(s)}


def main() -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--port", type=int, default=12081)
    ap.add_argument("--keep", action="store_true", help="keep the data dir for a re-run")
    ap.add_argument("--prepare-only", action="store_true", help="fill the mailbox and stop "
                    "(then measure with --keep when the machine is quiet)")
    a = ap.parse_args()
    out = B.results_dir("webmail")
    info = B.snapshot_src()
    data = B.BENCH_ROOT / "netpost" / "webmail"
    server = B.NetpostServer(data, allow_plaintext=True)
    marker = data / f".filled-{a.messages}"
    if not (a.keep and marker.exists()):
        server.create("bench.test", {USER: PASSWORD})
        mbox = data.parent / "webmail.mbox"
        B.note(f"writing {a.messages} messages to {mbox}")
        write_mbox(mbox, a.messages)
        t = time.monotonic()
        run_cli(server, "import", str(mbox), "--user", USER, "--mailbox", "INBOX",
                "--format", "mbox")
        B.note(f"imported in {time.monotonic() - t:.1f} s")
        mbox.unlink()
        marker.write_text("")
    if a.prepare_only:
        return 0
    port = B.free_port(a.port)
    server.serve({"http": port})
    base = f"http://{B.LOCALHOST}:{port}"
    times: dict[str, list[float]] = {"interactive": [], "open": [], "older": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        versions = {**B.versions(), **info, "chromium": browser.version,
                    "playwright": _playwright_version()}
        B.append_jsonl(out / "versions.jsonl", versions)
        cpu0 = server.cpu()
        for run in range(a.runs + 3):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            r = context.request.post(base + "/api/v1/login", data={
                "address": USER, "password": PASSWORD})
            if r.status != 200:
                raise SystemExit(f"login: {r.status} {r.text()[:200]}")
            page = context.new_page()
            page.goto(base + "/#/mail", wait_until="commit")
            interactive = float(page.evaluate(WAIT_INTERACTIVE))
            total = page.locator("#msglist .pager span").inner_text()
            if f"{a.messages} messages" not in total:
                raise SystemExit(f"the list says {total!r}, not {a.messages} messages")
            t = time.perf_counter()
            page.locator("#messages li.row").first.click()
            page.wait_for_selector("#message-subject")
            opened = (time.perf_counter() - t) * 1000
            first_uid = page.locator("#messages li.row").first.get_attribute("data-uid")
            t = time.perf_counter()
            page.get_by_role("button", name="Older").click()
            page.wait_for_function(
                "(uid) => { const r = document.querySelectorAll('#messages li.row'); "
                "return r.length === 50 && r[0].dataset.uid !== uid }", arg=first_uid)
            older = (time.perf_counter() - t) * 1000
            context.close()
            if run >= 3:
                times["interactive"].append(interactive)
                times["open"].append(opened)
                times["older"].append(older)
        cpu = server.cpu() - cpu0
        browser.close()
    server.stop()
    rows = [["step", "median ms", "p95 ms", "min-max ms", "n"]]
    record: dict = {"messages": a.messages, "runs": a.runs,
                    "server_cpu_ms_per_run": round(cpu / (a.runs + 3) * 1000, 1)}
    for kind, values in times.items():
        s = summarise(values)
        record[kind] = s
        rows.append([kind, f"{s['median_ms']:.1f}", f"{s['p95_ms']:.1f}",
                     f"{s['min_ms']:.1f}-{s['max_ms']:.1f}", str(s["n"])])
    B.append_jsonl(out / "webmail.jsonl", record)
    met = record["interactive"]["median_ms"] <= TARGET_MS
    summary = (f"{B.table(rows)}\n\nserver CPU per run (page, assets, login, 3 lists, one "
               f"message): {record['server_cpu_ms_per_run']} ms\n"
               f"target: interactive median <= {TARGET_MS:.0f} ms: "
               f"{'met' if met else 'NOT met'}\n")
    (out / "summary.md").write_text(summary)
    print(summary)
    print(f"results: {out}")
    return 0 if met else 1


def _playwright_version() -> str:
    from importlib.metadata import version

    return version("playwright")


if __name__ == "__main__":
    sys.exit(main())
