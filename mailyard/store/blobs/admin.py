"""`mailyard keys ...`: the server secrets blobs are sealed with.

`rotate` adds a secret, makes it current (running servers pick it up within a
second), then re-seals every blob not yet under it. Re-sealing skips blobs
already done, so an interrupted run is resumed by running `keys reseal`;
old secrets stay in the file so blobs not yet re-sealed stay readable.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from mailyard.policy.config import Config
from mailyard.store.blobs.keyring import Keyring
from mailyard.store.blobs.layers import keys_path
from mailyard.store.blobs.sealed import SealedBlobStore, read_header
from mailyard.store.errors import NotFound, StorageError


@dataclass
class ResealReport:
    scanned: int = 0
    resealed: int = 0
    failed: list[str] = field(default_factory=list)  # "key: reason", e.g. a missing key id
    seconds: float = 0.0


def keyring(config: Config) -> Keyring:
    return Keyring(keys_path(config)).open(create=False)


async def reseal_all(blobs, progress=None) -> ResealReport:
    """Re-seals every blob under the current key; skips those already under it."""
    if not isinstance(blobs, SealedBlobStore) or not blobs.encrypt:
        raise StorageError("blob keys: at_rest.encrypt is off; there is nothing to re-seal")
    blobs.keyring.refresh()  # a rotation just written by this command
    report, started = ResealReport(), time.monotonic()
    async for key in blobs.keys():
        report.scanned += 1
        try:
            report.resealed += await blobs.reseal(key)
        except NotFound:
            pass  # collected meanwhile
        except StorageError as exc:  # the rest is still worth re-sealing
            report.failed.append(f"{key}: {exc}")
        if progress and report.scanned % 1000 == 0:
            progress(report)
    report.seconds = time.monotonic() - started
    return report


async def key_usage(blobs) -> dict[str, int]:
    """Blobs per key id ("plain" for blobs written before sealing, "0" for
    compressed-only ones): what still needs a secret before it can be retired."""
    counts: dict[str, int] = {}
    stored = getattr(blobs, "inner", blobs)  # the bytes as stored, below sealing
    async for key in stored.keys():
        try:
            header = read_header(await stored.get(key))
        except NotFound:
            continue
        name = "plain" if header is None else str(header.key_id)
        counts[name] = counts.get(name, 0) + 1
    return counts
