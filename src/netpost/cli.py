"""The `netpost` command line."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from netpost import __version__
from netpost.agent import AgentError
from netpost.config import ConfigError, load, render_default, set_listen
from netpost.mail import address as names
from netpost.progress import ProgressBar
from netpost.registry import default_registry
from netpost.store.interfaces import Account, AdminStores, Lease, Mailbox, Stores

CONFIG_NAME = "netpost.toml"


class CLIError(Exception):
    """One line for the user; exit status 1 (2 for usage errors, from argparse)."""


def data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data or os.environ.get("NETPOST_DATA") or "./netpost-data")


def _bad_domain(name: str) -> CLIError:
    return CLIError(f"{name!r} is not a valid domain name (like example.org)")


def check_domain(name: str) -> str:
    """The canonical form of domain `name` (rules: netpost.mail.address), or CLIError."""
    try:
        return names.parse_domain(name)
    except names.InvalidDomain:
        raise _bad_domain(names.normalize_domain(name)) from None


def _bad_address(address: str, exc: names.InvalidAddress, what: str) -> CLIError:
    if exc.bad_domain is not None:
        return _bad_domain(exc.bad_domain)
    return CLIError(f"{names.normalize_address(address)!r} is not a valid {what} "
                    "(like alice@example.org)")


def check_address(address: str, what: str = "address") -> str:
    """The canonical form of `address`, or CLIError naming it as `what`."""
    try:
        return names.parse_address(address)[0]
    except names.InvalidAddress as exc:
        raise _bad_address(address, exc, what) from None


def check_alias_source(source: str) -> str:
    """The canonical form of alias source `source` (local@domain or @domain), or CLIError."""
    try:
        return names.parse_alias_source(source)[0]
    except names.InvalidDomain as exc:  # of a catch-all
        raise _bad_domain(exc.text) from None
    except names.InvalidAddress as exc:
        raise _bad_address(source, exc, "alias source") from None


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CLIError("the two passwords differ; nothing was changed")
    else:
        raise CLIError("no terminal to ask for the password: pipe it in with --password-stdin")
    if not password:
        raise CLIError("the password is empty; nothing was changed")
    return password


# --- commands ----------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from netpost.server import run

    data = data_dir(args)
    config_path = Path(args.config) if args.config else data / CONFIG_NAME
    if args.config and not config_path.exists():
        raise CLIError(f"config file {config_path} does not exist (make one with 'netpost init')")
    cfg = load(config_path)
    listen = dict(cfg.listen)
    for item in args.listen:
        name, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--listen {item!r}: expected NAME=HOST:PORT, NAME=off or "
                           "dhcp=IFACE")
        set_listen(listen, name.strip(), value.strip())
    cfg = replace(cfg, listen=listen)
    if args.trace:
        cfg = replace(cfg, trace=replace(cfg.trace, listeners=("all",)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data.mkdir(parents=True, exist_ok=True)
    return run(data, cfg)


def cmd_init(args: argparse.Namespace) -> int:
    data = data_dir(args)
    path = data / CONFIG_NAME
    if path.exists() and not args.force:
        raise CLIError(f"{path} already exists (use --force to overwrite it)")
    data.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_default() + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return 0


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[AdminStores]:
    from netpost.store.embedded import open_admin

    stores = open_admin(data_dir(args))
    try:
        yield stores
    finally:
        stores.close()


def cmd_domain(args: argparse.Namespace) -> int:
    with _store(args) as stores:
        domains = stores.domains
        if args.action == "list":
            for name in domains.list_domains():
                print(name)
            return 0
        name = check_domain(args.domain)
        if args.action == "add":
            domains.add_domain(name)
            print(f"added domain {name}")
            print("\n".join(dkim_record_lines(data_dir(args), name, make=True)))
        else:
            domains.remove_domain(name)
            print(f"removed domain {name}")
        return 0


def dkim_record_lines(data: Path, domain: str, make: bool = False) -> list[str]:
    """The DNS TXT record to publish for `domain`'s current DKIM key, as lines for the user;
    with `make`, a key is made first when the domain has none."""
    from netpost.mail import dkim

    try:
        key = dkim.current_key(data, domain)
        if key is None and make:
            key = dkim.create_key(data, domain)
        if key is None:
            raise CLIError(f"{domain} has no DKIM key (make one with 'netpost dkim new "
                           f"{domain}')")
        name, value = key.record_name, key.record_value()
    except dkim.DKIMError as exc:
        raise CLIError(str(exc)) from None
    # A zone file holds at most 255 octets per string (RFC 1035 3.3.14): split the value.
    strings = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return [f"DKIM key of {domain} (selector {key.selector}): publish this DNS TXT record",
            f"  name:  {name}", f"  value: {value}", f"  zone:  {name}. IN TXT {strings}"]


def cmd_dkim(args: argparse.Namespace) -> int:
    from netpost.mail import dkim

    data = data_dir(args)
    if args.action == "list":
        for key in dkim.list_keys(data):
            print(f"{key.domain} {key.selector}{' (current)' if key.current else ''}")
        return 0
    if args.domain is None:
        raise CLIError(f"dkim {args.action} needs DOMAIN")
    name = check_domain(args.domain)
    if args.action == "new":
        with _store(args) as stores:
            if not stores.domains.has_domain(name):
                raise CLIError(f"unknown domain {name}: add it first with "
                               f"'netpost domain add {name}'")
        try:
            old = dkim.current_key(data, name)
            dkim.create_key(data, name, args.selector)
        except dkim.DKIMError as exc:
            raise CLIError(str(exc)) from None
        if old is not None:
            print(f"new key for {name}; mail is signed with it from now on. Keep the record of "
                  f"selector {old.selector} published until mail signed before is delivered.")
    print("\n".join(dkim_record_lines(data, name)))
    return 0


def parse_size(text: str) -> int | None:
    """"2G", "500M", "1024K", "12345" (octets), "0" (no limit) or "default" (None)."""
    text = text.strip().upper()
    if text == "DEFAULT":
        return None
    units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = float(number)
    except ValueError:
        raise CLIError(f"invalid size {text!r}: use a number of octets or e.g. 500M, 2G") \
            from None
    if value < 0:
        raise CLIError("a quota cannot be negative")
    return int(value * factor)


def cmd_user_key(args: argparse.Namespace) -> int:
    """`user key add USER KEYFILE|-`, `user key list USER`, `user key remove USER FINGERPRINT`:
    the account's SSH public keys for SFTP (DATA/ssh/authorized_keys/USER)."""
    from netpost.sftp.keys import AuthorizedKeys, BadKey

    # The positionals of `user` are ACTION ADDRESS SIZE EXTRA: here key, verb, user, argument.
    verb, user, arg = args.address, args.size, args.extra
    usage = ("say e.g. 'netpost user key add alice@example.org ~/.ssh/id_ed25519.pub' "
             "(or - for standard input), 'user key list alice@example.org' or "
             "'user key remove alice@example.org SHA256:...'")
    if verb not in ("add", "list", "remove") or user is None:
        raise CLIError(usage)
    if (verb == "list") != (arg is None):
        raise CLIError(usage)
    address = check_address(user)
    keys = AuthorizedKeys(data_dir(args))
    with _store(args) as stores:
        if stores.accounts.get_account(address) is None:
            raise CLIError(f"no user {address}")
    if verb == "list":
        for k in keys.list_keys(address):
            print(f"{k.fingerprint} {k.key.get_algorithm()} {k.comment}".rstrip())
        return 0
    assert arg is not None
    if verb == "remove":
        removed = keys.remove(address, arg)
        if removed is None:
            raise CLIError(f"{address} has no key {arg} (see 'netpost user key list "
                           f"{address}')")
        print(f"removed key {removed.fingerprint} of {address}")
        return 0
    try:
        text = sys.stdin.read() if arg == "-" else Path(arg).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {arg}: {exc}") from None
    try:
        added = keys.add(address, text)
    except BadKey as exc:
        raise CLIError(f"{'standard input' if arg == '-' else arg}: {exc}") from None
    if not added:
        print(f"{address} already has that key")
    for k in added:
        print(f"added key {k.fingerprint} ({k.key.get_algorithm()}) for {address}")
    return 0


def cmd_user_pgp_key(args: argparse.Namespace) -> int:
    """`user pgp-key set USER FILE|-`, `user pgp-key show USER`, `user pgp-key remove USER`:
    the OpenPGP public key the http listener publishes for USER by WKD (web/wkd.py)."""
    from netpost.mail.webkeys import BadKey, WebKeys

    verb, user, arg = args.address, args.size, args.extra
    usage = ("say e.g. 'netpost user pgp-key set alice@example.org alice.asc' (or - for "
             "standard input), 'user pgp-key show alice@example.org' or "
             "'user pgp-key remove alice@example.org'")
    if verb not in ("set", "show", "remove") or user is None or (verb == "set") != (
            arg is not None):
        raise CLIError(usage)
    address = check_address(user)
    with _store(args) as stores:
        if stores.accounts.get_account(address) is None:
            raise CLIError(f"no user {address}")
    keys = WebKeys(data_dir(args))
    path = keys.path_of(address)
    if verb == "show":
        if not path.exists():
            raise CLIError(f"{address} has no published OpenPGP key")
        import pysequoia

        sys.stdout.write(str(pysequoia.Cert.from_bytes(path.read_bytes())))
        return 0
    if verb == "remove":
        if not keys.remove(address):
            raise CLIError(f"{address} has no published OpenPGP key")
        print(f"removed the OpenPGP key of {address} from the web key directory")
        return 0
    assert arg is not None
    try:
        data = sys.stdin.buffer.read() if arg == "-" else Path(arg).read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read {arg}: {exc.strerror}") from None
    try:
        fingerprint = keys.set(address, data)
    except BadKey as exc:
        raise CLIError(f"{'standard input' if arg == '-' else arg}: {exc}") from None
    print(f"published OpenPGP key {fingerprint} for {address} "
          f"(WKD: /.well-known/openpgpkey/{address.rpartition('@')[2]}/hu/{path.name})")
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    from netpost.auth.passwords import hash_password

    if args.action == "key":
        return cmd_user_key(args)
    if args.action == "pgp-key":
        return cmd_user_pgp_key(args)
    if args.extra is not None:
        raise CLIError(f"unexpected argument {args.extra!r}")
    with _store(args) as stores:
        accounts = stores.accounts
        if args.action == "list":
            for account in accounts.list_accounts():
                print(account.address)
            return 0
        address = check_address(args.address)
        if args.action == "add":
            domain = address.rpartition("@")[2]
            if not stores.domains.has_domain(domain):
                raise CLIError(f"unknown domain {domain}: add it first with "
                               f"'netpost domain add {domain}'")
            if accounts.get_account(address) is not None:
                raise CLIError(f"user {address} already exists")
            accounts.add_account(address, hash_password(read_password(args)))
            print(f"added user {address}")
        elif args.action == "passwd":
            if accounts.get_account(address) is None:
                raise CLIError(f"no user {address}")
            accounts.set_password_hash(address, hash_password(read_password(args)))
            print(f"changed the password of {address}")
        elif args.action == "quota":
            if accounts.get_account(address) is None:
                raise CLIError(f"no user {address}")
            if args.size is None:
                raise CLIError("say the storage quota: e.g. 'netpost user quota "
                               f"{address} 2G', or 'default' for the [imap] quota")
            octets = parse_size(args.size)
            accounts.set_account_quota(address, octets)
            print(f"quota of {address}: " + ("the server's default ([imap] quota)"
                                             if octets is None else f"{octets} octets"))
        else:
            from netpost.sftp.keys import AuthorizedKeys

            accounts.remove_account(address)
            AuthorizedKeys(data_dir(args)).drop(address)  # a new account of that name
            from netpost.mail.webkeys import WebKeys

            WebKeys(data_dir(args)).remove(address)
            print(f"removed user {address} and its mail")
        return 0


def cmd_alias(args: argparse.Namespace) -> int:
    with _store(args) as stores:
        aliases = stores.aliases
        if args.action == "list":
            for source, target in aliases.list_aliases():
                print(f"{source} -> {target}")
            return 0
        if args.source is None or args.target is None:
            raise CLIError(f"alias {args.action} needs SOURCE and TARGET")
        source = check_alias_source(args.source)
        target = check_address(args.target, "alias target")
        if args.action == "add":
            aliases.add_alias(source, target)
            remote = not stores.domains.has_domain(target.rpartition("@")[2])
            print(f"added alias {source} -> {target}"
                  + (" (forwarded through the outbound queue)" if remote else ""))
        else:
            aliases.remove_alias(source, target)
            print(f"removed alias {source} -> {target}")
        return 0


@contextlib.contextmanager
def _maintenance(args: argparse.Namespace, what: str) -> Iterator[Stores]:
    """Every store role, with the data directory locked against a running server."""
    from netpost.store.embedded import lock_data_dir, open_stores

    data = data_dir(args)
    if not (data / "netpost.db").exists():
        raise CLIError(f"{data} holds no netpost data (nothing to {what})")
    cfg = load(data / CONFIG_NAME)
    with lock_data_dir(data, f"netpost {what}"):
        stores = open_stores(data, small_body_limit=cfg.store.small_body_limit)
        try:
            yield stores
        finally:
            stores.close()


def cmd_gc(args: argparse.Namespace) -> int:
    with _maintenance(args, "gc") as stores:
        # The lock keeps every other writer out: bodies without a row are orphans at any age.
        report = stores.maintenance.collect_garbage_sync(0.0)
        print(report.describe())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from netpost.store.embedded import embedded_maintenance

    with _maintenance(args, "migrate") as stores:
        maintenance = embedded_maintenance(stores)
        if not maintenance.needs_migration():
            print("the data directory is already in the current layout")
            return 0
        report = maintenance.migrate(ProgressBar("moving small message files into blobs.db"))
        print(f"moved {report.moved} message bodies ({report.octets} octets) into blobs.db")
        if report.corrupt:
            print(f"{len(report.corrupt)} files do not match their digest and were left in "
                  "place: run 'netpost check'")
            return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from netpost.store.embedded import embedded_maintenance

    with _maintenance(args, "check") as stores:
        report = embedded_maintenance(stores).check(
            repair=args.repair, progress=ProgressBar("checking message bodies"))
    for line in report.lines():
        print(line)
    if report.lost or (report.problems and not args.repair):
        if not args.repair:
            print("run 'netpost check --repair' to fix what can be fixed")
        return 1
    return 0


def _account_mailbox(stores: Stores | AdminStores, address: str, name: str,
                     create: bool) -> tuple[Account, Mailbox]:
    account = stores.accounts.get_account(check_address(address))
    if account is None:
        raise CLIError(f"no user {address}")
    mailbox = stores.mailboxes.get_mailbox(account.id, name)
    if mailbox is None:
        if not create:
            raise CLIError(f"{account.address} has no mailbox {name!r}")
        mailbox = stores.mailboxes.create_mailbox(account.id, name)
    return account, mailbox


def cmd_import(args: argparse.Namespace) -> int:
    import asyncio

    from netpost.mail import mailfiles
    from netpost.mail.mailfiles import FileMessage
    from netpost.mail.transfer import ImportReport, existing_digests, import_messages

    path = Path(args.path)
    fmt = args.format
    if fmt == "auto":
        fmt = "maildir" if mailfiles.is_maildir(str(path)) else "mbox"
    if fmt == "mbox" and not path.is_file():
        raise CLIError(f"{path} is not an mbox file (for a Maildir give --format maildir)")
    if fmt == "maildir" and not mailfiles.is_maildir(str(path)):
        raise CLIError(f"{path} is not a Maildir (no cur/ or new/ in it)")
    with _maintenance(args, "import") as stores:
        _, mailbox = _account_mailbox(stores, args.user, args.mailbox, create=True)
        existing = existing_digests(stores.messages, mailbox)
        bar = ProgressBar(f"importing {path.name}")
        total = path.stat().st_size if fmt == "mbox" else sum(
            len(os.listdir(path / sub)) for sub in ("cur", "new") if (path / sub).is_dir())
        position = [0]

        def messages() -> Iterator[FileMessage]:
            if fmt == "mbox":
                with path.open("rb") as f:
                    for message, offset in mailfiles.read_mbox(f):
                        position[0] = offset
                        yield message
            else:
                for i, (_, message) in enumerate(mailfiles.read_maildir(str(path)), 1):
                    position[0] = i
                    yield message

        def progress(report: ImportReport) -> None:
            bar(min(position[0], total), total)

        report = asyncio.run(import_messages(
            messages(), mailbox=mailbox, target=stores.delivery,
            existing=existing, progress=progress))
    bar(total, total)
    rate = report.imported / report.seconds if report.seconds else 0.0
    print(f"imported {report.imported} messages into {args.user} {args.mailbox} "
          f"({rate:,.0f} msgs/s); {report.skipped} were there already")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from netpost.mail.transfer import export_maildir, export_mbox
    from netpost.store.embedded import open_stores

    data = data_dir(args)
    if not (data / "netpost.db").exists():
        raise CLIError(f"{data} holds no netpost data (nothing to export)")
    stores = open_stores(data)
    try:
        _, mailbox = _account_mailbox(stores, args.user, args.mailbox, create=False)
        bar = ProgressBar(f"exporting {args.mailbox}")
        if args.format == "mbox":
            n = export_mbox(stores.messages, stores.blobs, mailbox, args.path, bar)
            print(f"wrote {n} messages to {args.path}")
        else:
            written, present = export_maildir(stores.messages, stores.blobs, mailbox,
                                              args.path, bar)
            print(f"wrote {written} messages to {args.path}; {present} were there already")
    finally:
        stores.close()
    return 0


def _when(t: float | None) -> str:
    import time

    if t is None:
        return "-"
    from netpost.store.interfaces import HELD

    if t >= HELD:
        return "held for ETRN"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_queue(args: argparse.Namespace) -> int:
    """The outbound queue: what waits, why, and when it is tried next."""
    import time

    with _store(args) as stores:
        queue = stores.queue
        if args.action == "list":
            entries = queue.entries(limit=args.limit)
            if not entries:
                print("the queue is empty")
                return 0
            for e in entries:
                m = e.message
                print(f"{m.queue_id}  {m.blob.size:>9}  {_when(m.arrival)}  "
                      f"<{m.mail_from}>")
                for r in e.recipients:
                    reason = f"  ({r.last_error})" if r.last_error else ""
                    nxt = f" next {_when(r.next_attempt)}" if r.state in ("queued",
                                                                         "deferred") else ""
                    print(f"    {r.state:<9} <{r.address}> attempts {r.attempts}{nxt}{reason}")
            counts = queue.queue_counts()
            print("recipients: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
            return 0
        if args.action == "flush":
            n = queue.retry_now(time.time(), domain=args.id)
            print(f"{n} recipients due now (the running server starts within seconds)")
            return 0
        if args.id is None:
            raise CLIError(f"queue {args.action} needs a QUEUE_ID (see 'netpost queue list')")
        entry = queue.entry(args.id)
        if entry is None:
            raise CLIError(f"no queued message {args.id} (it may have been delivered)")
        if args.action == "show":
            m = entry.message
            print(f"queue id:  {m.queue_id}\nfrom:      <{m.mail_from}>\n"
                  f"arrived:   {_when(m.arrival)}\nsize:      {m.blob.size}\n"
                  f"submitted: {m.origin}\nbody:      sha256 {m.blob.sha256}\n"
                  f"dsn:       RET={m.ret or '-'} ENVID={m.envid or '-'}\n"
                  f"needs:     {'SMTPUTF8 ' if m.smtputf8 else ''}"
                  f"{'8BITMIME' if m.eightbit else '7bit'}")
            for r in entry.recipients:
                print(f"to <{r.address}>: {r.state}, {r.attempts} attempts, last "
                      f"{_when(r.last_attempt)}, next {_when(r.next_attempt)}"
                      + (f", via {r.remote_mta}" if r.remote_mta else "")
                      + (f"\n    last result: {r.status} {r.last_error}" if r.last_error
                         else ""))
            return 0
        if args.action == "retry":
            n = queue.retry_now(time.time(), queue_id=args.id)
            print(f"{n} recipients of {args.id} due now")
            return 0
        queue.remove(args.id)
        print(f"deleted {args.id} from the queue (no notice is sent to the sender)")
        return 0


def share_url(args: argparse.Namespace, token: str) -> str:
    """The URL of a share: [web] base_url, or http://[server] hostname and the http port."""
    from netpost.web.service import WebConfig

    cfg = load(data_dir(args) / CONFIG_NAME)
    web = cfg.services.get("web")
    base = web.base_url if isinstance(web, WebConfig) else ""
    if not base:
        address = cfg.listen_address("http") if "http" in cfg.listen else None
        port = address.port if address is not None else 10080
        base = f"http://{cfg.server.hostname}" + ("" if port == 80 else f":{port}")
    return f"{base.rstrip('/')}/s/{token}"


def cmd_share(args: argparse.Namespace) -> int:
    """Files and folders published over HTTP at unguessable URLs (the http listener)."""
    import time

    from netpost.files.tree import FileTree, NotFound, TreeError
    from netpost.files.trees import account_dir
    from netpost.web.shares import new_token as new_share_token

    with _store(args) as stores:
        shares = stores.shares
        if args.action == "list":
            user = check_address(args.arg) if args.arg is not None else None
            listed = shares.list_shares(user)
            if not listed and user is None:
                print("nothing is shared")
            now = time.time()
            for s in listed:
                when = ("expired" if s.expired(now) else
                        f"until {_when(s.expires)}" if s.expires is not None else "no expiry")
                print(f"{share_url(args, s.token)}  {s.address}  {s.path}  ({when})")
            return 0
        if args.action == "remove":
            if args.arg is None:
                raise CLIError("share remove needs the TOKEN (or URL) from 'netpost share list'")
            token = args.arg.rstrip("/").rpartition("/s/")[2].partition("/")[0] \
                if "/s/" in args.arg else args.arg
            if not shares.remove_share(token):
                raise CLIError(f"no share {token} (see 'netpost share list')")
            print(f"removed share {token}: its URL now answers 404")
            return 0
        if args.arg is None or args.path is None:
            raise CLIError("share add needs USER and PATH, e.g. 'netpost share add "
                           "alice@example.org /photos'")
        address = check_address(args.arg, "user")
        if stores.accounts.get_account(address) is None:
            raise CLIError(f"no user {address}")
        if args.expires is not None and not 0 < args.expires <= 36500:
            raise CLIError("--expires takes a number of days greater than 0")
        root = data_dir(args) / "files" / account_dir(address)
        if not root.is_dir():
            raise CLIError(f"{address} has no files yet (their uploads go to {root})")
        try:
            tree = FileTree(root)
            vpath = tree.resolve("/", args.path)
            tree.stat(vpath)
        except NotFound:
            raise CLIError(f"{address} has no file or folder {args.path} (the files they "
                           f"upload are in {root})") from None
        except TreeError as exc:
            raise CLIError(f"cannot share {args.path} of {address}: {exc}") from None
        expires = time.time() + args.expires * 86400 if args.expires is not None else None
        share = shares.add_share(new_share_token(), address, vpath, expires)
        print(share_url(args, share.token))
        print(f"shares {vpath} of {address}"
              + (f" until {_when(expires)}" if expires is not None else " until removed"))
        return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Bearer tokens of the web API: create (printed once), list, revoke."""
    from netpost.web.api.auth import make_credential

    with _store(args) as stores:
        tokens = stores.tokens
        if args.action == "list":
            user = check_address(args.arg) if args.arg is not None else None
            listed = tokens.list_tokens(user)
            if not listed:
                print("no API tokens")
            for t in listed:
                until = f"until {_when(t.expires)}" if t.expires is not None else "no expiry"
                print(f"{t.id}  {t.address}  {t.name or '-'}  made {_when(t.created)}  "
                      f"({until})")
            return 0
        if args.arg is None:
            raise CLIError(f"token {args.action} needs " + (
                "USER, e.g. 'netpost token create alice@example.org --name ci'"
                if args.action == "create" else "the token ID from 'netpost token list'"))
        if args.action == "revoke":
            token_id = args.arg.removeprefix("np_")[:16]
            found = tokens.get_token(token_id)
            if found is None or found.kind != "api" or not tokens.remove_token(token_id):
                raise CLIError(f"no API token {args.arg} (see 'netpost token list')")
            print(f"revoked token {token_id} of {found.address}")
            return 0
        address = check_address(args.arg, "user")
        if stores.accounts.get_account(address) is None:
            raise CLIError(f"no user {address}")
        if args.days is not None and not 0 < args.days <= 36500:
            raise CLIError("--days takes a number of days greater than 0")
        new = make_credential(tokens, address, "api", name=args.name or "",
                              lifetime=args.days * 86400 if args.days is not None else None)
        print(new.secret_text)
        print(f"API token {new.token.id} for {address}"
              + (f" until {_when(new.token.expires)}" if new.token.expires else "")
              + ": send it as 'Authorization: Bearer <token>'; it is shown only now",
              file=sys.stderr)
        return 0


def _lease_state(lease: Lease, now: float) -> str:
    """What a lease is now: a bound lease past its expiry is expired (its address is free)."""
    if lease.state == "bound" and lease.expires <= now:
        return "expired"
    if lease.state == "declined" and lease.expires <= now:
        return "free"  # the quarantine is over
    return lease.state


def cmd_leases(args: argparse.Namespace) -> int:
    """DHCP leases: who has which address until when."""
    import time

    from netpost.dhcp.packet import describe_key
    from netpost.dhcp.packet6 import describe_duid

    now = time.time()
    with _store(args) as stores:
        leases = stores.leases
        if args.action == "list":
            listed = [x for x in leases.list_leases()
                      if args.all or _lease_state(x, now) in ("bound", "declined")]
            if not listed:
                print("no active leases" + ("" if args.all else
                                           " ('netpost leases list --all' shows past ones)"))
                return 0
            width = max(16, *(len(x.address) for x in listed))  # v6 addresses are longer
            for x in listed:
                client = x.hardware or describe_key(x.client)
                print(f"{x.address:<{width}} {_lease_state(x, now):<9} {client:<18} "
                      f"until {_when(x.expires)}  {x.hostname}")
            return 0
        if args.address is None:
            raise CLIError(f"leases {args.action} needs an ADDRESS (see 'netpost leases list')")
        lease = leases.get_lease(args.address)
        if lease is None:
            raise CLIError(f"no lease of {args.address}")
        if args.action == "show":
            client = (describe_duid if lease.family == 6 else describe_key)(lease.client)
            print(f"address:  {lease.address}\nstate:    {_lease_state(lease, now)}"
                  f"\nclient:   {client}"
                  + (f" (IAID {lease.iaid})" if lease.iaid is not None else "")
                  + f"\nhardware: {lease.hardware or '-'}\nhostname: {lease.hostname or '-'}"
                  f"\nsubnet:   {lease.subnet or '-'}\nstarts:   {_when(lease.starts)}"
                  f"\nexpires:  {_when(lease.expires)}\nrelay:    {lease.relay or '-'}")
            return 0
        if _lease_state(lease, now) != "bound":
            raise CLIError(f"the lease of {lease.address} is {_lease_state(lease, now)}, not "
                           "bound: nothing to release")
        leases.release_lease(lease.address, now)
        print(f"released {lease.address}: a running server gives it to others from now on; "
              "the client keeps using it until it renews (and is then refused)")
        return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from netpost.net.trace import follow

    data = data_dir(args)
    cfg = load(data / CONFIG_NAME)
    path = data / cfg.trace.file
    if not cfg.trace.listeners:
        print(f"note: tracing is off in {data / CONFIG_NAME}; set [trace] listeners = [\"all\"] "
              "or start 'netpost serve --trace'", file=sys.stderr)
    print(f"following {path} (Ctrl-C to stop)", file=sys.stderr)
    try:
        follow(path, lambda line: print(line, flush=True), from_start=args.all)
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netpost",
        description="netpost: the Internet's application-layer services in one server with "
                    "embedded storage.",
        epilog="Start with 'netpost serve'; see 'netpost COMMAND --help' for each command.",
    )
    p.add_argument("--version", action="version", version=f"netpost {__version__}")
    p.add_argument("--data", metavar="DIR",
                   help="data directory (env NETPOST_DATA; default ./netpost-data)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run every service",
                       description="Run every service; prints where each listens.")
    s.add_argument("--config", metavar="FILE", help="config file (default DATA/netpost.toml)")
    s.add_argument("--listen", action="append", default=[], metavar="NAME=HOST:PORT",
                   help="override a listener's address, or NAME=off, or dhcp=IFACE / "
                        "dhcp6=IFACE (serve DHCP on that network interface); repeatable "
                        f"(names: {', '.join(default_registry().listener_names())})")
    s.add_argument("--trace", action="store_true", help="trace every session (see 'trace')")
    s.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    s.set_defaults(func=cmd_serve)

    i = sub.add_parser("init", help="write a commented netpost.toml with every default",
                       description="Write DATA/netpost.toml listing every setting at its "
                                   "default, with comments.")
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    i.set_defaults(func=cmd_init)

    d = sub.add_parser("domain", help="manage local mail domains")
    d.add_argument("action", choices=["add", "list", "del"])
    d.add_argument("domain", nargs="?", help="e.g. example.org")
    d.set_defaults(func=cmd_domain)

    dk = sub.add_parser("dkim", help="DKIM signing keys of local domains",
                        description="List keys, show the DNS TXT record of a domain's "
                                    "current key, or make a new key (a rotation when the "
                                    "domain has one: the old key stays for mail in flight).")
    dk.add_argument("action", choices=["list", "show", "new"])
    dk.add_argument("domain", nargs="?", help="e.g. example.org")
    dk.add_argument("--selector", help="new: the selector (default np + year and month)")
    dk.set_defaults(func=cmd_dkim)

    u = sub.add_parser("user", help="manage accounts (mail users) and their SSH keys",
                       description="Accounts: add, list, del, passwd, quota. SSH public keys "
                                   "for SFTP: 'user key add USER KEYFILE' (- reads standard "
                                   "input), 'user key list USER', 'user key remove USER "
                                   "FINGERPRINT'. OpenPGP key published by WKD: 'user "
                                   "pgp-key set USER FILE' (- reads standard input), 'user "
                                   "pgp-key show USER', 'user pgp-key remove USER'.")
    u.add_argument("action", choices=["add", "list", "del", "passwd", "quota", "key",
                                      "pgp-key"])
    u.add_argument("address", nargs="?", help="e.g. alice@example.org (key: add, list or "
                   "remove)")
    u.add_argument("size", nargs="?", help="quota: storage limit (RFC 9208), e.g. 2G, 500M, "
                   "0 for none, 'default' for [imap] quota (key: the user)")
    u.add_argument("extra", nargs="?", metavar="KEYFILE|FINGERPRINT",
                   help="key add: a public key file or -; key remove: the key's SHA256 "
                        "fingerprint")
    u.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    u.set_defaults(func=cmd_user)

    a = sub.add_parser("alias", help="manage aliases (SOURCE delivers to TARGET)")
    a.add_argument("action", choices=["add", "list", "del"])
    a.add_argument("source", nargs="?", help="address or @domain (catch-all)")
    a.add_argument("target", nargs="?", help="an address: a local account, or another "
                   "domain's (forwarded through the outbound queue)")
    a.set_defaults(func=cmd_alias)

    g = sub.add_parser("gc", help="collect message bodies nothing references (server stopped)",
                       description="Remove the bodies of expunged messages and what a crash "
                                   "left behind, and hand the space back; reports what it "
                                   "freed. The running server does this every 10 minutes.")
    g.set_defaults(func=cmd_gc)

    m = sub.add_parser("migrate", help="move a netpost 0.1 data directory to the current layout",
                       description="Move small message files into blobs.db (resumable; "
                                   "'netpost serve' also does it at start).")
    m.set_defaults(func=cmd_migrate)

    c = sub.add_parser("check", help="verify every message body and reference (fsck)",
                       description="Verify every message's body against its sha256 and every "
                                   "reference count; report what a crash or a disk error "
                                   "left. Exit status 1 if a problem remains.")
    c.add_argument("--repair", action="store_true",
                   help="fix what can be fixed (never deletes a message still referenced)")
    c.set_defaults(func=cmd_check)

    im = sub.add_parser("import", help="import an mbox file or a Maildir into a mailbox",
                        description="Append the messages of an mbox file or a Maildir to a "
                                    "mailbox (made if missing), with their flags and dates. "
                                    "Resumable: a message already in the mailbox is skipped, "
                                    "so a re-run adds only what is missing.")
    im.add_argument("path", help="mbox file or Maildir directory")
    im.add_argument("--user", required=True, help="the account, e.g. alice@example.org")
    im.add_argument("--mailbox", default="INBOX", help="target mailbox (default INBOX)")
    im.add_argument("--format", choices=["auto", "mbox", "maildir"], default="auto",
                    help="default: Maildir if PATH has cur/ or new/, else mbox")
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="write a mailbox out as an mbox file or a Maildir",
                        description="Write a mailbox's messages with flags and dates. mbox "
                                    "(mboxrd) replaces PATH whole; Maildir adds what is not "
                                    "there yet.")
    ex.add_argument("path", help="mbox file or Maildir directory to write")
    ex.add_argument("--user", required=True, help="the account, e.g. alice@example.org")
    ex.add_argument("--mailbox", default="INBOX", help="mailbox to export (default INBOX)")
    ex.add_argument("--format", choices=["mbox", "maildir"], default="mbox")
    ex.set_defaults(func=cmd_export)

    q = sub.add_parser("queue", help="the outbound queue: list, show, retry, delete, flush",
                       description="Mail waiting for other domains. list: each message with "
                                   "its recipients' state, next attempt and last error; "
                                   "show ID; retry ID (try now); delete ID (drop it, no "
                                   "notice); flush [DOMAIN] (everything, or one domain's "
                                   "mail incl. mail held for ETRN, is tried now).")
    q.add_argument("action", choices=["list", "show", "retry", "delete", "flush"])
    q.add_argument("id", nargs="?", metavar="QUEUE_ID|DOMAIN",
                   help="a queue id from 'list' (flush: a domain)")
    q.add_argument("--limit", type=int, default=1000, help="list at most this many messages")
    q.set_defaults(func=cmd_queue)

    sh = sub.add_parser("share", help="publish a user's file or folder at a URL (HTTP)",
                        description="add USER PATH: publish a file or folder of USER's file "
                                    "tree (the one FTP shows them) at an unguessable URL on "
                                    "the http listener, printed; list [USER]; remove TOKEN "
                                    "(or the URL): the URL answers 404 from then on.")
    sh.add_argument("action", choices=["add", "list", "remove"])
    sh.add_argument("arg", nargs="?", metavar="USER|TOKEN",
                    help="add, list: the account; remove: the token or URL")
    sh.add_argument("path", nargs="?", help="add: the path in the user's tree, e.g. /photos")
    sh.add_argument("--expires", type=float, metavar="DAYS",
                    help="add: the URL stops working after this many days (410 Gone)")
    sh.set_defaults(func=cmd_share)

    tk = sub.add_parser("token", help="web API tokens: create, list, revoke",
                        description="Bearer tokens for the web API (/api/v1, docs/api.md). "
                                    "create USER: print a new token (only its hash is kept: "
                                    "it is shown once); list [USER]; revoke ID. A token acts "
                                    "as its user, with the user's role ([web] admins).")
    tk.add_argument("action", choices=["create", "list", "revoke"])
    tk.add_argument("arg", nargs="?", metavar="USER|ID",
                    help="create, list: the account; revoke: the token's id")
    tk.add_argument("--name", help="create: what the token is for (shown by list)")
    tk.add_argument("--days", type=float, help="create: the token expires after this many days")
    tk.set_defaults(func=cmd_token)

    le = sub.add_parser("leases", help="DHCP leases: list, show, release",
                        description="The addresses the DHCP server has given out. list: "
                                    "active leases (--all: released, expired and declined "
                                    "ones too) with client, expiry and hostname; show "
                                    "ADDRESS: everything known of one; release ADDRESS: end "
                                    "a lease now (the running server sees it within a second "
                                    "and NAKs the client's next renewal).")
    le.add_argument("action", choices=["list", "show", "release"])
    le.add_argument("address", nargs="?", metavar="ADDRESS", help="e.g. 10.99.0.147")
    le.add_argument("--all", action="store_true", help="list: past leases too")
    le.set_defaults(func=cmd_leases)

    t = sub.add_parser("trace", help="follow the protocol trace live",
                       description="Print protocol trace lines as sessions talk.")
    t.add_argument("--all", action="store_true", help="start from the beginning of the file")
    t.set_defaults(func=cmd_trace)

    from netpost.agent.cli import add_parser as add_mail_parser

    add_mail_parser(sub)  # netpost mail ...: the user agent (docs/agent.md)
    return p


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["mail"]:  # the user agent: a start-up without the services' imports
        from netpost.agent.cli import main as mail_main

        return mail_main(given[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    needs_arg = {"domain": "domain", "user": "address"}
    if args.command in needs_arg and args.action != "list" and \
            getattr(args, needs_arg[args.command]) is None:
        parser.error(f"{args.command} {args.action} needs {needs_arg[args.command].upper()}")
    from netpost.store.interfaces import StoreError

    try:
        return int(args.func(args))
    except (CLIError, ConfigError, StoreError, AgentError) as exc:
        print(f"netpost: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
