"""Cache contract: every adapter must pass these (fixture `cache`).

Expiry tests use ttls of a few hundred milliseconds with generous margins,
since Redis counts in milliseconds and a shared server adds latency.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest

from mailyard.store.cache.base import Cache
from mailyard.store.cache.memory import MemoryCache


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


# --- contract ----------------------------------------------------------

async def test_get_missing_is_none(cache: Cache):
    assert await cache.get(key()) is None


async def test_set_then_get(cache: Cache):
    k = key()
    await cache.set(k, b"inbox head")
    assert await cache.get(k) == b"inbox head"


async def test_set_overwrites(cache: Cache):
    k = key()
    await cache.set(k, b"old")
    await cache.set(k, b"new")
    assert await cache.get(k) == b"new"


async def test_keys_are_independent(cache: Cache):
    a, b = key(), key()
    await cache.set(a, b"a")
    await cache.set(b, b"b")
    await cache.delete(a)
    assert (await cache.get(a), await cache.get(b)) == (None, b"b")


async def test_delete(cache: Cache):
    k = key()
    await cache.set(k, b"v")
    await cache.delete(k)
    assert await cache.get(k) is None


async def test_delete_missing_is_fine(cache: Cache):
    await cache.delete(key())


async def test_binary_values_round_trip(cache: Cache):
    k = key()
    value = bytes(range(256)) * 4 + b"\r\n\x00"
    await cache.set(k, value)
    assert await cache.get(k) == value


async def test_empty_value_is_not_missing(cache: Cache):
    k = key()
    await cache.set(k, b"")
    assert await cache.get(k) == b""


async def test_value_expires_after_ttl(cache: Cache):
    k = key()
    await cache.set(k, b"v", ttl=0.2)
    assert await cache.get(k) == b"v"
    await asyncio.sleep(0.35)
    assert await cache.get(k) is None


async def test_set_without_ttl_clears_an_earlier_expiry(cache: Cache):
    k = key()
    await cache.set(k, b"short", ttl=0.2)
    await cache.set(k, b"kept")
    await asyncio.sleep(0.35)
    assert await cache.get(k) == b"kept"


async def test_incr_starts_from_zero(cache: Cache):
    k = key()
    assert await cache.incr(k) == 1
    assert await cache.incr(k) == 2
    assert await cache.incr(k, 5) == 7
    assert await cache.incr(k, -3) == 4


async def test_incr_value_reads_as_decimal_bytes(cache: Cache):
    k = key()
    await cache.incr(k, 42)
    assert await cache.get(k) == b"42"


async def test_incr_continues_a_set_number(cache: Cache):
    k = key()
    await cache.set(k, b"10")
    assert await cache.incr(k) == 11


async def test_incr_ttl_is_a_fixed_window(cache: Cache):
    k = key()
    assert await cache.incr(k, ttl=0.4) == 1
    await asyncio.sleep(0.25)
    assert await cache.incr(k, ttl=0.4) == 2  # must not push the expiry back
    await asyncio.sleep(0.25)                 # 0.5 s after the window opened
    assert await cache.get(k) is None
    assert await cache.incr(k, ttl=0.4) == 1  # a new window


async def test_incr_without_ttl_keeps_the_counter(cache: Cache):
    k = key()
    await cache.incr(k)
    await asyncio.sleep(0.05)
    assert await cache.incr(k) == 2


async def test_concurrent_incr_is_exact(cache: Cache):
    k = key()
    results = await asyncio.gather(*(cache.incr(k, ttl=60) for _ in range(500)))
    assert sorted(results) == list(range(1, 501))
    assert await cache.get(k) == b"500"


# --- memory only -------------------------------------------------------

async def test_memory_evicts_the_least_recently_used_past_max_entries():
    cache = MemoryCache(max_entries=3)
    for k in ("a", "b", "c"):
        await cache.set(k, k.encode())
    assert await cache.get("a") == b"a"   # a is now more recent than b
    await cache.set("d", b"d")
    assert [await cache.get(k) for k in "abcd"] == [b"a", None, b"c", b"d"]
    # Those reads left a as the least recently used; counters count too.
    await cache.incr("e")
    assert [await cache.get(k) for k in "acde"] == [None, b"c", b"d", b"1"]


async def test_memory_rejects_a_zero_bound():
    with pytest.raises(ValueError):
        MemoryCache(max_entries=0)
