"""One `FileTree` per account, shared by every protocol that serves the account's files.

FTP and SFTP sessions of the same account get the same object, so its quota count (usage plus
the bytes running uploads reserve) covers both.  Built once by `services.build_services` as
`Services.files`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from netpost.files.tree import FileTree, NotAllowed


def account_dir(address: str) -> str:
    """The directory name of an account's tree: its address (normalised, lower case)."""
    name = address.strip().lower()
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise NotAllowed(f"no file tree for {address!r}")
    return name


class FileTrees:
    """The accounts' trees under `root` (DATA/files/<address>/), each with `quota` octets
    (None: no limit)."""

    def __init__(self, root: Path, quota: int | None = None) -> None:
        self.root = root
        self.quota = quota
        self._trees: dict[str, FileTree] = {}
        self._lock = threading.Lock()

    def cached(self, account: str) -> FileTree | None:
        """The account's tree if it was made already (never blocks), else None."""
        try:
            return self._trees.get(account_dir(account))
        except NotAllowed:
            return None

    def tree(self, account: str) -> FileTree:
        """The account's tree (made on first use; may block briefly: a mkdir)."""
        name = account_dir(account)
        with self._lock:
            tree = self._trees.get(name)
            if tree is None:
                tree = self._trees[name] = FileTree(self.root / name, self.quota)
            return tree
