"""`netpost mail ...`: the user agent's commands (docs/agent.md)."""

from __future__ import annotations

import argparse
import email.utils
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import TYPE_CHECKING

from netpost.agent import AgentError
from netpost.agent.account import Account, default_account_path, load_account
from netpost.agent.render import parse

if TYPE_CHECKING:
    from netpost.agent.imap import Fetched, ImapSession
    from netpost.agent.pgp import Keyring

FLAG_NAMES = {"seen": "\\Seen", "flagged": "\\Flagged", "answered": "\\Answered",
              "draft": "\\Draft", "deleted": "\\Deleted"}


def account_of(args: argparse.Namespace) -> Account:
    return load_account(Path(args.account) if args.account else default_account_path())


def keyring_of(account: Account, args: argparse.Namespace) -> Keyring:
    from netpost.agent.pgp import Keyring

    return Keyring(account.keyring, os.environ.get("NETPOST_PGP_PASSPHRASE_COMMAND")
                   or account.pgp_passphrase_command)


def imap(account: Account) -> ImapSession:
    from netpost.agent.imap import ImapSession

    return ImapSession(account)


def parse_uids(text: str) -> str:
    """A UID set as the user gives it: 5, 5,7, 3:9 (RFC 9051 sequence-set)."""
    if not re.fullmatch(r"(\d+(:(\d+|\*))?)(,\d+(:(\d+|\*))?)*", text):
        raise AgentError(f"{text!r} is not a UID or a UID set (like 5, 5,7 or 3:9)")
    return text


def one_uid(text: str) -> int:
    if not text.isdigit():
        raise AgentError(f"{text!r} is not a message UID (a number from 'list')")
    return int(text)


# --- list, read --------------------------------------------------------------------------
def flag_marks(flags: tuple[str, ...]) -> str:
    lowered = {f.lower() for f in flags}
    return ("N" if "\\seen" not in lowered else " ") + \
        ("F" if "\\flagged" in lowered else " ") + ("R" if "\\answered" in lowered else " ")


def summary_line(ident: str, flags: str, headers: bytes | None, size: int) -> str:
    msg = parse(headers or b"")
    sender = email.utils.parseaddr(str(msg.get("From", "")))
    who = sender[0] or sender[1]
    date = ""
    try:
        if msg.get("Date"):
            date = email.utils.parsedate_to_datetime(str(msg["Date"])).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, IndexError):
        pass
    subject = re.sub(r"\s+", " ", str(msg.get("Subject", "")))
    return f"{ident:>7} {flags} {date:16} {who[:24]:24} {subject[:60]} ({size})"


def cmd_list(args: argparse.Namespace) -> int:
    account = account_of(args)
    if args.page < 1 or args.page_size < 1:
        raise AgentError("--page and --page-size start at 1")
    if args.pop3:
        from netpost.agent.transport import Pop3Session

        with Pop3Session(account) as pop:
            uidls = pop.uidls()
            sizes = pop.sizes()
            last = len(uidls) - (args.page - 1) * args.page_size
            shown = uidls[max(0, last - args.page_size):max(0, last)]
            for number, uid in reversed(shown):
                print(summary_line(uid, "   ", pop.headers(number), sizes.get(number, 0)))
            print(f"-- page {args.page}, {len(shown)} of {len(uidls)} messages (POP3) --")
        return 0
    with imap(account) as session:
        session.select(args.folder, readonly=True)
        page, total = session.page(args.page, args.page_size)
        for f in page:
            print(summary_line(str(f.uid), flag_marks(f.flags), f.literal, f.size))
        pages = max(1, -(-total // args.page_size))
        print(f"-- {args.folder}: page {args.page} of {pages}, {total} messages --")
    return 0


def fetch_raw(args: argparse.Namespace, account: Account, uid: str, *, peek: bool) -> bytes:
    if getattr(args, "pop3", False):
        from netpost.agent.transport import Pop3Session

        with Pop3Session(account) as pop:
            return pop.message(pop.number_of(uid))
    with imap(account) as session:
        session.select(args.folder, readonly=peek)
        return session.message(one_uid(uid), peek=peek)


def opened(raw: bytes, account: Account, args: argparse.Namespace) -> tuple[EmailMessage,
                                                                            EmailMessage,
                                                                            list[str]]:
    """(the message, its content to show, PGP notes)."""
    from netpost.agent.render import header

    msg = parse(raw)
    if msg.defects and not msg.keys():
        raise AgentError("the message cannot be parsed as MIME: "
                         f"{type(msg.defects[0]).__name__}")
    learned: list[str] = []
    if account.autocrypt and msg.get("Autocrypt"):
        from netpost.agent.autocrypt import learn

        note = learn(msg, keyring_of(account, args))
        learned = [note] if note else []
    if msg.get_content_type() in ("multipart/signed", "multipart/encrypted"):
        from netpost.agent.mime_pgp import open_message

        result = open_message(raw, msg, keyring_of(account, args))
        # show the outer fields with the protected content
        for name in ("Date", "From", "To", "Cc", "Reply-To", "Subject", "Message-ID",
                     "References"):
            if header(msg, name) and not result.content.get(name):
                result.content[name] = header(msg, name)
        return msg, result.content, learned + result.notes
    return msg, msg, learned


def cmd_read(args: argparse.Namespace) -> int:
    from netpost.agent.render import render

    account = account_of(args)
    raw = fetch_raw(args, account, args.uid, peek=args.peek)
    if args.raw:
        sys.stdout.buffer.write(raw)
        return 0
    _, content, notes = opened(raw, account, args)
    sys.stdout.write(render(content, extra=notes))
    return 0


def cmd_save_attachment(args: argparse.Namespace) -> int:
    from netpost.agent.render import attachments
    from netpost.fsutil import write_atomic

    account = account_of(args)
    raw = fetch_raw(args, account, args.uid, peek=True)
    _, content, _ = opened(raw, account, args)
    parts = attachments(content)
    if not parts:
        raise AgentError(f"message {args.uid} has no attachments")
    chosen = [p for p in parts if str(p.number) == args.which or p.filename == args.which]
    if not chosen:
        raise AgentError(f"message {args.uid} has no attachment {args.which!r} (it has "
                         + ", ".join(f"[{p.number}] {p.filename}" for p in parts) + ")")
    part = chosen[0]
    data = part.part.get_payload(decode=True)
    if not isinstance(data, bytes):
        raise AgentError(f"attachment {part.filename} has no content")
    name = Path(part.filename).name or f"part{part.number}"  # never a path from the sender
    target = Path(args.output) if args.output else Path(name)
    if target.is_dir():
        target = target / name
    if target.exists() and not args.force:
        raise AgentError(f"{target} exists (use --force to replace it)")
    if not target.parent.is_dir():
        raise AgentError(f"{target.parent} is not a directory")
    mask = os.umask(0)
    os.umask(mask)
    # whole or not at all; a fresh temporary name, so no planted file or symlink is followed
    write_atomic(target, data, 0o666 & ~mask)
    print(f"saved {target} ({len(data)} octets, {part.content_type})")
    return 0


# --- composing and sending ---------------------------------------------------------------
def edit_text(initial: str) -> str:
    """Let the user edit `initial` in $VISUAL / $EDITOR (default vi); the result."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    fd, name = tempfile.mkstemp(prefix="netpost-mail-", suffix=".eml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(initial)
        status = subprocess.call([*shlex.split(editor), name])
        if status != 0:
            raise AgentError(f"the editor exited with status {status}; nothing was sent")
        return Path(name).read_text(encoding="utf-8")
    finally:
        os.unlink(name)


def compose_in_editor(fields: dict[str, str], body: str) -> tuple[dict[str, str], str]:
    """The draft as header lines and a body in the editor; read back with `email`."""
    template = "".join(f"{k}: {v}\n" for k, v in fields.items()) + "\n" + body
    text = edit_text(template)
    if text.strip() == template.strip():
        raise AgentError("the message was not changed; nothing was sent")
    draft = parse(text.encode("utf-8"))
    got = {k: str(draft.get(k, "")).strip() for k in fields}
    payload = draft.get_payload()
    return got, payload if isinstance(payload, str) else ""


def split_addresses(values: list[str] | str | None) -> list[str]:
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    out = []
    for name, addr in email.utils.getaddresses(values):
        if addr:
            out.append(email.utils.formataddr((name, addr)) if name else addr)
        elif name:
            raise AgentError(f"{name!r} is not an address")
    return out


def body_from(args: argparse.Namespace) -> str | None:
    if args.body is not None:
        return str(args.body)
    if args.body_file:
        try:
            return Path(args.body_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AgentError(f"cannot read {args.body_file}: {exc}") from None
    if not sys.stdin.isatty():
        return sys.stdin.read()
    return None  # interactive: the editor


def confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return True
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


def protect(msg: EmailMessage, account: Account, args: argparse.Namespace,
            recipients: list[str]) -> EmailMessage:
    if not (args.sign or args.encrypt):
        return msg
    from netpost.agent import mime_pgp

    keyring = keyring_of(account, args)
    signer = keyring.signer(account.address) if args.sign else None
    if args.encrypt:
        certs = []
        for r in recipients + [account.address]:  # and to self: the Sent copy stays readable
            try:
                certs.append(keyring.cert_for(r))
            except AgentError:
                if not args.wkd or r == account.address:
                    raise
                locate_into(keyring, r, args)
                certs.append(keyring.cert_for(r))
        return mime_pgp.encrypt_message(msg, certs, signer)
    assert signer is not None
    return mime_pgp.sign_message(msg, signer)


def deliver(msg: EmailMessage, account: Account, args: argparse.Namespace) -> None:
    from netpost.agent.compose import recipients
    from netpost.agent.transport import submit

    rcpts = recipients(msg)
    if account.autocrypt:
        from netpost.agent.autocrypt import add_header

        add_header(msg, keyring_of(account, args), account.address)
    final = protect(msg, account, args, [email.utils.parseaddr(r)[1] for r in rcpts])
    wire = submit(account, final, rcpts)
    print(f"sent to {', '.join(rcpts)}")
    if not args.no_save:
        try:
            with imap(account) as session:
                folder = session.special_use("\\Sent", account.sent_folder)
                session.append(folder, final.as_bytes(policy=SMTP) if final.get("Bcc")
                               else wire)
        except AgentError as exc:
            print(f"netpost: sent, but not saved to the Sent folder: {exc}", file=sys.stderr)


def cmd_send(args: argparse.Namespace) -> int:
    from netpost.agent.compose import attachment_from_file, new_message, sender

    account = account_of(args)
    fields = {"To": ", ".join(split_addresses(args.to)), "Cc": ", ".join(
        split_addresses(args.cc)), "Bcc": ", ".join(split_addresses(args.bcc)),
        "Subject": args.subject or ""}
    body = body_from(args)
    if body is None:
        fields, body = compose_in_editor(fields, "")
    files = [attachment_from_file(Path(p)) for p in args.attach]
    msg = new_message(from_=sender(account.address, account.name),
                      to=split_addresses(fields["To"]), cc=split_addresses(fields["Cc"]),
                      bcc=split_addresses(fields["Bcc"]), subject=fields["Subject"],
                      body=body, attachments=files, reply_to=args.reply_to)
    if sys.stdin.isatty() and not confirm(f"Send to {fields['To'] or fields['Cc']}?"):
        print("not sent")
        return 1
    deliver(msg, account, args)
    return 0


def cmd_reply(args: argparse.Namespace) -> int:
    from netpost.agent.compose import forward, reply, sender
    from netpost.agent.render import text_of

    account = account_of(args)
    raw = fetch_raw(args, account, args.uid, peek=True)
    original, content, _ = opened(raw, account, args)
    body = body_from(args)
    me = sender(account.address, account.name)
    if args.command_name == "forward":
        to = split_addresses(args.to)
        if not to:
            raise AgentError("forward needs --to ADDRESS")
        msg = forward(content if content is not original else original, from_=me, to=to,
                      body=body or "")
    else:
        msg = reply(original, me=account.address, from_=me, body=body or "",
                    quoted_text=text_of(content), to_all=args.command_name == "reply-all")
    if body is None:  # the editor, with the quote in place
        fields = {k: str(msg.get(k, "")) for k in ("To", "Cc", "Subject")}
        payload = msg.get_body(preferencelist=("plain",))
        text = payload.get_content() if payload is not None else ""
        fields, new_body = compose_in_editor(fields, "\n" + str(text))
        for k, v in fields.items():
            del msg[k]
            if v:
                msg[k] = v
        part = msg.get_body(preferencelist=("plain",))
        if part is not None:
            part.set_content(new_body, cte="quoted-printable")
    if sys.stdin.isatty() and not confirm(f"Send to {msg.get('To', '')}?"):
        print("not sent")
        return 1
    deliver(msg, account, args)
    if args.command_name != "forward" and not args.pop3:
        with imap(account) as session:  # RFC 9051 2.3.2: \Answered
            session.select(args.folder)
            session.store(str(one_uid(args.uid)), "+", ["\\Answered"])
    return 0


# --- managing ----------------------------------------------------------------------------
def cmd_move(args: argparse.Namespace) -> int:
    with imap(account_of(args)) as session:
        session.select(args.folder)
        session.move(parse_uids(args.uids), args.target)
    print(f"moved {args.uids} from {args.folder} to {args.target}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    account = account_of(args)
    if args.pop3:
        from netpost.agent.transport import Pop3Session

        with Pop3Session(account) as pop:
            for uid in args.uids.split(","):
                pop.delete(pop.number_of(uid))
        print(f"deleted {args.uids}")
        return 0
    uids = parse_uids(args.uids)
    with imap(account) as session:
        session.select(args.folder)
        if args.trash:
            trash = session.special_use("\\Trash", "Trash")
            session.move(uids, trash)
            print(f"moved {uids} to {trash}")
        else:
            session.expunge(uids)
            print(f"deleted {uids} from {args.folder}")
    return 0


def flag_name(text: str) -> str:
    if text.lower() in FLAG_NAMES:
        return FLAG_NAMES[text.lower()]
    if not re.fullmatch(r"\\?[A-Za-z0-9$_.-]+", text):
        raise AgentError(f"{text!r} is not a flag (seen, flagged, answered, draft, or a "
                         "keyword of letters and digits)")
    return text


def cmd_flag(args: argparse.Namespace) -> int:
    add = [flag_name(f) for f in args.add]
    remove = [flag_name(f) for f in args.remove]
    if not add and not remove:
        raise AgentError("say which flags: --add seen, --remove flagged, ...")
    with imap(account_of(args)) as session:
        session.select(args.folder)
        uids = parse_uids(args.uids)
        if add:
            session.store(uids, "+", add)
        if remove:
            session.store(uids, "-", remove)
    print(f"flags of {args.uids}: " + " ".join([f"+{f}" for f in add] + [f"-{f}" for f in remove]))
    return 0


def cmd_folders(args: argparse.Namespace) -> int:
    with imap(account_of(args)) as session:
        if args.action == "list":
            for f in session.folders():
                special = [a for a in f.attributes if a.lower() in (
                    "\\sent", "\\drafts", "\\trash", "\\junk", "\\archive", "\\all",
                    "\\flagged")]
                print(f.name + (f"  ({' '.join(special)})" if special else ""))
            return 0
        if not args.name:
            raise AgentError(f"folders {args.action} needs a folder name")
        if args.action == "create":
            session.create(args.name)
            print(f"created {args.name}")
        elif args.action == "rename":
            if not args.new_name:
                raise AgentError("folders rename needs the old and the new name")
            session.rename(args.name, args.new_name)
            print(f"renamed {args.name} to {args.new_name}")
        else:
            session.delete_folder(args.name)
            print(f"deleted folder {args.name}")
    return 0


def search_criteria(args: argparse.Namespace) -> list[str]:
    """UID SEARCH keys (RFC 9051 6.4.4) from the options; strings are quoted."""
    from netpost.agent.imap import _quote

    keys: list[str] = []
    for option, key in (("from_", "FROM"), ("to", "TO"), ("subject", "SUBJECT"),
                        ("body", "BODY"), ("text", "TEXT")):
        value = getattr(args, option)
        if value:
            if not value.isascii() or "\r" in value or "\n" in value:
                raise AgentError(f"--{option.rstrip('_')}: only ASCII text on one line can "
                                 "be searched for (for now)")
            keys += [key, _quote(value)]
    for option, key in (("since", "SINCE"), ("before", "BEFORE")):
        value = getattr(args, option)
        if value:
            try:
                day = time.strptime(value, "%Y-%m-%d")
            except ValueError:
                raise AgentError(f"--{option} {value!r}: give a date as YYYY-MM-DD") from None
            keys += [key, time.strftime("%d-%b-%Y", day)]
    if args.unseen:
        keys.append("UNSEEN")
    if args.flagged:
        keys.append("FLAGGED")
    return keys or ["ALL"]


def cmd_search(args: argparse.Namespace) -> int:
    from netpost.agent.imap import uid_set

    with imap(account_of(args)) as session:
        session.select(args.folder, readonly=True)
        uids = sorted(session.search(search_criteria(args)), reverse=True)
        shown = uids[:args.limit]
        found: list[Fetched] = []
        if shown:
            found = session.fetch(uid_set(shown), "(UID FLAGS RFC822.SIZE "
                                  "BODY.PEEK[HEADER.FIELDS (DATE FROM TO SUBJECT)])")
        for f in sorted(found, key=lambda f: f.uid, reverse=True):
            print(summary_line(str(f.uid), flag_marks(f.flags), f.literal, f.size))
        print(f"-- {len(uids)} found" + (f", {len(shown)} shown" if len(shown) < len(uids)
                                          else "") + " --")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from netpost.agent.sync import sync_folder

    with imap(account_of(args)) as session:
        started = time.monotonic()
        report = sync_folder(session, args.folder, Path(args.maildir), fsync=not args.no_fsync)
        took = time.monotonic() - started
    print(f"{args.folder} -> {args.maildir}: {report.new} new, {report.flags_changed} with "
          f"new flags, {report.removed} removed" + (" (full download)" if report.full else "")
          + f" in {took:.2f} s")
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    """Print the SHA-256 fingerprint of the IMAP server's certificate (for tls_fingerprint),
    after showing who it was issued to: trust on first use, by the user's decision."""
    import hashlib
    import socket
    import ssl

    from netpost.agent.account import format_fingerprint

    account = account_of(args)
    ep = account.imap
    if ep.tls != "implicit":
        raise AgentError("pin reads the certificate of an implicit-TLS [imap] port (993)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((ep.host, ep.port), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname=ep.host) as tls:
            der = tls.getpeercert(binary_form=True) or b""
    except OSError as exc:
        raise AgentError(f"imap {ep.host}:{ep.port}: {exc}") from None
    print(f'tls_fingerprint = "{format_fingerprint(hashlib.sha256(der).hexdigest())}"')
    return 0


# --- keys --------------------------------------------------------------------------------
def locate_into(keyring: Keyring, address: str, args: argparse.Namespace) -> list[str]:
    from netpost.agent.wkd import locate

    connect_to: dict[str, tuple[str, int]] = {}
    for item in getattr(args, "connect_to", None) or []:
        host, _, rest = item.partition("=")
        addr, _, port = rest.rpartition(":")
        if not host or not addr or not port.isdigit():
            raise AgentError(f"--connect-to {item!r}: expected HOST=ADDRESS:PORT")
        connect_to[host] = (addr, int(port))
    data, url = locate(address, ca_file=getattr(args, "wkd_ca_file", None),
                       connect_to=connect_to)
    lines = keyring.add(data)
    from netpost.agent.pgp import cert_addresses

    if not any(address.lower() in cert_addresses(c) for c in keyring.find(address)):
        raise AgentError(f"the key at {url} has no user ID with {address}")
    return [f"{line} from {url}" for line in lines]


def cmd_key(args: argparse.Namespace) -> int:
    from netpost.agent.pgp import cert_label, usable_problem

    account = account_of(args)
    keyring = keyring_of(account, args)
    if args.action == "generate":
        user_id = args.arg or (f"{account.name} <{account.address}>" if account.name
                               else f"<{account.address}>")
        passphrase = None if args.no_passphrase else keyring.new_passphrase(user_id)
        tsk = keyring.generate(user_id, passphrase)
        print(f"generated {cert_label(tsk.extract_certificate())}"
              + (", protected by its passphrase" if passphrase is not None
                 else ", NOT passphrase-protected"))
    elif args.action == "import":
        source = args.arg or "-"
        try:
            data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        except OSError as exc:
            raise AgentError(f"cannot read {source}: {exc.strerror}") from None
        for line in keyring.add(data):
            print(line)
    elif args.action == "export":
        sys.stdout.write(keyring.export(args.arg or account.address, secret=args.secret))
    elif args.action == "list":
        secret = {t.extract_certificate().fingerprint for t in keyring.secret_keys()}
        for c in keyring.certs():
            problem = usable_problem(c)
            print(("sec " if c.fingerprint in secret else "pub ") + cert_label(c)
                  + (f"  [{problem}]" if problem else ""))
    elif args.action == "locate":
        if not args.arg:
            raise AgentError("key locate needs an address")
        for line in locate_into(keyring, args.arg, args):
            print(line)
    return 0


# --- the parser --------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser(
        "mail", help="the mail user agent: send, list, read, reply, sync, PGP",
        description="Read and send mail with any server over submission and IMAP (or POP3); "
                    "PGP/MIME signing and encryption. The account is a TOML file "
                    f"(default {default_account_path()}; see docs/agent.md).")
    m.add_argument("--account", metavar="FILE", help="the account file")
    ms = m.add_subparsers(dest="mail_command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str,
                folder: bool = True) -> argparse.ArgumentParser:
        p = ms.add_parser(name, help=help_text, description=help_text[0].upper()
                          + help_text[1:] + ".")
        if folder:
            p.add_argument("--folder", "-f", default="INBOX", help="IMAP folder (INBOX)")
        p.set_defaults(func=func, command_name=name)
        return p

    def compose_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--body", help="the text (default: standard input, or $EDITOR on "
                                      "a terminal)")
        p.add_argument("--body-file", metavar="FILE", help="the text from FILE")
        p.add_argument("--sign", action="store_true", help="PGP/MIME signature (RFC 3156)")
        p.add_argument("--encrypt", action="store_true",
                       help="PGP/MIME encryption to every recipient (and you)")
        p.add_argument("--wkd", action="store_true",
                       help="--encrypt: fetch missing recipients' keys by WKD")
        p.add_argument("--connect-to", action="append", metavar="HOST=ADDRESS:PORT",
                       help="--wkd: reach HOST at ADDRESS:PORT (like curl --connect-to)")
        p.add_argument("--wkd-ca-file", metavar="FILE",
                       help="--wkd: trust the CA certificates in FILE")
        p.add_argument("--no-save", action="store_true",
                       help="do not keep a copy in the Sent folder")

    p = command("send", cmd_send, "compose and send a message", folder=False)
    p.add_argument("--to", "-t", action="append", default=[], metavar="ADDRESS")
    p.add_argument("--cc", "-c", action="append", default=[], metavar="ADDRESS")
    p.add_argument("--bcc", "-b", action="append", default=[], metavar="ADDRESS")
    p.add_argument("--subject", "-s")
    p.add_argument("--reply-to", metavar="ADDRESS")
    p.add_argument("--attach", "-a", action="append", default=[], metavar="FILE")
    compose_options(p)

    p = command("list", cmd_list, "list a folder's messages, newest first, a page at a time")
    p.add_argument("--page", "-p", type=int, default=1, help="page number (1: newest)")
    p.add_argument("--page-size", "-n", type=int, default=20)
    p.add_argument("--pop3", action="store_true", help="list the POP3 maildrop instead")

    p = command("read", cmd_read, "show a message (decrypted and verified when PGP/MIME)")
    p.add_argument("uid", help="the UID from 'list' (POP3: the UIDL)")
    p.add_argument("--raw", action="store_true", help="the message as it is, unparsed")
    p.add_argument("--peek", action="store_true", help="do not mark it as seen")
    p.add_argument("--pop3", action="store_true", help="read from the POP3 maildrop")

    p = command("save-attachment", cmd_save_attachment, "save an attachment of a message")
    p.add_argument("uid")
    p.add_argument("which", help="the attachment's number from 'read', or its file name")
    p.add_argument("--output", "-o", metavar="PATH", help="file or directory (default: "
                   "its name, here)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--pop3", action="store_true")

    for name, text in (("reply", "reply to the sender"),
                       ("reply-all", "reply to the sender and every other recipient"),
                       ("forward", "forward a message (attached whole)")):
        p = command(name, cmd_reply, text)
        p.add_argument("uid")
        if name == "forward":
            p.add_argument("--to", "-t", action="append", default=[], metavar="ADDRESS")
        compose_options(p)
        p.add_argument("--pop3", action="store_true", help=argparse.SUPPRESS)

    p = command("move", cmd_move, "move messages to another folder")
    p.add_argument("uids", help="UID or UID set: 5, 5,7, 3:9")
    p.add_argument("target", help="the folder to move them to")

    p = command("delete", cmd_delete, "delete messages (expunged at once)")
    p.add_argument("uids", help="UID or UID set (POP3: UIDLs, comma-separated)")
    p.add_argument("--trash", action="store_true", help="move them to Trash instead")
    p.add_argument("--pop3", action="store_true", help="delete from the POP3 maildrop")

    p = command("flag", cmd_flag, "set or clear flags (seen, flagged, answered, draft, "
                                  "keywords)")
    p.add_argument("uids")
    p.add_argument("--add", action="append", default=[], metavar="FLAG")
    p.add_argument("--remove", action="append", default=[], metavar="FLAG")

    p = command("folders", cmd_folders, "list, create, rename or delete folders", folder=False)
    p.add_argument("action", nargs="?", default="list",
                   choices=["list", "create", "rename", "delete"])
    p.add_argument("name", nargs="?")
    p.add_argument("new_name", nargs="?")

    p = command("search", cmd_search, "search a folder on the server")
    p.add_argument("--from", dest="from_", metavar="TEXT")
    p.add_argument("--to", metavar="TEXT")
    p.add_argument("--subject", metavar="TEXT")
    p.add_argument("--body", metavar="TEXT")
    p.add_argument("--text", metavar="TEXT", help="anywhere in the header or body")
    p.add_argument("--since", metavar="YYYY-MM-DD")
    p.add_argument("--before", metavar="YYYY-MM-DD")
    p.add_argument("--unseen", action="store_true")
    p.add_argument("--flagged", action="store_true")
    p.add_argument("--limit", type=int, default=50, help="show at most this many (50)")

    p = command("sync", cmd_sync, "download a folder to a local Maildir, incrementally")
    p.add_argument("maildir", help="the Maildir (made if missing)")
    p.add_argument("--no-fsync", action="store_true",
                   help="do not fsync each message (faster; a crash may lose the last ones)")

    command("pin", cmd_pin, "print the IMAP server certificate's fingerprint for "
                            "tls_fingerprint", folder=False)

    p = command("key", cmd_key, "the PGP key ring: generate, import, export, list, locate "
                                "(WKD)", folder=False)
    p.add_argument("action", choices=["generate", "import", "export", "list", "locate"])
    p.add_argument("arg", nargs="?", metavar="USERID|FILE|ADDRESS",
                   help="generate: user ID; import: file or -; export: address or "
                        "fingerprint; locate: address")
    p.add_argument("--secret", action="store_true", help="export: the secret key")
    p.add_argument("--no-passphrase", action="store_true",
                   help="generate: a key without a passphrase (protected only by the key "
                        "ring's file mode)")
    p.add_argument("--connect-to", action="append", metavar="HOST=ADDRESS:PORT",
                   help="locate: reach HOST at ADDRESS:PORT (like curl --connect-to)")
    p.add_argument("--wkd-ca-file", metavar="FILE",
                   help="locate: trust the CA certificates in FILE")


def main(argv: list[str]) -> int:
    """`netpost mail ARGS` without building the server's whole command line (which imports
    every service): the agent's start-up is part of every `list`."""
    parser = argparse.ArgumentParser(prog="netpost")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser(sub)
    args = parser.parse_args(["mail", *argv])
    try:
        return int(args.func(args))
    except AgentError as exc:
        print(f"netpost: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
