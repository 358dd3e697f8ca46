"""What an administrator does with the CLI, over the web API: domains (and the DKIM records to
publish), accounts, passwords, quotas, aliases, the outbound queue, shares, DHCP leases.

Users reach the parts that are theirs: their own account (password change with the current
password), their own shares.  Anything else of another account is 404 to them, as if it did
not exist (IDOR: a user cannot even learn which addresses exist).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydantic import BaseModel, Field

from netpost.auth.passwords import hash_password, verify_password
from netpost.files.tree import FileTree, NotFound, TreeError
from netpost.files.trees import FileTrees, account_dir
from netpost.mail import address as names
from netpost.services import Services
from netpost.store.interfaces import HELD, Lease, QueueEntry, Share
from netpost.web.api.auth import WebAuth
from netpost.web.api.framework import MAX_ID, Access, ApiError, Call, Endpoint
from netpost.web.api.models import (
    AccountCreate,
    AccountInfo,
    AccountList,
    Alias,
    AliasCreate,
    AliasList,
    Count,
    DKIMRecord,
    DomainCreate,
    DomainList,
    Ok,
    PasswordChange,
    QueueList,
    QueueMessage,
    QueueRecipient,
    QuotaChange,
    ShareCreate,
    ShareInfo,
    ShareList,
)
from netpost.web.shares import PREFIX as SHARE_PREFIX
from netpost.web.shares import new_token as new_share_token


class AliasQuery(BaseModel):
    source: str = Field(min_length=1, max_length=320)
    target: str = Field(min_length=1, max_length=320)


class QueueQuery(BaseModel):
    limit: int = Field(100, ge=1, le=1000)
    after: int = Field(0, ge=0, le=MAX_ID, description="the id after which to list (paging)")


class FlushQuery(BaseModel):
    domain: str | None = Field(None, max_length=253)


class LeaseInfo(BaseModel):
    address: str
    state: str
    client: str
    hardware: str
    hostname: str
    subnet: str
    starts: float
    expires: float


class LeaseList(BaseModel):
    leases: list[LeaseInfo]


class LeaseQuery(BaseModel):
    all: bool = Field(False, description="also leases that ended")


def _domain(name: str) -> str:
    try:
        return names.parse_domain(name)
    except names.InvalidDomain:
        raise ApiError(400, f"{name!r} is not a valid domain name") from None


def _address(text: str) -> str:
    try:
        return names.parse_address(text)[0]
    except names.InvalidAddress:
        raise ApiError(400, f"{text!r} is not a valid address") from None


def dkim_record(data: Path, domain: str, make: bool = False) -> DKIMRecord | None:
    from netpost.mail import dkim

    try:
        key = dkim.current_key(data, domain)
        if key is None and make:
            key = dkim.create_key(data, domain)
        if key is None:
            return None
        value = key.record_value()
    except dkim.DKIMError as exc:
        raise ApiError(400, str(exc)) from None
    strings = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return DKIMRecord(domain=domain, selector=key.selector, name=key.record_name, value=value,
                      zone=f"{key.record_name}. IN TXT {strings}")


def queue_message(e: QueueEntry) -> QueueMessage:
    m = e.message
    return QueueMessage(
        queue_id=m.queue_id, mail_from=m.mail_from, arrival=m.arrival, size=m.blob.size,
        origin=m.origin,
        recipients=[QueueRecipient(
            address=r.address, state=r.state, attempts=r.attempts,
            next_attempt=None if r.next_attempt >= HELD else r.next_attempt,
            last_attempt=r.last_attempt, last_error=r.last_error, status=r.status,
            remote_mta=r.remote_mta, held=r.next_attempt >= HELD) for r in e.recipients])


class AdminApi:
    def __init__(self, services: Services, auth: WebAuth, *, base_url: str) -> None:
        self.s = services
        self.stores = services.stores
        self.auth = auth
        self.base_url = base_url
        assert services.data_dir is not None and services.files is not None
        self.data: Path = services.data_dir
        self.trees: FileTrees = services.files

    def endpoints(self) -> list[Endpoint]:
        a: Access = "admin"
        return [
            Endpoint("GET", "/domains", self.list_domains, "Local mail domains", "domains",
                     access=a, response=DomainList),
            Endpoint("POST", "/domains", self.add_domain, "Add a domain (makes its DKIM key: "
                     "publish the record answered)", "domains", access=a, body=DomainCreate,
                     response=DKIMRecord, status=201),
            Endpoint("DELETE", "/domains/{name}", self.remove_domain, "Remove a domain without "
                     "accounts or aliases", "domains", access=a, response=Ok),
            Endpoint("GET", "/domains/{name}/dkim", self.get_dkim, "The DKIM TXT record to "
                     "publish for the domain", "domains", access=a, response=DKIMRecord),
            Endpoint("GET", "/accounts", self.list_accounts, "Accounts", "accounts", access=a,
                     response=AccountList),
            Endpoint("POST", "/accounts", self.add_account, "Add an account (its mailboxes are "
                     "made)", "accounts", access=a, body=AccountCreate, response=AccountInfo,
                     status=201),
            Endpoint("GET", "/accounts/{address}", self.get_account, "One account (users: "
                     "their own)", "accounts", response=AccountInfo),
            Endpoint("DELETE", "/accounts/{address}", self.remove_account, "Remove an account "
                     "and its mail", "accounts", access=a, response=Ok),
            Endpoint("PUT", "/accounts/{address}/password", self.set_password, "Change a "
                     "password (users: their own, with the current one)", "accounts",
                     body=PasswordChange, response=Ok),
            Endpoint("PUT", "/accounts/{address}/quota", self.set_quota, "Set the storage "
                     "quota", "accounts", access=a, body=QuotaChange, response=Ok),
            Endpoint("GET", "/aliases", self.list_aliases, "Aliases", "aliases", access=a,
                     response=AliasList),
            Endpoint("POST", "/aliases", self.add_alias, "Add an alias (source: local@domain or "
                     "@domain)", "aliases", access=a, body=AliasCreate, response=Alias,
                     status=201),
            Endpoint("DELETE", "/aliases", self.remove_alias, "Remove an alias", "aliases",
                     access=a, query=AliasQuery, response=Ok),
            Endpoint("GET", "/queue", self.list_queue, "The outbound queue, in arrival order",
                     "queue", access=a, query=QueueQuery, response=QueueList),
            Endpoint("GET", "/queue/{queue_id}", self.get_queued, "One queued message", "queue",
                     access=a, response=QueueMessage),
            Endpoint("POST", "/queue/{queue_id}/retry", self.retry_queued, "Try a queued "
                     "message's recipients now", "queue", access=a, response=Count),
            Endpoint("DELETE", "/queue/{queue_id}", self.delete_queued, "Delete a queued "
                     "message (no notice is sent)", "queue", access=a, response=Ok),
            Endpoint("POST", "/queue/flush", self.flush_queue, "Make every waiting recipient "
                     "(or one domain's) due now", "queue", access=a, query=FlushQuery,
                     response=Count),
            Endpoint("GET", "/shares", self.list_shares, "Shared files and folders (users: "
                     "theirs; admins: all)", "shares", response=ShareList),
            Endpoint("POST", "/shares", self.add_share, "Share a file or folder of your tree "
                     "at an unguessable URL", "shares", body=ShareCreate, response=ShareInfo,
                     status=201),
            Endpoint("DELETE", "/shares/{token}", self.remove_share, "Stop sharing", "shares",
                     response=Ok),
            Endpoint("GET", "/leases", self.list_leases, "DHCP leases", "dhcp", access=a,
                     query=LeaseQuery, response=LeaseList),
        ]

    # --- domains ---------------------------------------------------------------------------

    async def list_domains(self, call: Call) -> DomainList:
        return DomainList(domains=self.stores.domains.list_domains())

    async def add_domain(self, call: Call) -> DKIMRecord:
        name = _domain(call.body.name)
        if self.stores.domains.has_domain(name):
            raise ApiError(409, f"domain {name} exists already")
        self.stores.domains.add_domain(name)
        record = await asyncio.to_thread(dkim_record, self.data, name, True)
        assert record is not None
        return record

    async def remove_domain(self, call: Call) -> Ok:
        name = _domain(call.path["name"])
        if not self.stores.domains.has_domain(name):
            raise ApiError(404, f"no domain {name}")
        self.stores.domains.remove_domain(name)
        return Ok(detail=f"removed domain {name}")

    async def get_dkim(self, call: Call) -> DKIMRecord:
        name = _domain(call.path["name"])
        if not self.stores.domains.has_domain(name):
            raise ApiError(404, f"no domain {name}")
        record = dkim_record(self.data, name)
        if record is None:
            raise ApiError(404, f"{name} has no DKIM key")
        return record

    # --- accounts --------------------------------------------------------------------------

    def _info(self, address: str, detail: bool = False) -> AccountInfo:
        info = AccountInfo(address=address, admin=self.auth.is_admin(address))
        if detail:
            account = self.stores.accounts.get_account(address)
            if account is not None:
                usage, count = self.stores.messages.account_usage(account.id)
                info.usage, info.messages = usage, count
                info.quota = self.stores.messages.account_quota(account.id)
        return info

    def _own_or_admin(self, call: Call) -> str:
        """The account the path names, if the caller may see it (else 404, as for none)."""
        address = names.normalize_address(str(call.path["address"]))
        if address != call.user.address and not call.user.admin:
            raise ApiError(404, "no such account")
        if self.stores.accounts.get_account(address) is None:
            raise ApiError(404, "no such account")
        return address

    async def list_accounts(self, call: Call) -> AccountList:
        return AccountList(accounts=[self._info(a.address)
                                     for a in self.stores.accounts.list_accounts()])

    async def add_account(self, call: Call) -> AccountInfo:
        body: AccountCreate = call.body
        address = _address(body.address)
        domain = address.rpartition("@")[2]
        if not self.stores.domains.has_domain(domain):
            raise ApiError(400, f"unknown domain {domain}: add it first")
        if self.stores.accounts.get_account(address) is not None:
            raise ApiError(409, f"user {address} already exists")
        hashed = await asyncio.to_thread(hash_password, body.password)
        self.stores.accounts.add_account(address, hashed)
        return self._info(address, detail=True)

    async def get_account(self, call: Call) -> AccountInfo:
        return self._info(self._own_or_admin(call), detail=True)

    async def remove_account(self, call: Call) -> Ok:
        address = self._own_or_admin(call)
        if address == call.user.address:
            raise ApiError(409, "you cannot remove the account you are logged in as")
        self.stores.accounts.remove_account(address)
        from netpost.sftp.keys import AuthorizedKeys

        AuthorizedKeys(self.data).drop(address)
        return Ok(detail=f"removed user {address} and its mail")

    async def set_password(self, call: Call) -> Ok:
        address = self._own_or_admin(call)
        body: PasswordChange = call.body
        if not call.user.admin or address == call.user.address:
            account = self.stores.accounts.get_account(address)
            assert account is not None
            ok = body.current_password is not None and await asyncio.to_thread(
                verify_password, account.password_hash, body.current_password)
            if not ok:
                raise ApiError(403, "the current password is wrong or missing")
        hashed = await asyncio.to_thread(hash_password, body.password)
        self.stores.accounts.set_password_hash(address, hashed)
        self.s.auth.cache.forget(address)
        return Ok(detail=f"changed the password of {address}")

    async def set_quota(self, call: Call) -> Ok:
        address = self._own_or_admin(call)
        self.stores.accounts.set_account_quota(address, call.body.octets)
        return Ok(detail=f"quota of {address} set")

    # --- aliases ---------------------------------------------------------------------------

    async def list_aliases(self, call: Call) -> AliasList:
        return AliasList(aliases=[Alias(source=s, target=t)
                                  for s, t in self.stores.aliases.list_aliases()])

    async def add_alias(self, call: Call) -> Alias:
        body: AliasCreate = call.body
        try:
            source = names.parse_alias_source(body.source)[0]
        except (names.InvalidAddress, names.InvalidDomain):
            raise ApiError(400, f"{body.source!r} is not a valid alias source") from None
        target = _address(body.target)
        if (source, target) in self.stores.aliases.list_aliases():
            raise ApiError(409, "that alias exists already")
        self.stores.aliases.add_alias(source, target)
        return Alias(source=source, target=target)

    async def remove_alias(self, call: Call) -> Ok:
        q: AliasQuery = call.query
        pair = (q.source.lower(), q.target.lower())
        if pair not in self.stores.aliases.list_aliases():
            raise ApiError(404, "no such alias")
        self.stores.aliases.remove_alias(*pair)
        return Ok(detail=f"removed alias {pair[0]} -> {pair[1]}")

    # --- queue -----------------------------------------------------------------------------

    async def list_queue(self, call: Call) -> QueueList:
        q: QueueQuery = call.query
        entries = self.stores.queue.entries(limit=q.limit, after_id=q.after)
        return QueueList(messages=[queue_message(e) for e in entries],
                         counts=self.stores.queue.queue_counts())

    def _entry(self, call: Call) -> QueueEntry:
        entry = self.stores.queue.entry(str(call.path["queue_id"]))
        if entry is None:
            raise ApiError(404, "no such queued message (it may have been delivered)")
        return entry

    async def get_queued(self, call: Call) -> QueueMessage:
        return queue_message(self._entry(call))

    async def retry_queued(self, call: Call) -> Count:
        entry = self._entry(call)
        n = self.stores.queue.retry_now(time.time(), queue_id=entry.message.queue_id)
        if self.s.relay is not None:
            self.s.relay.wake()
        return Count(count=n)

    async def delete_queued(self, call: Call) -> Ok:
        entry = self._entry(call)
        self.stores.queue.remove(entry.message.queue_id)
        return Ok(detail=f"deleted {entry.message.queue_id} (no notice is sent)")

    async def flush_queue(self, call: Call) -> Count:
        n = self.stores.queue.retry_now(time.time(), domain=call.query.domain)
        if self.s.relay is not None:
            self.s.relay.wake()
        return Count(count=n)

    # --- shares ----------------------------------------------------------------------------

    def _share_info(self, call: Call, s: Share) -> ShareInfo:
        base = self.base_url or str(call.request.base_url)
        return ShareInfo(token=s.token, address=s.address, path=s.path,
                         url=f"{base.rstrip('/')}{SHARE_PREFIX}{s.token}",
                         created=s.created, expires=s.expires)

    async def list_shares(self, call: Call) -> ShareList:
        who = None if call.user.admin else call.user.address
        return ShareList(shares=[self._share_info(call, s)
                                 for s in self.stores.shares.list_shares(who)])

    async def add_share(self, call: Call) -> ShareInfo:
        body: ShareCreate = call.body
        address = call.user.address
        if body.address is not None and names.normalize_address(body.address) != address:
            if not call.user.admin:
                raise ApiError(403, "you may share only your own files")
            address = _address(body.address)
            if self.stores.accounts.get_account(address) is None:
                raise ApiError(404, "no such account")

        def find() -> str:
            root = self.data / "files" / account_dir(address)
            if not root.is_dir():
                raise ApiError(404, f"{address} has no files yet")
            tree = FileTree(root)
            try:
                vpath = tree.resolve("/", body.path)
                tree.stat(vpath)
            except NotFound:
                raise ApiError(404, f"no file or folder {body.path}") from None
            except TreeError as exc:
                raise ApiError(400, f"cannot share {body.path}: {exc}") from None
            return vpath

        vpath = await asyncio.to_thread(find)
        expires = time.time() + body.days * 86400 if body.days is not None else None
        share = self.stores.shares.add_share(new_share_token(), address, vpath,
                                             expires)
        return self._share_info(call, share)

    async def remove_share(self, call: Call) -> Ok:
        share = self.stores.shares.get_share(str(call.path["token"]))
        if share is None or (share.address != call.user.address and not call.user.admin):
            raise ApiError(404, "no such share")
        self.stores.shares.remove_share(share.token)
        return Ok(detail="removed the share: its URL now answers 404")

    # --- DHCP leases -----------------------------------------------------------------------

    async def list_leases(self, call: Call) -> LeaseList:
        from netpost.dhcp.packet import describe_key

        now = time.time()

        def state(x: Lease) -> str:
            if x.state == "bound" and x.expires <= now:
                return "expired"
            if x.state == "declined" and x.expires <= now:
                return "free"
            return x.state

        out = []
        for x in self.stores.leases.list_leases():
            st = state(x)
            if not call.query.all and st not in ("bound", "declined"):
                continue
            out.append(LeaseInfo(address=x.address, state=st, client=describe_key(x.client),
                                 hardware=x.hardware, hostname=x.hostname, subnet=x.subnet,
                                 starts=x.starts, expires=x.expires))
        return LeaseList(leases=out)

