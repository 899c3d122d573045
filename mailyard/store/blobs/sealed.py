"""A BlobStore layer that compresses, then encrypts, every blob at rest.

The key stays `sha256/<hex of the plaintext>`, so identical parts still share
one blob. What is stored under it:

    header: magic "\\x93MYB" | version 1 | flags | key id (2 bytes) | nonce (12 bytes)
            [flags & DELTA: base digest (32 bytes) | chain depth (1 byte)]
    body:   AES-256-GCM(zstd(plaintext)), header and blob key as associated data

Encryption is convergent: the AES key of a blob is HKDF-SHA256 of the server
secret named by the key id, with the plaintext digest as info, so every
writer of the same part derives the same key and the blob needs no per-blob
key record. The nonce is synthetic (an HMAC of the payload under that key):
equal payloads give equal bytes, different payloads different nonces.
Key id 0 means compressed only (`at_rest.encrypt = false`).

A delta blob (a reply quoting its parent) is compressed by zstd with the
plaintext of another blob (its base) as a raw dictionary; reading it reads the
base first. Chains are cut at MAX_DELTA_DEPTH so a long thread never costs a
long chain of reads.

Blobs written before this layer (plain bytes, no header) are read as they
are; a plaintext that happens to start with the magic is told apart by its
digest, which equals its key.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import AsyncIterator

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mailyard.store.blobs.base import BlobStore, blob_key, key_digest
from mailyard.store.blobs.keyring import Keyring, MissingKey
from mailyard.store.errors import NotFound, StorageError

MAGIC = b"\x93MYB"
VERSION = 1
FLAG_ZSTD = 1
FLAG_DELTA = 2
_FIXED = struct.Struct(">4sBBH12s")
_DELTA = struct.Struct(">32sB")
NONCE_BYTES = 12
MAX_DELTA_DEPTH = 8
# A delta is kept only when it is this much smaller than plain compression:
# below that the reply did not really quote its parent.
DELTA_GAIN = 0.8
# Sealing a blob this large is moved off the event loop.
IN_THREAD = 256 * 1024
_HKDF_SALT = b"mailyard blob key v1"


@dataclass(slots=True)
class Header:
    flags: int
    key_id: int
    nonce: bytes
    base: str | None       # key of the dictionary blob of a delta
    depth: int             # deltas between this blob and a full one
    size: int              # header bytes

    @property
    def packed(self) -> bytes:
        fixed = _FIXED.pack(MAGIC, VERSION, self.flags, self.key_id, self.nonce)
        if self.flags & FLAG_DELTA:
            fixed += _DELTA.pack(bytes.fromhex(key_digest(self.base)), self.depth)
        return fixed


def read_header(stored: bytes) -> Header | None:
    """The header of a sealed blob; None for plain bytes (written before sealing)."""
    if len(stored) < _FIXED.size or not stored.startswith(MAGIC):
        return None
    _, version, flags, key_id, nonce = _FIXED.unpack_from(stored)
    if version != VERSION or flags & ~(FLAG_ZSTD | FLAG_DELTA):
        return None
    if not flags & FLAG_DELTA:
        return Header(flags, key_id, nonce, None, 0, _FIXED.size)
    if len(stored) < _FIXED.size + _DELTA.size:
        return None
    digest, depth = _DELTA.unpack_from(stored, _FIXED.size)
    return Header(flags, key_id, nonce, "sha256/" + digest.hex(), depth,
                  _FIXED.size + _DELTA.size)


class SealedBlobStore(BlobStore):
    def __init__(self, inner: BlobStore, keyring: Keyring | None,
                 level: int | None = 3, encrypt: bool = True) -> None:
        self.inner = inner
        self.keyring = keyring  # for reading too: blobs sealed before encryption was turned off
        self.level = level      # None: encrypt only, no compression and no deltas
        self.encrypt = encrypt and keyring is not None  # off: new blobs are compressed only

    async def start(self) -> None:
        await self.inner.start()

    async def put(self, data: bytes) -> str:
        key = await _maybe_thread(len(data), blob_key, data)
        if not await self.inner.exists(key):
            await self.inner.put_as(key, await self._seal(key, data))
        return key

    async def put_delta(self, data: bytes, base_key: str) -> tuple[str, str | None]:
        """Stores `data` compressed against the plaintext of `base_key` when
        that pays (a reply quoting its parent); otherwise like `put`. Returns
        the key and the base the stored blob depends on (None for a full
        blob), also when the blob was there already (a replayed delivery):
        the caller keeps that base alive as long as the blob (a link record)."""
        key = await _maybe_thread(len(data), blob_key, data)
        if key == base_key:
            return key, None
        broken = False
        if await self.inner.exists(key):
            try:
                stored_base = await self.base_of(key)
                if stored_base is None or await self._chain_intact(stored_base):
                    return key, stored_base
                # Its base was collected (a restore after a race with the
                # collector): the blob is written again, in place.
                broken = True
            except NotFound:
                pass  # deleted since: write it again
        try:
            base, depth = await self._read(base_key)
        except NotFound:  # the parent was deleted meanwhile: no dictionary
            base, depth = b"", 0
        if depth >= MAX_DELTA_DEPTH or not base:
            await self.inner.put_as(key, await self._seal(key, data), replace=broken)
            return key, None
        stored = await _maybe_thread(len(data) + len(base), self._seal_delta, key, data,
                                     base_key, base, depth + 1)
        await self.inner.put_as(key, stored, replace=broken)
        return key, read_header(stored).base

    async def put_as(self, key: str, data: bytes, *, replace: bool = False) -> None:
        key_digest(key)
        if replace or not await self.inner.exists(key):
            await self.inner.put_as(key, await self._seal(key, data), replace=replace)

    async def get(self, key: str) -> bytes:
        return (await self._read(key))[0]

    def keys(self) -> AsyncIterator[str]:
        return self.inner.keys()

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def close(self) -> None:
        await self.inner.close()

    # --- for sweeps --------------------------------------------------------
    async def base_of(self, key: str) -> str | None:
        """The blob a delta blob is compressed against, else None."""
        header = read_header(await self.inner.get(key))
        return header.base if header else None

    async def _chain_intact(self, key: str) -> bool:
        """Whether a blob and every base under it are there."""
        for _ in range(MAX_DELTA_DEPTH + 1):
            try:
                key = await self.base_of(key)
            except NotFound:
                return False
            if key is None:
                return True
        return False

    async def reseal(self, key: str) -> bool:
        """Re-encrypts a blob under the current key (plain legacy bytes get
        sealed); False when it already was. The compressed payload is kept,
        so a delta stays a delta on the same base."""
        if not self.encrypt:
            return False
        stored = await self.inner.get(key)
        header = read_header(stored)
        current = self.keyring.current
        if header is not None and header.key_id == current:
            return False
        if header is None or _is_plain(key, stored):
            sealed = await self._seal(key, stored)
        else:
            payload = self._decrypt(key, stored, header)
            header.key_id = current
            sealed = self._encrypt(key, header, payload)
        await self.inner.put_as(key, sealed, replace=True)
        return True

    # --- sealing -----------------------------------------------------------
    async def _seal(self, key: str, data: bytes) -> bytes:
        return await _maybe_thread(len(data), self._seal_full, key, data)

    def _seal_full(self, key: str, data: bytes) -> bytes:
        if self.level is None:
            return self._encrypt(key, self._new_header(0, None, 0), data)
        compressed = zstandard.ZstdCompressor(level=self.level).compress(data)
        flags, payload = (FLAG_ZSTD, compressed) if len(compressed) < len(data) else (0, data)
        return self._encrypt(key, self._new_header(flags, None, 0), payload)

    def _seal_delta(self, key: str, data: bytes, base_key: str, base: bytes,
                    depth: int) -> bytes:
        if not base or self.level is None:
            return self._seal_full(key, data)
        full = zstandard.ZstdCompressor(level=self.level).compress(data)
        delta = zstandard.ZstdCompressor(level=self.level, dict_data=_raw_dict(base)).compress(data)
        if len(delta) >= DELTA_GAIN * min(len(full), len(data)):
            return self._seal_full(key, data)
        return self._encrypt(key, self._new_header(FLAG_ZSTD | FLAG_DELTA, base_key, depth),
                             delta)

    def _new_header(self, flags: int, base: str | None, depth: int) -> Header:
        key_id = self.keyring.current if self.encrypt else 0
        return Header(flags, key_id, bytes(NONCE_BYTES), base, depth, 0)  # nonce: _encrypt

    def _encrypt(self, key: str, header: Header, payload: bytes) -> bytes:
        if header.key_id == 0:
            return header.packed + payload
        secret = self._blob_secret(key, header.key_id)
        # A synthetic nonce (from the payload): writers of the same blob at
        # once store the same bytes (an S3 server may interleave concurrent
        # PUTs of one key), and a different payload under the same blob key
        # (a delta, a full copy) gets a different nonce.
        header.nonce = hmac.digest(secret, payload, "sha256")[:NONCE_BYTES]
        packed = header.packed
        return packed + AESGCM(secret).encrypt(header.nonce, payload, _associated(packed, key))

    # --- opening -----------------------------------------------------------
    async def _read(self, key: str) -> tuple[bytes, int]:
        """The plaintext of a blob and its delta depth."""
        stored = await self.inner.get(key)
        header = read_header(stored)
        if header is None:
            return stored, 0  # written before sealing
        try:
            payload = await _maybe_thread(len(stored), self._decrypt, key, stored, header)
        except StorageError as exc:
            if await _maybe_thread(len(stored), _is_plain, key, stored):
                return stored, 0
            raise type(exc)(f"blob {key}: {exc}") from None
        if not header.flags & FLAG_ZSTD:
            return payload, 0
        if not header.flags & FLAG_DELTA:
            return await _maybe_thread(len(payload) * 4, _decompress, payload, None), 0
        base, _ = await self._read(header.base)
        return await _maybe_thread(len(base) + len(payload) * 4, _decompress, payload,
                                   base), header.depth

    def _decrypt(self, key: str, stored: bytes, header: Header) -> bytes:
        if header.key_id == 0:
            return stored[header.size:]
        aead = AESGCM(self._blob_secret(key, header.key_id))
        try:
            return aead.decrypt(header.nonce, stored[header.size:],
                                _associated(stored[:header.size], key))
        except InvalidTag:
            raise StorageError(f"fails authentication under key id {header.key_id} "
                               f"(damaged, or sealed by another server secret)") from None

    def _blob_secret(self, key: str, key_id: int) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT,
                    info=bytes.fromhex(key_digest(key))).derive(self._secret(key_id))

    def _secret(self, key_id: int) -> bytes:
        if self.keyring is None:
            raise MissingKey(f"blob keys: a blob is encrypted with key id {key_id} but "
                             f"at_rest.encrypt is off and no keys file is loaded")
        return self.keyring.secret(key_id)


def _associated(packed_header: bytes, key: str) -> bytes:
    """Binds the ciphertext to its header and its name: moving a blob's bytes
    under another key fails authentication instead of serving wrong content."""
    return packed_header + bytes.fromhex(key_digest(key))


def _is_plain(key: str, stored: bytes) -> bool:
    return hashlib.sha256(stored).hexdigest() == key_digest(key)


def _raw_dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _decompress(payload: bytes, base: bytes | None) -> bytes:
    try:
        if base is None:
            return zstandard.ZstdDecompressor().decompress(payload)
        return zstandard.ZstdDecompressor(dict_data=_raw_dict(base)).decompress(payload)
    except zstandard.ZstdError as exc:
        raise StorageError(f"blob: cannot decompress: {exc}") from exc


async def _maybe_thread(size: int, fn, *args):
    """Runs CPU work on megabytes in a worker thread, small work inline."""
    if size < IN_THREAD:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)
