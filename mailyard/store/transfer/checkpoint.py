"""How far an import of one source for one user got, so a second run goes on
from there: the number of messages, in the source's order, whose writes are
all durable, and a digest of their ids. The next run recomputes the ids of
that many messages and skips them only if the digest matches, so an edited
source is imported afresh (and the deterministic ids still prevent
duplicates). Written after the writes it covers, by rename, so it can lag
behind the store after a crash but never run ahead of it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


class Checkpoint:
    def __init__(self, directory: Path, user_id: str, kind: str, source: Path) -> None:
        """`kind` names the format and the options that change what is stored."""
        name = hashlib.sha256(f"{user_id}\0{kind}\0{source}".encode()).hexdigest()[:24]
        self.path = directory / f"{name}.json"
        self.meta = {"user": user_id, "import": kind, "source": str(source)}
        self.done, self.digest = 0, ""
        try:
            saved = json.loads(self.path.read_text())
            if all(saved.get(k) == v for k, v in self.meta.items()):
                self.done, self.digest = int(saved["done"]), str(saved["digest"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or unreadable: start from the beginning

    def save(self, done: int, digest: str, total: int) -> None:
        self.done, self.digest = done, digest
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.meta, "done": done, "digest": digest,
                                   "complete": done >= total}))
        os.replace(tmp, self.path)
