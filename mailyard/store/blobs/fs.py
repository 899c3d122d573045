"""BlobStore on the local file system: `root/sha256/ab/cd/<hex>`.

A blob appears under its key only by an atomic rename of a fully written,
fsynced temporary file, and the directory is fsynced after the rename, so a
crash leaves either the whole blob or none of it (plus, at worst, a stray
temporary file that is never read as a blob). All file I/O runs in worker
threads so fsync never stalls the event loop.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, BinaryIO, Callable, TypeVar

from mailyard.store.blobs.base import BlobStore, blob_key, key_digest
from mailyard.store.errors import NotFound, StorageError

TMP_PREFIX = ".tmp-"  # temporary files start with this; never a valid blob name

T = TypeVar("T")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FsBlobStore(BlobStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_for(self, key: str) -> Path:
        """The file holding `key`; ValueError for an invalid key."""
        hexdigest = key_digest(key)
        return self.root / "sha256" / hexdigest[:2] / hexdigest[2:4] / hexdigest

    async def start(self) -> None:
        await _io(self.root.mkdir, parents=True, exist_ok=True)

    async def put(self, data: bytes) -> str:
        return await _io(self._put, data)

    async def get(self, key: str) -> bytes:
        return await _io(self._read, self.path_for(key), key)

    async def stream(self, key: str, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
        path = self.path_for(key)
        f = await _io(self._open, path, key)
        try:
            while chunk := await _io(f.read, chunk_size):
                yield chunk
        finally:
            f.close()

    async def put_as(self, key: str, data: bytes, *, replace: bool = False) -> None:
        await _io(self._write, key, data, replace)

    async def keys(self) -> AsyncIterator[str]:
        for name in await _io(self._names):
            yield "sha256/" + name

    async def exists(self, key: str) -> bool:
        return await _io(self.path_for(key).is_file)

    async def delete(self, key: str) -> None:
        await _io(self.path_for(key).unlink, missing_ok=True)

    async def close(self) -> None:
        """Nothing to release: no file stays open between calls."""

    # --- in a worker thread ------------------------------------------------
    def _put(self, data: bytes) -> str:
        key = blob_key(data)  # hashing megabytes belongs off the event loop too
        self._write(key, data, False)
        return key

    def _write(self, key: str, data: bytes, replace: bool) -> None:
        path = self.path_for(key)
        if path.is_file() and not replace:
            return
        self._make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            # Concurrent writers of the same bytes each rename their own complete
            # copy; the last rename wins and every reader sees a whole blob.
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def _names(self) -> list[str]:
        """The blob file names (hex digests), temporary files left out."""
        top = self.root / "sha256"
        if not top.is_dir():
            return []
        return [p.name for p in top.glob("*/*/*")
                if not p.name.startswith(TMP_PREFIX) and len(p.name) == 64]

    def _make_dirs(self, directory: Path) -> None:
        """Creates the fan-out directories, fsyncing each new entry's parent so
        the blob's path itself survives a crash."""
        if directory.is_dir():
            return
        self._make_dirs(directory.parent)
        try:
            directory.mkdir()
        except FileExistsError:  # another writer made it first
            return
        _fsync_dir(directory.parent)

    @staticmethod
    def _read(path: Path, key: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(key) from None

    @staticmethod
    def _open(path: Path, key: str) -> BinaryIO:
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise NotFound(key) from None


async def _io(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Runs blocking file I/O in a worker thread; OS failures become StorageError."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as e:
        raise StorageError(f"blob store: {e}") from e
