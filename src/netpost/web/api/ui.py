"""What the browser UI (web/ui) needs beyond the rest of the API, in the API's style:

- `GET /mailboxes/{id}/messages/{uid}/html?remote=`: a message's HTML part sanitised
  (web/sanitize.py), remote content blocked unless `remote=true`, as a page the UI shows in a
  sandboxed frame (its own CSP: no script at all; images only from http(s) when asked).
- `GET /mailboxes/{id}/threads?before=&limit=`: a page of messages grouped into
  conversations by In-Reply-To / References (what was parsed at delivery), subject as the
  fallback.
- `GET /files?path=`, `GET /files/content?path=`, `PUT /files/content?path=` (the body is
  the file), `DELETE /files?path=`, `POST /files/folders`: the caller's own file tree, the
  one FTP and SFTP serve (files/tree.py confines every path to it).
- `POST /drafts`: keep a message being written in Drafts (`\\Draft`), replacing the draft
  saved before; sending it is `POST /send`, after which the UI deletes the draft.
- `GET /server` (admin): the TLS certificate the listeners use and the settings, read-only.
"""

from __future__ import annotations

import asyncio
import email.policy
import os
import re
from dataclasses import asdict, is_dataclass
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from netpost.files.tree import FileTree, NotAllowed, NotFound, QuotaExceeded, TreeError
from netpost.services import Services
from netpost.store.interfaces import Mailbox
from netpost.web.api.framework import ApiError, Call, Endpoint
from netpost.web.api.mail import DOWNLOAD_HEADERS, MailApi, summary
from netpost.web.api.models import Attachment, MessageSummary, Ok, SendRequest, Strict
from netpost.web.sanitize import sanitise

# The sanitised page: no script, no plugin, no form; inline style (the mail's own); images
# from data: only, or from http(s) when the reader chose to show remote content.
_HTML_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src {img}; font-src 'none'; "
             "form-action 'none'; base-uri 'none'; frame-ancestors 'self'; sandbox "
             "allow-popups allow-popups-to-escape-sandbox")
_SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs)\s*(\[\d+\])?\s*:\s*)+", re.I)
_MSGID = re.compile(r"<[^<>\s]+>")
SECRET_KEYS = re.compile(r"pass|secret|key|token|credential", re.I)


class HtmlQuery(BaseModel):
    remote: bool = Field(False, description="load remote images and CSS (blocked by default)")


class ThreadQuery(BaseModel):
    before: int | None = Field(None, ge=1)
    limit: int = Field(50, ge=1, le=500)


class ThreadMessage(MessageSummary):
    in_reply_to: str = ""
    references: str = ""


class Thread(BaseModel):
    subject: str
    messages: list[ThreadMessage] = Field(description="oldest first")
    unseen: int
    latest: float


class ThreadPage(BaseModel):
    mailbox: str
    total: int
    threads: list[Thread] = Field(description="newest activity first")
    next_before: int | None


class DraftRequest(Strict):
    to: list[str] = Field(default_factory=list, max_length=100)
    cc: list[str] = Field(default_factory=list, max_length=100)
    subject: str = Field("", max_length=998)
    text: str = ""
    in_reply_to: str | None = Field(None, max_length=998)
    attachments: list[Attachment] = Field(default_factory=list, max_length=50)
    replaces: int | None = Field(None, ge=1, description="UID in Drafts of the draft this one "
                                 "replaces: deleted once this one is saved")


class DraftSaved(BaseModel):
    mailbox_id: int
    uid: int


class PathQuery(BaseModel):
    path: str = Field("/", min_length=1, max_length=4096)


class FolderCreate(BaseModel):
    path: str = Field(min_length=1, max_length=4096)


class FileEntry(BaseModel):
    name: str
    path: str
    is_dir: bool
    size: int
    mtime: float


class FileList(BaseModel):
    path: str
    entries: list[FileEntry]
    usage: int
    quota: int | None


class Certificate(BaseModel):
    file: str
    subject: str
    issuer: str
    not_before: str
    not_after: str
    sha256: str
    self_signed: bool
    dns_names: list[str]


class ServerInfo(BaseModel):
    hostname: str
    version: str
    data_dir: str | None
    listeners: dict[str, str]
    certificate: Certificate | None
    settings: dict[str, Any] = Field(description="the configuration, secrets left out")


def normalised_subject(subject: str) -> str:
    return _SUBJECT_PREFIX.sub("", subject).strip().casefold()


def thread_messages(messages: list[ThreadMessage]) -> list[list[ThreadMessage]]:
    """Group a page of messages into conversations: a message joins the thread of any message
    it names in In-Reply-To or References (RFC 5322 3.6.4), or, naming none on the page, of a
    message with the same subject less its Re:/Fwd: prefixes.  Each thread oldest first."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb

    by_id = {m.message_id.strip(): i for i, m in enumerate(messages) if m.message_id}
    by_subject: dict[str, int] = {}
    for i, m in enumerate(messages):
        linked = False
        for ref in _MSGID.findall(f"{m.references} {m.in_reply_to}"):
            j = by_id.get(ref)
            if j is not None and j != i:
                join(i, j)
                linked = True
        key = normalised_subject(m.subject)
        if key:
            if not linked and key in by_subject:
                join(i, by_subject[key])
            by_subject.setdefault(key, i)
    groups: dict[int, list[ThreadMessage]] = {}
    for i, m in enumerate(messages):
        groups.setdefault(root(i), []).append(m)
    threads = [sorted(g, key=lambda m: m.uid) for g in groups.values()]
    threads.sort(key=lambda g: -g[-1].uid)
    return threads


def _cert_info(path: Path) -> Certificate | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns = []
    subject, issuer = cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
    return Certificate(file=str(path), subject=subject, issuer=issuer,
                       not_before=cert.not_valid_before_utc.isoformat(),
                       not_after=cert.not_valid_after_utc.isoformat(),
                       sha256=cert.fingerprint(hashes.SHA256()).hex(),
                       self_signed=subject == issuer, dns_names=dns)


def _plain(value: Any) -> Any:
    """Settings as JSON, any key that names a secret replaced by '(hidden)'."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): "(hidden)" if SECRET_KEYS.search(str(k)) and v else _plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class UiApi:
    def __init__(self, services: Services, *, composer: MailApi) -> None:
        self.s = services
        self.composer = composer  # builds messages as POST /send does
        self.catalogue = services.stores.mailboxes
        self.messages = services.stores.messages

    def endpoints(self) -> list[Endpoint]:
        ids: dict[str, type] = {"mailbox_id": int, "uid": int}
        return [
            Endpoint("GET", "/mailboxes/{mailbox_id}/messages/{uid}/html", self.message_html,
                     "The message's HTML sanitised, remote content blocked unless asked",
                     "mail", query=HtmlQuery, media_type="text/html", path_types=ids,
                     description="Headers `X-Netpost-Remote-Blocked` (what was taken out) "
                     "and a CSP with no script. 404 when the message has no HTML part."),
            Endpoint("GET", "/mailboxes/{mailbox_id}/threads", self.threads, "A page of "
                     "messages grouped into conversations", "mail", query=ThreadQuery,
                     response=ThreadPage, path_types=ids),
            Endpoint("POST", "/drafts", self.save_draft, "Keep a message being written in "
                     "Drafts (replacing the draft saved before)", "mail", body=DraftRequest,
                     response=DraftSaved, status=201),
            Endpoint("GET", "/files", self.list_files, "A folder of your file tree", "files",
                     query=PathQuery, response=FileList),
            Endpoint("DELETE", "/files", self.delete_file, "Delete a file or an empty folder "
                     "of your tree", "files", query=PathQuery, response=Ok),
            Endpoint("POST", "/files/folders", self.make_folder, "Make a folder in your tree",
                     "files", body=FolderCreate, response=Ok, status=201),
            Endpoint("GET", "/files/content", self.download, "Download a file of your tree",
                     "files", query=PathQuery, media_type="application/octet-stream"),
            Endpoint("PUT", "/files/content", self.upload, "Upload a file to your tree (the "
                     "request body is the file; replaces one of that name)", "files",
                     query=PathQuery, response=FileEntry, status=201),
            Endpoint("GET", "/server", self.server, "The TLS certificate and the settings, "
                     "read-only", "server", access="admin", response=ServerInfo),
        ]

    # --- mail ------------------------------------------------------------------------------

    def _mailbox(self, call: Call) -> Mailbox:
        mailbox = self.catalogue.get_mailbox_by_id(int(call.path["mailbox_id"]))
        if mailbox is None or mailbox.account_id != call.user.account.id:
            raise ApiError(404, "no such mailbox")
        return mailbox

    async def message_html(self, call: Call) -> Response:
        mailbox = self._mailbox(call)
        row = self.messages.message(mailbox.id, int(call.path["uid"]))
        if row is None:
            raise ApiError(404, "no such message")
        raw = await self.s.mailboxes.read(row.blob)
        allow_remote = bool(call.query.remote)

        def render() -> tuple[str, int] | None:
            msg = BytesParser(policy=email.policy.default).parsebytes(raw)
            part = msg.get_body(preferencelist=("html",))
            if part is None:
                return None
            try:
                html = part.get_content()
            except (LookupError, ValueError, AssertionError):
                data = part.get_payload(decode=True)
                html = data.decode("utf-8", "replace") if isinstance(data, bytes) else ""
            clean = sanitise(str(html), allow_remote=allow_remote)
            return clean.html, clean.remote_blocked

        done = await asyncio.to_thread(render)
        if done is None:
            raise ApiError(404, "the message has no HTML part")
        html, blocked = done
        page = ('<!doctype html><html><head><meta charset="utf-8">'
                '<meta name="referrer" content="no-referrer"></head><body>'
                f"{html}</body></html>")
        img = "data: http: https:" if allow_remote else "data:"
        return Response(page, media_type="text/html", headers={
            "Content-Security-Policy": _HTML_CSP.format(img=img),
            "X-Netpost-Remote-Blocked": str(blocked), "Cache-Control": "no-store",
            "X-Frame-Options": "SAMEORIGIN"})

    async def threads(self, call: Call) -> ThreadPage:
        mailbox = self._mailbox(call)
        q: ThreadQuery = call.query
        rows = self.messages.message_page(mailbox.id, before_uid=q.before, limit=q.limit + 1)
        more = len(rows) > q.limit
        rows = rows[:q.limit]
        items = [ThreadMessage(**summary(m).model_dump(by_alias=True),
                               in_reply_to=m.headers.get("in-reply-to", ""),
                               references=m.headers.get("references", "")) for m in rows]
        threads = [Thread(subject=g[0].subject, messages=g,
                          unseen=sum(1 for m in g if "\\Seen" not in m.flags),
                          latest=max(m.internaldate for m in g))
                   for g in thread_messages(items)]
        return ThreadPage(mailbox=mailbox.name, total=self.messages.message_count(mailbox.id),
                          threads=threads, next_before=rows[-1].uid if more else None)

    async def save_draft(self, call: Call) -> DraftSaved:
        body: DraftRequest = call.body
        drafts = self.catalogue.get_mailbox(call.user.account.id, "Drafts")
        if drafts is None:
            raise ApiError(409, "you have no Drafts mailbox")
        as_sent = SendRequest.model_construct(
            to=body.to, cc=body.cc, bcc=[], subject=body.subject, text=body.text, html=None,
            in_reply_to=body.in_reply_to, attachments=body.attachments, save_sent=False)
        try:  # (POST /send checks each address first; a draft's may still be half typed)
            content, _ = await asyncio.to_thread(self.composer.compose, call.user.address,
                                                 as_sent)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise ApiError(422, f"cannot make a message of this: {exc}") from None
        if not body.to:  # a draft may have no recipient yet: no empty To field
            content = content.replace(b"\r\nTo:\r\n", b"\r\n", 1)
        if len(content) > self.composer.max_message_size:
            raise ApiError(413, f"the draft is larger than {self.composer.max_message_size} "
                           "octets")
        uid = await self.s.mailboxes.append(drafts, content,
                                            flags=frozenset({"\\Draft", "\\Seen"}))
        if body.replaces is not None and body.replaces != uid:
            await self.s.mailboxes.expunge(drafts.id, [body.replaces])
        return DraftSaved(mailbox_id=drafts.id, uid=uid)

    # --- files -----------------------------------------------------------------------------

    def _tree(self, call: Call) -> FileTree:
        if self.s.files is None:
            raise ApiError(409, "this server keeps no file trees")
        return self.s.files.tree(call.user.address)

    @staticmethod
    def _tree_error(exc: TreeError) -> ApiError:
        if isinstance(exc, NotFound):
            return ApiError(404, str(exc))
        if isinstance(exc, QuotaExceeded):
            return ApiError(413, str(exc))
        if isinstance(exc, NotAllowed):
            return ApiError(409, str(exc))
        return ApiError(400, str(exc))

    async def list_files(self, call: Call) -> FileList:
        tree = self._tree(call)
        path = call.query.path

        def listing() -> FileList:
            vpath = tree.resolve("/", path)
            entries = tree.listdir(vpath)
            base = vpath.rstrip("/")
            return FileList(path=vpath, usage=tree.usage(), quota=tree.quota, entries=[
                FileEntry(name=e.name, path=f"{base}/{e.name}", is_dir=e.is_dir, size=e.size,
                          mtime=e.mtime)
                for e in sorted(entries, key=lambda e: (not e.is_dir, e.name.casefold()))])
        try:
            return await asyncio.to_thread(listing)
        except TreeError as exc:
            raise self._tree_error(exc) from None

    async def delete_file(self, call: Call) -> Ok:
        tree = self._tree(call)
        path = call.query.path

        def remove() -> str:
            vpath = tree.resolve("/", path)
            if vpath == "/":
                raise NotAllowed("/: the root of your tree cannot be deleted")
            if tree.is_dir(vpath):
                tree.rmdir(vpath)
            else:
                tree.delete(vpath)
            return vpath
        try:
            gone = await asyncio.to_thread(remove)
        except TreeError as exc:
            raise self._tree_error(exc) from None
        return Ok(detail=f"deleted {gone}")

    async def make_folder(self, call: Call) -> Ok:
        tree = self._tree(call)
        try:
            vpath = await asyncio.to_thread(tree.resolve, "/", call.body.path)
            await asyncio.to_thread(tree.mkdir, vpath)
        except TreeError as exc:
            raise self._tree_error(exc) from None
        return Ok(detail=f"made {vpath}")

    async def download(self, call: Call) -> Response:
        tree = self._tree(call)
        try:
            vpath = tree.resolve("/", call.query.path)
            f = await asyncio.to_thread(tree.open_read, vpath)
        except TreeError as exc:
            raise self._tree_error(exc) from None
        size = os.fstat(f.fileno()).st_size
        name = "".join(c for c in vpath.rpartition("/")[2] if c.isalnum() or c in "._- ")

        async def chunks() -> Any:
            try:
                while data := await asyncio.to_thread(f.read, 256 * 1024):
                    yield data
            finally:
                f.close()
        return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
            **DOWNLOAD_HEADERS, "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{name or "file"}"'})

    async def upload(self, call: Call) -> FileEntry:
        tree = self._tree(call)
        try:
            vpath = tree.resolve("/", call.query.path)
            upload = await asyncio.to_thread(tree.begin_upload, vpath)
        except TreeError as exc:
            raise self._tree_error(exc) from None
        try:
            async for chunk in call.request.stream():
                if chunk:
                    await asyncio.to_thread(upload.write, chunk)
            await asyncio.to_thread(upload.commit)  # fsync'd and renamed: whole or absent
        except TreeError as exc:
            await asyncio.to_thread(upload.abort)
            raise self._tree_error(exc) from None
        except BaseException:
            await asyncio.to_thread(upload.abort)
            raise
        entry = await asyncio.to_thread(tree.stat, vpath)
        return FileEntry(name=entry.name, path=vpath, is_dir=False, size=entry.size,
                         mtime=entry.mtime)

    # --- server ----------------------------------------------------------------------------

    async def server(self, call: Call) -> ServerInfo:
        from netpost import __version__

        config = self.s.config
        data_dir = self.s.data_dir
        cert = None
        if config is not None:
            path = (Path(config.tls.certificate) if config.tls.certificate
                    else data_dir / "tls" / "cert.pem" if data_dir is not None else None)
            if path is not None:
                cert = await asyncio.to_thread(_cert_info, path)
        settings: dict[str, Any] = {}
        if config is not None:
            for name in ("server", "tls", "auth", "limits", "store", "trace", "demo"):
                settings[name] = _plain(getattr(config, name))
            for name, value in sorted(config.services.items()):
                settings[name] = _plain(value)
        return ServerInfo(hostname=config.server.hostname if config else "",
                          version=__version__, data_dir=str(data_dir) if data_dir else None,
                          listeners=dict(config.listen) if config else {},
                          certificate=cert, settings=settings)

