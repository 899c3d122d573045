"""The layers around the configured BlobStore adapter: tiers, then sealing.

    SealedBlobStore (zstd, AES-256-GCM, deltas)
      -> TieredBlobStore (hot, then cold)   when tiering is enabled
           -> the adapter (fs or s3), twice: hot and cold location

Sealing sits above tiering, so moving a blob between tiers copies its sealed
bytes and never decrypts them.
"""
from __future__ import annotations

from pathlib import Path

from mailyard.policy.config import Config
from mailyard.store.blobs.base import BlobStore
from mailyard.store.blobs.keyring import Keyring
from mailyard.store.blobs.sealed import SealedBlobStore
from mailyard.store.blobs.tiered import TieredBlobStore

KEYS_FILE = "blob-keys.json"


def keys_path(config: Config) -> Path:
    """The keys file: at_rest.keys_file, relative to the data dir, else its default."""
    return config.data_path / (config.at_rest.keys_file or KEYS_FILE)


def layered(config: Config, hot: BlobStore, cold: BlobStore | None) -> BlobStore:
    inner = TieredBlobStore(hot, cold) if cold is not None else hot
    at_rest = config.at_rest
    if not (at_rest.compress or at_rest.encrypt):
        return inner
    path = keys_path(config)
    # With encryption off the keys still open what was sealed before.
    keyring = Keyring(path).open() if at_rest.encrypt or path.exists() else None
    return SealedBlobStore(inner, keyring, encrypt=at_rest.encrypt,
                           level=at_rest.compression_level if at_rest.compress else None)
