"""Cache on Redis (redis.asyncio), shared by every process of a deployment.

Each call is one round trip: `set` is one SET (PX for the expiry), and `incr`
is one Lua script, so a counter's fixed window (a new key gets the ttl, an
existing one keeps its expiry) holds under any number of concurrent callers
on any number of machines. Every call is bounded by `redis.request_timeout`,
retry included, and any failure raises StorageError at once: callers treat
the cache as optional and fall back to the MetadataStore, so an outage must
cost them a fast error, never a hang.
"""
from __future__ import annotations

import asyncio
import random
from contextlib import asynccontextmanager
from typing import AsyncIterator
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from mailyard.policy.config import RedisConfig
from mailyard.policy.tls import client_context, url_uses_tls, warn_if_unverified
from mailyard.store.cache.base import Cache
from mailyard.store.errors import StorageError

# EXISTS before INCRBY tells a new counter (which gets the ttl) from one that
# keeps its own expiry; run as one script, nothing can slip in between.
_INCR = """
local existed = redis.call('EXISTS', KEYS[1])
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) > 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""


class RedisCache(Cache):
    def __init__(self, config: RedisConfig) -> None:
        if not 0 <= config.ttl_jitter < 1:
            raise ValueError("redis.ttl_jitter must be at least 0 and below 1")
        self.timeout, self.jitter = config.request_timeout, config.ttl_jitter
        self.server = urlsplit(config.url).netloc.rpartition("@")[2]  # no password in errors
        # One quick retry on a fresh connection covers pooled connections that
        # died with a Redis restart; the default retries back off for seconds.
        # The URL's own options (?...) win, as with from_url.
        pool = BlockingConnectionPool(**{
            "max_connections": config.max_connections, "timeout": config.request_timeout,
            "socket_timeout": config.request_timeout,
            "socket_connect_timeout": config.request_timeout, "retry": Retry(NoBackoff(), 1),
            **parse_url(config.url), **_tls_options(config)})
        self._redis = Redis(connection_pool=pool)
        self._incr = self._redis.register_script(_INCR)

    async def start(self) -> None:
        """Connects lazily, on the first call: the cache is optional, so a
        process must come up (slower) while Redis is down."""

    async def get(self, key: str) -> bytes | None:
        async with self._call("GET", key):
            return await self._redis.get(key)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        async with self._call("SET", key):
            if ttl is None:
                await self._redis.set(key, value)  # SET also clears an earlier expiry
            elif ttl <= 0:
                await self._redis.delete(key)  # expired as soon as written
            else:
                shortened = ttl * (1 - random.uniform(0, self.jitter))
                await self._redis.set(key, value, px=_milliseconds(shortened))

    async def delete(self, key: str) -> None:
        async with self._call("DEL", key):
            await self._redis.delete(key)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        # No jitter here: a rate limit's window is exactly what was configured.
        window = 0 if ttl is None else _milliseconds(ttl)
        async with self._call("INCRBY", key):
            return int(await self._incr(keys=[key], args=[amount, window]))

    async def close(self) -> None:
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()

    @asynccontextmanager
    async def _call(self, command: str, key: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError as exc:
            raise StorageError(f"redis {self.server}: {command} {key}: "
                               f"no answer within {self.timeout} s") from exc
        except (RedisError, OSError) as exc:
            raise StorageError(f"redis {self.server}: {command} {key}: "
                               f"{type(exc).__name__}: {exc}") from exc


def _tls_options(config: RedisConfig) -> dict:
    """The pool's TLS options for a rediss:// URL ([redis.tls]); none for redis://."""
    if not url_uses_tls(config.url):
        return {}
    warn_if_unverified(config.tls, f"redis {urlsplit(config.url).netloc.rpartition('@')[2]}")
    return {"connection_class": _TlsConnection,
            "tls_context": client_context(config.tls, "redis.tls")}


class _TlsConnection(SSLConnection):
    """redis-py's TLS connection on the pool's one context (policy/tls.py's,
    so Redis verifies like every backend). Left to itself redis-py builds a
    context per connection from its ssl_* options, reading the system CA
    bundle each time: ~25 ms a connection, which made a burst of 64 fresh
    connections overrun the 1 s request timeout."""

    def __init__(self, *, tls_context, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ssl_context.context = tls_context  # RedisSSLContext.get() returns it as built


def _milliseconds(seconds: float) -> int:
    """Redis takes whole milliseconds, and 0 is no expiry at all."""
    return max(1, round(seconds * 1000))
