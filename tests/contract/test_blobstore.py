"""BlobStore contract: every adapter must pass these (fixture `blobstore`).

Tests marked fs-only check the file layout and crash safety of FsBlobStore.
"""
from __future__ import annotations

import asyncio
import os
import stat
import uuid
from pathlib import Path

import pytest

from mailyard.store.blobs.base import BlobStore, blob_key
from mailyard.store.blobs.fs import TMP_PREFIX, FsBlobStore
from mailyard.store.errors import NotFound, StorageError


def unique(size: int = 64) -> bytes:
    """Bytes no other test (or earlier run on a shared server) has stored."""
    return os.urandom(size)


async def read_stream(store: BlobStore, key: str, chunk_size: int) -> list[bytes]:
    return [chunk async for chunk in store.stream(key, chunk_size)]


def stored_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(blob files, temporary files) under an FsBlobStore root."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return ([p for p in files if not p.name.startswith(TMP_PREFIX)],
            [p for p in files if p.name.startswith(TMP_PREFIX)])


# --- contract ----------------------------------------------------------

async def test_put_returns_the_content_key_and_get_reads_it_back(blobstore: BlobStore):
    data = unique(11 * 1024)
    key = await blobstore.put(data)
    assert key == blob_key(data)
    assert await blobstore.get(key) == data
    assert await blobstore.exists(key)


async def test_empty_blob(blobstore: BlobStore):
    key = await blobstore.put(b"")
    assert key == "sha256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert await blobstore.get(key) == b""
    assert await blobstore.exists(key)
    assert b"".join(await read_stream(blobstore, key, 1024)) == b""


async def test_large_blob_with_crlf_is_byte_exact(blobstore: BlobStore):
    line = b"Subject: line with CRLF and a lone \r and \n " + uuid.uuid4().hex.encode() + b"\r\n"
    data = line * (12 * 1024 * 1024 // len(line))
    assert len(data) > 11 * 1024 * 1024
    key = await blobstore.put(data)
    assert await blobstore.get(key) == data


async def test_stream_returns_the_same_bytes_in_chunks(blobstore: BlobStore):
    data = unique(300 * 1024 + 7)
    key = await blobstore.put(data)
    chunks = await read_stream(blobstore, key, 64 * 1024)
    assert b"".join(chunks) == data
    assert len(chunks) == 5
    assert all(len(c) == 64 * 1024 for c in chunks[:-1])


async def test_stream_default_chunk_size(blobstore: BlobStore):
    data = unique(200 * 1024)
    key = await blobstore.put(data)
    assert b"".join([c async for c in blobstore.stream(key)]) == data


async def test_same_bytes_twice_give_the_same_key(blobstore: BlobStore):
    data = unique(5000)
    first = await blobstore.put(data)
    second = await blobstore.put(bytes(data))
    assert first == second
    assert await blobstore.get(first) == data


async def test_different_bytes_give_different_keys(blobstore: BlobStore):
    a, b = unique(100), unique(100)
    key_a, key_b = await blobstore.put(a), await blobstore.put(b)
    assert key_a != key_b
    assert (await blobstore.get(key_a), await blobstore.get(key_b)) == (a, b)


async def test_get_missing_raises_not_found(blobstore: BlobStore):
    missing = blob_key(unique())
    with pytest.raises(NotFound):
        await blobstore.get(missing)
    assert not await blobstore.exists(missing)


async def test_stream_missing_raises_not_found(blobstore: BlobStore):
    with pytest.raises(NotFound):
        await read_stream(blobstore, blob_key(unique()), 1024)


async def test_not_found_is_a_storage_error(blobstore: BlobStore):
    with pytest.raises(StorageError):
        await blobstore.get(blob_key(unique()))


async def test_delete(blobstore: BlobStore):
    key = await blobstore.put(unique())
    await blobstore.delete(key)
    assert not await blobstore.exists(key)
    with pytest.raises(NotFound):
        await blobstore.get(key)


async def test_delete_missing_is_fine(blobstore: BlobStore):
    key = blob_key(unique())
    await blobstore.delete(key)
    await blobstore.delete(key)
    assert not await blobstore.exists(key)


async def test_put_after_delete_stores_again(blobstore: BlobStore):
    data = unique()
    key = await blobstore.put(data)
    await blobstore.delete(key)
    assert await blobstore.put(data) == key
    assert await blobstore.get(key) == data


async def test_put_as_stores_under_the_given_key_and_keeps_an_existing_blob(
        blobstore: BlobStore):
    data, other = unique(), unique()
    key = blob_key(data)
    await blobstore.put_as(key, data)
    assert await blobstore.get(key) == data
    await blobstore.put_as(key, other)  # kept: a layer re-putting must not clobber
    assert await blobstore.get(key) == data
    await blobstore.put_as(key, other, replace=True)
    assert await blobstore.get(key) == other
    await blobstore.delete(key)


async def test_keys_lists_every_blob_and_no_deleted_one(blobstore: BlobStore):
    kept = [await blobstore.put(unique()) for _ in range(3)]
    gone = await blobstore.put(unique())
    await blobstore.delete(gone)
    listed = {key async for key in blobstore.keys()}
    assert set(kept) <= listed and gone not in listed
    assert all(key.startswith("sha256/") and len(key) == 71 for key in listed)


async def test_concurrent_writers_of_the_same_bytes_all_succeed(blobstore: BlobStore):
    data = unique(100 * 1024)
    keys = await asyncio.gather(*(blobstore.put(data) for _ in range(50)))
    assert set(keys) == {blob_key(data)}
    assert await blobstore.get(keys[0]) == data


@pytest.mark.parametrize("key", [
    "sha256/../../../etc/passwd",
    "sha256/" + "A" * 64,                       # upper-case hex
    "sha256/" + "a" * 63,
    "sha256/" + "a" * 65,
    "sha256/" + "a" * 64 + "\n",
    "sha256/" + "a" * 62 + "/.",
    "/sha256/" + "a" * 64,
    "md5/" + "a" * 32,
    "a" * 64,
    "",
])
async def test_invalid_keys_are_rejected(blobstore: BlobStore, key: str):
    with pytest.raises(ValueError):
        await blobstore.get(key)
    with pytest.raises(ValueError):
        await blobstore.exists(key)
    with pytest.raises(ValueError):
        await blobstore.delete(key)
    with pytest.raises(ValueError):
        await read_stream(blobstore, key, 1024)


# --- fs only -----------------------------------------------------------

@pytest.fixture
async def fs_blobstore(tmp_path: Path) -> FsBlobStore:
    store = FsBlobStore(tmp_path / "blobs")
    await store.start()
    return store


async def test_fs_layout_fans_out_by_the_first_two_byte_pairs(fs_blobstore: FsBlobStore):
    data = unique()
    key = await fs_blobstore.put(data)
    hexdigest = key.removeprefix("sha256/")
    path = fs_blobstore.root / "sha256" / hexdigest[:2] / hexdigest[2:4] / hexdigest
    assert path.read_bytes() == data


async def test_fs_same_bytes_are_stored_once(fs_blobstore: FsBlobStore):
    data = unique(4096)
    await fs_blobstore.put(data)
    await fs_blobstore.put(data)
    await asyncio.gather(*(fs_blobstore.put(data) for _ in range(50)))
    blobs, temps = stored_files(fs_blobstore.root)
    assert [p.read_bytes() for p in blobs] == [data]
    assert temps == []


async def test_fs_leftover_temporary_file_is_not_a_blob(fs_blobstore: FsBlobStore):
    # What a crash between write and rename leaves: a partial temp file.
    data = unique(10_000)
    key = blob_key(data)
    final = fs_blobstore.path_for(key)
    final.parent.mkdir(parents=True)
    (final.parent / f"{TMP_PREFIX}crashed").write_bytes(data[:1234])

    assert not await fs_blobstore.exists(key)
    with pytest.raises(NotFound):
        await fs_blobstore.get(key)
    assert await fs_blobstore.put(data) == key
    assert await fs_blobstore.get(key) == data


async def test_fs_failed_put_leaves_nothing_under_the_key(fs_blobstore: FsBlobStore, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    data = unique(10_000)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StorageError):
        await fs_blobstore.put(data)
    monkeypatch.undo()

    key = blob_key(data)
    assert not fs_blobstore.path_for(key).exists()
    assert not await fs_blobstore.exists(key)
    assert stored_files(fs_blobstore.root) == ([], [])


async def test_fs_put_fsyncs_the_file_before_the_rename_and_the_directory_after(
        fs_blobstore: FsBlobStore, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    await fs_blobstore.put(unique())
    # New fan-out directories are fsynced too; what matters is the order
    # around the rename.
    i = events.index("rename")
    assert events[i - 1] == "fsync file" and events[i + 1:] == ["fsync dir"]


async def test_fs_start_creates_the_root(tmp_path: Path):
    store = FsBlobStore(tmp_path / "a" / "b")
    await store.start()
    assert (tmp_path / "a" / "b").is_dir()
    key = await store.put(b"x")
    assert await store.get(key) == b"x"


async def test_fs_os_errors_become_storage_errors(tmp_path: Path):
    root = tmp_path / "blobs"
    root.write_bytes(b"not a directory")
    store = FsBlobStore(root)
    with pytest.raises(StorageError):
        await store.start()
    with pytest.raises(StorageError):
        await store.put(b"data")
