"""Message HTML made safe to show: nh3 (the Rust `ammonia` sanitiser) with an allow-list,
and remote content (images, CSS `url(...)`) blocked unless the reader asks for it.

What comes out has no script, no event handler, no `javascript:`/`data:`/`vbscript:` URL, no
`<style>`, `<form>`, `<iframe>`, `<object>`, `<svg>` or `<math>`; `style` attributes keep only
harmless properties and never a `url(`, `expression(`, `@import` or CSS escape; links open in
a new window with `rel="noopener noreferrer"`.  With remote content blocked, `<img>` whose
source is http(s) loses its source (the count of what was blocked is returned so the page can
offer "show remote content").  The page that shows the result (web/ui) adds a sandboxed frame
and a Content-Security-Policy as two more layers; the sanitiser is the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nh3

TAGS = frozenset(nh3.ALLOWED_TAGS | {"font", "tfoot"}) - {"map", "area"}
ATTRIBUTES: dict[str, set[str]] = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "*": {"style", "title", "dir", "lang", "align"},
    "font": {"color", "size", "face"},
    "td": {"align", "rowspan", "colspan", "headers", "valign", "width", "bgcolor"},
    "th": {"align", "rowspan", "colspan", "headers", "scope", "valign", "width", "bgcolor"},
    "table": {"align", "summary", "width", "border", "cellpadding", "cellspacing", "bgcolor"},
}
# Properties a mail's inline style may keep (nh3 drops every other one).
STYLE_PROPERTIES = frozenset({
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "text-align", "text-decoration", "text-indent", "line-height",
    "letter-spacing", "white-space", "vertical-align", "margin", "margin-top",
    "margin-bottom", "margin-left", "margin-right", "padding", "padding-top",
    "padding-bottom", "padding-left", "padding-right", "border", "border-top",
    "border-bottom", "border-left", "border-right", "border-color", "border-style",
    "border-width", "border-collapse", "border-radius", "width", "max-width", "height",
    "display", "list-style-type",
})
# Things a style value may never hold: remote fetches, old IE script, escapes that hide them.
_BAD_STYLE = re.compile(r"url\s*\(|expression\s*\(|@import|javascript:|behaviou?r\s*:|"
                        r"-moz-binding|\\|/\*|image-set|image\s*\(", re.I)
URL_SCHEMES = frozenset({"http", "https", "mailto"})


@dataclass(frozen=True)
class Sanitised:
    html: str
    remote_blocked: int  # remote images and CSS fetches taken out


def _is_remote(url: str) -> bool:
    u = url.strip().lower()
    return u.startswith(("http:", "https:", "//"))


def sanitise(html: str, *, allow_remote: bool = False) -> Sanitised:
    """`html` (a message's text/html part) as safe HTML, remote content blocked by default."""
    blocked = 0

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        nonlocal blocked
        if attr == "style":
            if _BAD_STYLE.search(value):
                if "url" in value.lower() or "image" in value.lower():
                    blocked += 1
                return None
            return value
        if tag == "img" and attr == "src":
            if not _is_remote(value):
                return None  # cid:, data:, relative: nothing we can show safely
            if not allow_remote:
                blocked += 1
                return None
            return value
        if tag == "a" and attr == "href":
            return value if value.strip().lower().startswith(
                ("http:", "https:", "mailto:")) else None
        if attr in ("cite",) and not _is_remote(value):
            return None
        return value

    clean = nh3.clean(
        html,
        tags=set(TAGS),
        clean_content_tags={"script", "style", "title", "noscript", "template", "textarea",
                            "select", "option", "xmp", "iframe", "noembed", "noframes",
                            "plaintext", "object", "embed", "applet", "svg", "math"},
        attributes=ATTRIBUTES,
        attribute_filter=attribute_filter,
        url_schemes=set(URL_SCHEMES),
        strip_comments=True,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        filter_style_properties=set(STYLE_PROPERTIES),
    )
    return Sanitised(clean, blocked)
