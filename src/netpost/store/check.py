"""`netpost check`: is every message's content there, intact, and counted right?

What is checked, for the embedded backend:

* every blob row's reference count against the messages that use it, and every digest a
  message uses has a row;
* every referenced body is readable, its size and sha256 what its name says (both places a
  body may live, blobs.db and the files, are read: a good copy in one repairs a bad one in the
  other);
* stored content no row knows about (left by a crash between writing a body and committing its
  message) and rows no message uses any more (awaiting garbage collection).

With `repair`: reference counts are set to what the messages say, a bad copy is removed where a
good one exists, orphaned content and unreferenced bodies are collected.  A message whose
content is lost everywhere is reported with its account, mailbox and UID and never removed:
nothing still referenced is ever deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from netpost.store.blobs import FileBlobStore
from netpost.store.dbblobs import SQLiteBlobStore
from netpost.store.interfaces import BlobRef, blob_ref
from netpost.store.sqlite import SQLiteStore

Progress = Callable[[int, int], None]


@dataclass
class CheckReport:
    bodies: int = 0  # referenced bodies verified
    refcounts_wrong: list[str] = field(default_factory=list)
    bad_copies: list[str] = field(default_factory=list)  # a copy that does not match, good one kept
    lost: list[tuple[str, list[tuple[str, str, int]]]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # content without a row
    unreferenced: int = 0  # rows with no message: awaiting garbage collection
    repaired: bool = False

    @property
    def problems(self) -> int:
        return (len(self.refcounts_wrong) + len(self.bad_copies) + len(self.lost)
                + len(self.orphans))

    def lines(self) -> list[str]:
        out = [f"checked {self.bodies} message {'body' if self.bodies == 1 else 'bodies'}"]
        fixed = " (repaired)" if self.repaired else ""
        if self.refcounts_wrong:
            out.append(f"{len(self.refcounts_wrong)} reference counts were wrong{fixed}")
        if self.bad_copies:
            out.append(f"{len(self.bad_copies)} damaged copies of bodies that have a good copy"
                       f"{' (removed)' if self.repaired else ''}")
        if self.orphans:
            out.append(f"{len(self.orphans)} stored bodies belong to no message"
                       f"{' (removed)' if self.repaired else ''}")
        if self.unreferenced:
            out.append(f"{self.unreferenced} bodies await garbage collection"
                       f"{' (collected)' if self.repaired else ''}")
        for sha, messages in self.lost:
            where = ", ".join(f"{a} {m} UID {u}" for a, m, u in messages[:5])
            more = f" and {len(messages) - 5} more" if len(messages) > 5 else ""
            out.append(f"LOST: content {sha[:16]}... of {where}{more} is missing or damaged "
                       "everywhere (the messages are kept; restore the body from a backup)")
        if not self.problems:
            out.append("no problems found")
        return out


def _good(data: bytes | None, ref: BlobRef) -> bool:
    return data is not None and len(data) == ref.size and blob_ref(data).sha256 == ref.sha256


def check_store(meta: SQLiteStore, small: SQLiteBlobStore, large: FileBlobStore, *,
                repair: bool = False, progress: Progress | None = None) -> CheckReport:
    report = CheckReport(repaired=repair)
    accounting = meta.blob_accounting()
    referenced = [row for row in accounting if row[3] > 0]
    known = {row[0] for row in accounting}
    total = len(referenced)
    if progress is not None:
        progress(0, total)
    for i, (sha, size, refcount, count) in enumerate(accounting):
        if refcount != count:
            if count == 0 and refcount == 0:
                report.unreferenced += 1
            else:
                report.refcounts_wrong.append(sha)
                if repair:
                    meta.repair_refcount(sha, size, count)
        if count == 0:
            continue
        ref = BlobRef(sha, size)
        report.bodies += 1
        in_db = small.get(ref)
        try:
            in_file: bytes | None = large.read(ref)
        except FileNotFoundError:
            in_file = None
        copies = [(name, data) for name, data in (("db", in_db), ("file", in_file))
                  if data is not None]
        good = [name for name, data in copies if _good(data, ref)]
        bad = [name for name, data in copies if not _good(data, ref)]
        if not good:
            report.lost.append((sha, meta.messages_with_blob(sha)))
        elif bad:
            report.bad_copies.append(sha)
            if repair:
                (small if bad[0] == "db" else large).delete(ref)
        if progress is not None and (i % 256 == 0 or i == len(accounting) - 1):
            progress(min(report.bodies, total), total)
    for sha, _ in list(small.stored()) + list(large.stored()):
        if sha not in known:
            report.orphans.append(sha)
    if repair:
        orphans = [BlobRef(sha, 0) for sha in report.orphans]
        small.delete_many(orphans)
        large.delete_many(orphans)
        unreferenced = meta.unreferenced_blobs()
        small.delete_many(unreferenced)
        large.delete_many(unreferenced)
        meta.forget_blobs([r.sha256 for r in unreferenced])
        small.reclaim()
    if progress is not None:
        progress(total, total)
    return report
