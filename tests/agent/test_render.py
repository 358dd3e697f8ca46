"""The pure parts: rendering (HTML made into text, attachments), composing, UID sets,
IMAP response parsing, modified UTF-7."""

from __future__ import annotations

from email.message import EmailMessage

from netpost.agent.compose import Attachment, new_message, recipients, reply
from netpost.agent.imap import decode_utf7, encode_utf7, parse_fetch, parse_list_line, uid_set
from netpost.agent.render import attachments, parse, render


def test_html_only_message_is_shown_as_text() -> None:
    msg = EmailMessage()
    msg["Subject"] = "newsletter"
    msg.set_content("<html><head><style>p {color: red}</style><title>T</title></head><body>"
                    "<h1>Big&nbsp;news</h1><p>Read <a href='https://example.org/x'>this</a>"
                    " now.</p><ul><li>one</li><li>two</li></ul><script>alert(1)</script>"
                    "<pre>  kept\n  as is</pre></body></html>", subtype="html")
    shown = render(parse(msg.as_bytes()))
    assert "Big\xa0news" in shown or "Big news" in shown
    assert "Read this <https://example.org/x> now." in shown
    assert "* one\n* two" in shown
    assert "alert" not in shown and "color" not in shown
    assert "  kept\n  as is" in shown


def test_plain_preferred_over_html_and_attachments_numbered() -> None:
    msg = new_message(from_="a@example.org", to=["b@example.org"], subject="s",
                      body="plain words", attachments=[
                          Attachment("x.bin", b"\x00\x01", "application/octet-stream"),
                          Attachment("../../etc/passwd", b"root", "text/plain")])
    msg.get_body(("plain",)).add_alternative("<p>html words</p>", subtype="html")
    parsed = parse(msg.as_bytes())
    shown = render(parsed)
    assert "plain words" in shown and "html words" not in shown
    parts = attachments(parsed)
    assert [(p.number, p.content_type, p.size) for p in parts] == [
        (1, "application/octet-stream", 2), (2, "text/plain", 4)]


def test_reply_all_leaves_me_out_and_threads() -> None:
    original = parse(b"From: Ann <ann@example.org>\r\nTo: me@example.org, Bo <bo@example.org>"
                     b"\r\nCc: cy@example.org, ME@example.org\r\nSubject: Re: plans\r\n"
                     b"Message-ID: <2@example.org>\r\nReferences: <1@example.org>\r\n\r\nhi\r\n")
    r = reply(original, me="me@example.org", from_="me@example.org", body="ok",
              quoted_text="hi", to_all=True)
    assert r["To"] == "Ann <ann@example.org>"
    assert r["Cc"] == "Bo <bo@example.org>, cy@example.org"
    assert r["Subject"] == "Re: plans"
    assert r["References"] == "<1@example.org> <2@example.org>"
    assert r["In-Reply-To"] == "<2@example.org>"
    assert recipients(r) == ["ann@example.org", "bo@example.org", "cy@example.org"]


def test_uid_sets_utf7_and_imap_answers() -> None:
    assert uid_set([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"
    assert encode_utf7("Entwürfe & Co") == "Entw&APw-rfe &- Co"
    assert decode_utf7("Entw&APw-rfe &- Co") == "Entwürfe & Co"
    folder = parse_list_line(b'(\\HasNoChildren \\Sent) "/" "Sent Items"')
    assert folder is not None and folder.name == "Sent Items" and "\\Sent" in folder.attributes
    got = list(parse_fetch([
        (b"3 (UID 12 FLAGS (\\Seen) RFC822.SIZE 99 BODY[HEADER.FIELDS (SUBJECT)] {10}",
         b"Subject: x"), b")",
        b"4 (FLAGS (\\Flagged) UID 13 MODSEQ (7))",
        (b"5 (UID 14 BODY[] {2}", b"hi"), b" FLAGS (\\Answered))"]))
    assert [(f.seq, f.uid, f.flags, f.literal) for f in got] == [
        (3, 12, ("\\Seen",), b"Subject: x"), (4, 13, ("\\Flagged",), None),
        (5, 14, ("\\Answered",), b"hi")]
    assert got[0].size == 99 and got[1].modseq == 7
