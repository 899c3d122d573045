"""The server secrets blobs are encrypted with, kept in one JSON file (mode 0600).

    {"current": 2, "keys": {"1": "<base64 of 32 bytes>", "2": "..."}}

Blobs name the id of the secret they were sealed with, so a rotation adds a
secret and makes it current while older blobs stay readable until they are
re-sealed. Another process (`mailyard keys rotate`) may add a secret while a
server runs: the server rereads the file when the file changed (for writes,
at most once a second) or when a blob names an id it does not know.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from pathlib import Path

from mailyard.store.errors import StorageError

SECRET_BYTES = 32
MAX_KEY_ID = 0xFFFF  # ids are two bytes in the blob header; 0 means "not encrypted"
RELOAD_INTERVAL = 1.0


class MissingKey(StorageError):
    """A blob was sealed with a secret this keyring does not hold."""


class Keyring:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._secrets: dict[int, bytes] = {}
        self._current = 0
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def open(self, create: bool = True) -> "Keyring":
        """Loads the file, first writing one with a fresh secret when there is
        none and `create` (a new data directory)."""
        if not self.path.exists():
            if not create:
                raise StorageError(f"blob keys: {self.path} does not exist")
            self._write({1: secrets.token_bytes(SECRET_BYTES)}, 1, exclusive=True)
        self._load()
        return self

    @property
    def current(self) -> int:
        if time.monotonic() - self._checked > RELOAD_INTERVAL:
            self._reload_if_changed()
        return self._current

    def ids(self) -> list[int]:
        return sorted(self._secrets)

    def secret(self, key_id: int) -> bytes:
        """The secret of `key_id`; MissingKey, naming the file, when it is not there."""
        if key_id not in self._secrets:
            self._reload_if_changed()
        try:
            return self._secrets[key_id]
        except KeyError:
            raise MissingKey(
                f"blob keys: key id {key_id} is not in {self.path} (it holds "
                f"{', '.join(map(str, self.ids())) or 'none'}); restore the keys file "
                f"this data was written with") from None

    def rotate(self) -> int:
        """Adds a new secret, makes it current and returns its id."""
        with self._lock:
            self._load()
            new_id = max(self._secrets, default=0) + 1
            if new_id > MAX_KEY_ID:
                raise StorageError(f"blob keys: {self.path} has used every key id")
            self._write({**self._secrets, new_id: secrets.token_bytes(SECRET_BYTES)}, new_id)
            self._load()
            return new_id

    def refresh(self) -> None:
        """Rereads the file now if it changed (another process rotated)."""
        self._reload_if_changed()

    # --- the file --------------------------------------------------------
    def _reload_if_changed(self) -> None:
        self._checked = time.monotonic()
        try:
            stat = self.path.stat()
        except OSError:
            return  # keep what was loaded; a missing id still fails clearly
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
            document = json.loads(self.path.read_text())
            loaded = {int(k): base64.b64decode(v, validate=True)
                      for k, v in document["keys"].items()}
            current = int(document["current"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"blob keys: cannot read {self.path}: {exc}") from exc
        if current not in loaded or any(len(s) != SECRET_BYTES for s in loaded.values()):
            raise StorageError(f"blob keys: {self.path} is inconsistent (current key {current} "
                               f"missing or a secret not {SECRET_BYTES} bytes)")
        self._secrets, self._current = loaded, current
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        self._checked = time.monotonic()

    def _write(self, keys: dict[int, bytes], current: int, exclusive: bool = False) -> None:
        """Writes the file whole (temporary file, fsync, rename) so a reader
        never sees half of it; 0600 from the start."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"current": current,
                    "keys": {str(k): base64.b64encode(v).decode() for k, v in sorted(keys.items())}}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:  # two first starts at once: the first file wins, the other is dropped
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            os.unlink(tmp)
        else:
            os.replace(tmp, self.path)
