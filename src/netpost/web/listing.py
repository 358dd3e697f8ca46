"""The HTML listing of a shared folder: every name escaped, every link percent-encoded."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from urllib.parse import quote

from netpost.files.tree import Entry

LISTING_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "private, no-cache"),
)

_STYLE = ("body{font-family:sans-serif;margin:2em}td{padding:0 1em 0 0}"
          "td.size{text-align:right}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def render_listing(base: str, shown: str, entries: Sequence[Entry], *, parent: bool) -> str:
    """A page listing `entries` of the folder shown as `shown` ("/" = the shared folder
    itself); `base` is the folder's URL path, ending in "/" (links are absolute)."""
    title = html.escape(f"Index of {shown}")
    rows = []
    if parent:
        rows.append(f'<tr><td><a href="{html.escape(base.rstrip("/").rpartition("/")[0] + "/")}'
                    '">../</a></td><td></td><td></td></tr>')
    for e in sorted(entries, key=lambda e: (not e.is_dir, e.name)):
        name = e.name + ("/" if e.is_dir else "")
        href = html.escape(base + quote(e.name, safe="") + ("/" if e.is_dir else ""))
        size = "" if e.is_dir else _size(e.size)
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime))
        rows.append(f'<tr><td><a href="{href}">{html.escape(name)}</a></td>'
                    f'<td class="size">{size}</td><td>{when} UTC</td></tr>')
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title>"
            f"<style>{_STYLE}</style></head>\n<body><h1>{title}</h1>\n<table>\n"
            + "\n".join(rows) + "\n</table>\n</body></html>\n")
