"""The message HTML sanitiser (web/sanitize.py) against a corpus of known XSS payloads: what
comes out has no script, no event handler, no dangerous URL or CSS, and remote content only
when asked for."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from netpost.web.sanitize import TAGS, sanitise
from tests.web.xss_corpus import HTML_PAYLOADS


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def check_safe(html: str) -> None:
    parser = Collect()
    parser.feed(html)
    for tag, attrs in parser.tags:
        assert tag in TAGS, f"tag <{tag}> let through: {html!r}"
        assert tag not in ("script", "style", "svg", "math", "iframe", "object", "embed",
                           "form", "base", "meta", "link")
        for name, value in attrs:
            v = (value or "").strip().lower()
            assert not name.startswith("on"), f"event handler {name}: {html!r}"
            assert name not in ("srcdoc", "background", "formaction", "action")
            if name in ("href", "src", "cite"):
                assert v.startswith(("http:", "https:", "mailto:")), f"{name}={v!r}"
            if name == "style":
                for bad in ("url(", "expression", "javascript", "behavior", "binding",
                            "\\", "@import"):
                    assert bad not in v, f"style {v!r}"


@pytest.mark.parametrize("payload", HTML_PAYLOADS)
def test_payload_is_made_harmless(payload: str) -> None:
    check_safe(sanitise(payload).html)
    check_safe(sanitise(payload, allow_remote=True).html)
    check_safe(sanitise(f"<div><p>before</p>{payload}<p>after</p></div>").html)


def test_the_whole_corpus_at_once_and_text_survives() -> None:
    out = sanitise("<p>Dear reader,</p>" + "".join(HTML_PAYLOADS)).html
    check_safe(out)
    assert "Dear reader," in out


def test_ordinary_mail_html_keeps_its_look() -> None:
    html = ('<table width="100%" cellpadding="4"><tr><td style="color: #333; font-weight: bold">'
            'Hi</td></tr></table><a href="https://example.org/x">link</a><b>bold</b>')
    out = sanitise(html).html
    assert 'style="color:#333;font-weight:bold"' in out.replace(" ", "")
    assert '<a href="https://example.org/x" target="_blank" rel="noopener noreferrer">' in out
    assert "<b>bold</b>" in out and 'cellpadding="4"' in out


def test_remote_images_and_css_are_blocked_and_counted() -> None:
    html = ('<img src="https://tracker.example/p.gif" alt="pixel">'
            '<img src="//tracker.example/p2.gif">'
            '<div style="background: url(https://tracker.example/bg.png)">x</div>'
            '<img src="cid:logo@x">')
    blocked = sanitise(html)
    assert blocked.remote_blocked == 3
    assert "tracker.example" not in blocked.html and "cid:" not in blocked.html
    shown = sanitise(html, allow_remote=True)
    assert 'src="https://tracker.example/p.gif"' in shown.html
    assert "bg.png" not in shown.html  # CSS fetches stay out even then
