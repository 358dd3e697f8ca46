"""The NTS server's cookie keys on disk (DATA/ntp/nts-keys.json, mode 0600).

A restart keeps the keys, so cookies that clients hold stay valid; a key older than the
rotation interval gets a successor, and the newest `keep` keys are kept (RFC 8915 §6: "the
server SHOULD ... periodically rotate" the key, keeping old ones long enough for the cookies
made with them).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from netpost.ntp.nts import KEY_SIZE, CookieKey, CookieKeys

KEY_FILE = Path("ntp") / "nts-keys.json"


class KeyStore:
    def __init__(self, path: Path, *, rotation: float, keep: int) -> None:
        self.path = path
        self.rotation = rotation
        self.keep = max(keep, 1)
        self.keys = CookieKeys(self._load() or [self._new([])])

    def _load(self) -> list[CookieKey]:
        try:
            raw = json.loads(self.path.read_text())
            keys = [CookieKey(int(k["id"]), bytes.fromhex(k["key"]), float(k["created"]))
                    for k in raw["keys"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path}: not a key file netpost wrote ({exc})") from None
        if any(len(k.key) != KEY_SIZE for k in keys):
            raise ValueError(f"{self.path}: a key is not {KEY_SIZE} octets")
        return sorted(keys, key=lambda k: k.created, reverse=True)

    def _new(self, existing: list[CookieKey]) -> CookieKey:
        used = {k.key_id for k in existing}
        key_id = secrets.randbits(32)
        while key_id in used:
            key_id = secrets.randbits(32)
        key = CookieKey(key_id, secrets.token_bytes(KEY_SIZE), time.time())
        self._save([key, *existing][:self.keep])
        return key

    def _save(self, keys: list[CookieKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"keys": [{"id": k.key_id, "key": k.key.hex(), "created": k.created}
                                    for k in keys]})
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def rotate_if_due(self, now: float | None = None) -> bool:
        """Make a new current key when the current one is older than `rotation`."""
        now = time.time() if now is None else now
        if now - self.keys.current.created < self.rotation:
            return False
        self.rotate()
        return True

    def rotate(self) -> None:
        existing = self.keys.keys
        key = self._new(existing)
        self.keys = CookieKeys([key, *existing][:self.keep])
