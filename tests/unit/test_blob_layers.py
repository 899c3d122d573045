"""The sealing and tiering layers over a real FsBlobStore: what lands on disk,
key rotation, lost keys, legacy plaintext, deltas."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mailyard.store.blobs.base import blob_key
from mailyard.store.blobs.fs import FsBlobStore
from mailyard.store.blobs.keyring import Keyring, MissingKey
from mailyard.store.blobs.sealed import MAX_DELTA_DEPTH, SealedBlobStore, read_header
from mailyard.store.blobs.tiered import TieredBlobStore
from mailyard.store.errors import StorageError

LINE = b"The quarterly numbers are attached; please review before Friday.\r\n"


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
async def sealed(tmp_path):
    store = SealedBlobStore(FsBlobStore(tmp_path / "blobs"),
                            Keyring(tmp_path / "keys.json").open())
    await store.start()
    yield store
    await store.close()


async def test_no_stored_file_holds_the_plaintext(sealed, tmp_path):
    data = LINE * 200
    key = await sealed.put(data)
    assert key == blob_key(data)  # the plaintext's key: dedup still works
    assert await sealed.get(key) == data
    [stored] = files(tmp_path / "blobs")
    content = stored.read_bytes()
    assert LINE not in content and b"quarterly" not in content
    assert len(content) < len(data) / 10  # compressed before encryption


async def test_keys_file_is_created_private(tmp_path):
    Keyring(tmp_path / "k" / "keys.json").open()
    path = tmp_path / "k" / "keys.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert json.loads(path.read_text())["current"] == 1


async def test_rotation_reseals_and_everything_stays_readable(sealed, tmp_path):
    blobs = {await sealed.put(os.urandom(50) + LINE * n): None for n in range(1, 20)}
    for key in blobs:
        blobs[key] = await sealed.get(key)
    assert sealed.keyring.rotate() == 2
    resealed = [key async for key in sealed.keys() if await sealed.reseal(key)]
    assert sorted(resealed) == sorted(blobs)
    assert [key async for key in sealed.keys() if await sealed.reseal(key)] == []  # resumable
    for key, data in blobs.items():
        assert read_header(await sealed.inner.get(key)).key_id == 2
        assert await sealed.get(key) == data


async def test_a_lost_key_is_a_clear_error(sealed, tmp_path):
    key = await sealed.put(LINE * 5)
    keys_file = tmp_path / "keys.json"
    document = json.loads(keys_file.read_text())
    other = Keyring(tmp_path / "other.json").open()
    reader = SealedBlobStore(sealed.inner, other)
    with pytest.raises(StorageError, match="fails authentication"):
        await reader.get(key)  # another server's secret under the same id
    document["keys"]["7"] = document["keys"].pop("1")
    document["current"] = 7
    keys_file.write_text(json.dumps(document))
    with pytest.raises(MissingKey, match=f"{key}: blob keys: key id 1 is not in"):
        await SealedBlobStore(sealed.inner, Keyring(keys_file).open()).get(key)


async def test_legacy_plaintext_blobs_are_read_and_resealed(tmp_path):
    plain = FsBlobStore(tmp_path / "blobs")
    await plain.start()
    legacy = LINE * 3
    looks_sealed = b"\x93MYB\x01\x01" + os.urandom(40)  # plaintext that starts like a header
    keys = [await plain.put(legacy), await plain.put(looks_sealed)]
    sealed = SealedBlobStore(plain, Keyring(tmp_path / "keys.json").open())
    assert [await sealed.get(k) for k in keys] == [legacy, looks_sealed]
    assert all([await sealed.reseal(k) for k in keys])
    assert LINE not in (await plain.get(keys[0]))
    assert [await sealed.get(k) for k in keys] == [legacy, looks_sealed]


async def test_compress_only_and_encrypt_only(tmp_path):
    for keyring, level in ((None, 3), (Keyring(tmp_path / "keys.json").open(), None)):
        store = SealedBlobStore(FsBlobStore(tmp_path / f"b{level}"), keyring, level=level)
        await store.start()
        key = await store.put(LINE * 50)
        assert await store.get(key) == LINE * 50


async def test_a_quoting_reply_is_stored_as_a_small_delta(sealed):
    parent = os.urandom(3000).hex().encode()  # incompressible alone
    reply = b"Agreed, see below.\r\n" + b"".join(b"> " + parent[i:i + 76] + b"\r\n"
                                                  for i in range(0, len(parent), 76))
    base = await sealed.put(parent)
    key, depends_on = await sealed.put_delta(reply, base)
    assert depends_on == base and key == blob_key(reply)
    assert await sealed.get(key) == reply
    assert len(await sealed.inner.get(key)) < len(reply) / 5
    assert await sealed.base_of(key) == base
    assert await sealed.put_delta(reply, base) == (key, base)  # a replay finds the base


async def test_an_unrelated_reply_is_stored_whole(sealed):
    base = await sealed.put(os.urandom(2000))
    key, depends_on = await sealed.put_delta(os.urandom(2000), base)
    assert depends_on is None and await sealed.base_of(key) is None


async def test_delta_chains_are_cut(sealed):
    text = os.urandom(1000).hex().encode()
    key = await sealed.put(text)
    depths = []
    for n in range(MAX_DELTA_DEPTH + 3):
        text = os.urandom(40).hex().encode() + b"\r\n" + text
        key, depends_on = await sealed.put_delta(text, key)
        header = read_header(await sealed.inner.get(key))
        depths.append(header.depth if depends_on else 0)
        assert await sealed.get(key) == text
    assert max(depths) == MAX_DELTA_DEPTH and depths[MAX_DELTA_DEPTH] == 0


async def test_tiers_move_sealed_bytes_and_reads_stay_transparent(tmp_path):
    hot, cold = FsBlobStore(tmp_path / "hot"), FsBlobStore(tmp_path / "cold")
    tiered = TieredBlobStore(hot, cold)
    store = SealedBlobStore(tiered, Keyring(tmp_path / "keys.json").open())
    await store.start()
    key = await store.put(LINE * 10)
    sealed_bytes = await hot.get(key)
    assert await tiered.move_to_cold(key)
    assert not await hot.exists(key) and await cold.get(key) == sealed_bytes
    assert await store.get(key) == LINE * 10
    assert await store.put(LINE * 10) == key and not await hot.exists(key)  # no copy back
    store.keyring.rotate()
    assert await store.reseal(key)  # re-sealed where it lies
    assert not await hot.exists(key) and await store.get(key) == LINE * 10
    assert [k async for k in store.keys()] == [key]
    await store.delete(key)  # the collector deletes in every tier
    assert not await store.exists(key) and files(tmp_path / "cold") == []


async def test_a_reply_whose_parent_is_gone_is_stored_whole(sealed):
    gone = await sealed.put(LINE * 30)
    await sealed.delete(gone)
    key, depends_on = await sealed.put_delta(LINE * 31, gone)
    assert depends_on is None and await sealed.get(key) == LINE * 31


async def test_reseal_all_goes_on_past_a_blob_it_cannot_open(sealed, tmp_path):
    from mailyard.store.blobs.admin import reseal_all
    readable = await sealed.put(LINE * 4)
    foreign = SealedBlobStore(sealed.inner, Keyring(tmp_path / "other.json").open())
    unreadable = await foreign.put(LINE * 5)  # another server's secret, same key id
    sealed.keyring.rotate()
    report = await reseal_all(sealed)
    assert report.resealed == 1 and [f.split(":")[0] for f in report.failed] == [unreadable]
    assert await sealed.get(readable) == LINE * 4


async def test_a_delta_whose_base_was_collected_is_rewritten_whole(sealed):
    parent = os.urandom(2000).hex().encode()
    reply = b"Yes.\r\n" + parent
    base = await sealed.put(parent)
    key, depends_on = await sealed.put_delta(reply, base)
    assert depends_on == base
    await sealed.delete(base)  # a collector raced the delivery
    assert await sealed.put_delta(reply, base) == (key, None)  # the writer's restore
    assert await sealed.get(key) == reply


async def test_turning_encryption_off_keeps_sealed_blobs_readable(sealed):
    sealed_key = await sealed.put(LINE * 6)
    compressed_only = SealedBlobStore(sealed.inner, sealed.keyring, encrypt=False)
    key = await compressed_only.put(LINE * 7)
    assert read_header(await sealed.inner.get(key)).key_id == 0
    assert await compressed_only.get(sealed_key) == LINE * 6
    assert await sealed.get(key) == LINE * 7
