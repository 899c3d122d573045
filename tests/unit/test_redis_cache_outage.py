"""RedisCache when Redis is absent or stuck: callers fall back to the
MetadataStore on StorageError, so the adapter must raise it, and within its
request timeout rather than hanging. No Redis server needed: a closed port
and a server that accepts and never answers stand in for the outages."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

pytest.importorskip("redis")

from mailyard.policy.config import RedisConfig  # noqa: E402
from mailyard.store.cache.redis import RedisCache  # noqa: E402
from mailyard.store.errors import StorageError  # noqa: E402

TIMEOUT = 0.3


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def every_call_fails(cache: RedisCache) -> list[str]:
    calls = [cache.get("k"), cache.set("k", b"v"), cache.set("k", b"v", ttl=5),
             cache.delete("k"), cache.incr("k", ttl=5)]
    messages = []
    for call in calls:
        with pytest.raises(StorageError) as err:
            await call
        messages.append(str(err.value))
    return messages


async def test_unreachable_redis_raises_storage_error_naming_server_and_command():
    port = closed_port()
    cache = RedisCache(RedisConfig(url=f"redis://:s3cret@127.0.0.1:{port}/0",
                                   request_timeout=TIMEOUT))
    await cache.start()  # the cache is optional: a process starts without it
    messages = await every_call_fails(cache)
    assert [m.split(": ")[1].split()[0] for m in messages] == \
        ["GET", "SET", "SET", "DEL", "INCRBY"]
    assert all(m.startswith(f"redis 127.0.0.1:{port}: ") for m in messages)
    assert not any("s3cret" in m for m in messages)
    await cache.close()


async def test_a_redis_that_never_answers_fails_within_the_request_timeout():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept and read, never reply
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = RedisCache(RedisConfig(url=f"redis://127.0.0.1:{port}/0", request_timeout=TIMEOUT))
    try:
        started = time.monotonic()
        await every_call_fails(cache)
        # Five calls, each bounded by the timeout (its one retry included).
        assert time.monotonic() - started < 5 * TIMEOUT + 2
    finally:
        await cache.close()
        server.close()


def test_jitter_must_be_a_fraction():
    with pytest.raises(ValueError):
        RedisCache(RedisConfig(ttl_jitter=1.0))
