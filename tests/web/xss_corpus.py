"""Known XSS payloads for message HTML and header fields (OWASP's filter evasion cheat sheet,
html5sec.org's vectors, mutation XSS of the DOMPurify bypasses).  Each calls alert(), sets
window.__xss or fetches a URL, so a browser test can tell if one ever ran."""

from __future__ import annotations

HTML_PAYLOADS: tuple[str, ...] = (
    "<script>alert(1);window.__xss=1</script>",
    "<SCRIPT SRC=http://127.0.0.1:9/xss.js></SCRIPT>",
    "<img src=x onerror=\"alert(1);window.__xss=1\">",
    "<img src=x onerror=alert(1)//",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<svg><animate onbegin=alert(1) attributeName=x dur=1s>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\">",
    "<a href=\"javascript:alert(1)\">click</a>",
    "<a href=\"JaVaScRiPt:alert(1)\">click</a>",
    "<a href=\"&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)\">x</a>",
    "<a href=\"java\tscript:alert(1)\">tab</a>",
    "<a href=\" javascript:alert(1)\">space</a>",
    "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">data</a>",
    "<a href=\"vbscript:msgbox(1)\">vb</a>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "<iframe srcdoc=\"<script>alert(1)</script>\"></iframe>",
    "<object data=\"javascript:alert(1)\"></object>",
    "<embed src=\"javascript:alert(1)\">",
    "<form action=\"javascript:alert(1)\"><button>go</button></form>",
    "<body onload=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<input onfocus=alert(1) autofocus>",
    "<video><source onerror=alert(1)></video>",
    "<div style=\"width: expression(alert(1))\">ie</div>",
    "<div style=\"background-image: url(javascript:alert(1))\">bg</div>",
    "<div style=\"behavior: url(xss.htc)\">htc</div>",
    "<div style=\"-moz-binding: url(http://127.0.0.1:9/xss.xml#xss)\">moz</div>",
    "<div style=\"color: red; background: u\\72l(http://127.0.0.1:9/x)\">escaped</div>",
    "<style>@import 'http://127.0.0.1:9/xss.css';"
    " body{background:url(javascript:alert(1))}</style>",
    "<link rel=stylesheet href=\"http://127.0.0.1:9/xss.css\">",
    "<base href=\"javascript:alert(1)//\">",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">",
    "<img \"\"\"><script>alert(1)</script>\">",
    "<<script>script>alert(1)<</script>/script>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<IMG SRC=`javascript:alert(1)`>",
    "<img src=\"x` `<script>alert(1)</script>\"` `>",
    "<!--<img src=\"--><img src=x onerror=alert(1)//\">",
    "<table background=\"javascript:alert(1)\"><td>t</td></table>",
    "<xmp><img src=x onerror=alert(1)></xmp>",
    "<template><img src=x onerror=alert(1)></template>",
    "<textarea><img src=x onerror=alert(1)></textarea>",
)

# Header fields a message may carry (Subject, From's display name, a file name).
HEADER_PAYLOADS: tuple[str, ...] = (
    "<img src=x onerror=\"alert(1);window.__xss=1\">",
    "<svg onload=alert(1)>",
    "\"><script>alert(1)</script>",
    "javascript:alert(1)",
)
