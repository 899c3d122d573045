"""Opens the adapter the configuration names for each storage port.

This is the one place that maps `[storage]` names to adapter modules, imported
lazily so a backend's client library loads only when it is configured.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mailyard.policy.config import Config
from mailyard.store.blobs.base import BlobStore
from mailyard.store.cache.base import Cache
from mailyard.store.metadata.base import MetadataStore
from mailyard.store.queue.base import Queue


def _open_queue(config: Config) -> Queue:
    from mailyard.store.queue.sqlite import SqliteQueue
    return SqliteQueue(config.data_path / "queue.db", partitions=config.queue.partitions,
                       poll_interval=config.queue.poll_interval,
                       member_ttl=config.queue.member_ttl,
                       retention_ms=config.queue.retention_hours * 3600 * 1000)


def _open_kafka_queue(config: Config) -> Queue:
    from mailyard.store.queue.kafka import KafkaQueue
    return KafkaQueue(config.kafka, partitions=config.queue.partitions,
                      member_ttl=config.queue.member_ttl,
                      retention_ms=config.queue.retention_hours * 3600 * 1000)


def _open_metadata(config: Config) -> MetadataStore:
    from mailyard.store.metadata.sqlite import SqliteMetadataStore
    return SqliteMetadataStore(config.data_path / "metadata.db")


def _open_cassandra_metadata(config: Config) -> MetadataStore:
    from mailyard.store.metadata.cassandra import CassandraMetadataStore
    return CassandraMetadataStore(config.cassandra)


def _open_blobs(config: Config) -> BlobStore:
    from mailyard.store.blobs.fs import FsBlobStore
    return FsBlobStore(config.data_path / "blobs")


def _open_s3_blobs(config: Config) -> BlobStore:
    from mailyard.store.blobs.s3 import S3BlobStore
    return S3BlobStore(config.s3)


def _open_cold_blobs(config: Config) -> BlobStore:
    from mailyard.store.blobs.fs import FsBlobStore
    return FsBlobStore(config.data_path / (config.tiering.cold_dir or "blobs-cold"))


def _open_cold_s3_blobs(config: Config) -> BlobStore:
    from dataclasses import replace
    from mailyard.store.blobs.s3 import S3BlobStore
    return S3BlobStore(replace(config.s3, bucket=config.tiering.cold_bucket
                               or config.s3.bucket + "-cold"))


# The adapter of each blobs setting, for the hot tier and the cold one.
_BLOB_TIERS = {"fs": (_open_blobs, _open_cold_blobs), "s3": (_open_s3_blobs, _open_cold_s3_blobs)}


def _open_layered_blobs(config: Config) -> BlobStore:
    """The blobs adapter inside its tiering and sealing layers (store/blobs/layers.py)."""
    from mailyard.store.blobs.layers import layered
    open_hot, open_cold = _BLOB_TIERS[config.storage.blobs]
    return layered(config, open_hot(config),
                   open_cold(config) if config.tiering.enabled else None)


def _open_cache(config: Config) -> Cache:
    from mailyard.store.cache.memory import MemoryCache
    return MemoryCache()


def _open_redis_cache(config: Config) -> Cache:
    from mailyard.store.cache.redis import RedisCache
    return RedisCache(config.redis)


_OPENERS = {
    "queue": {"sqlite": _open_queue, "kafka": _open_kafka_queue},
    "metadata": {"sqlite": _open_metadata, "cassandra": _open_cassandra_metadata},
    "blobs": {"fs": _open_layered_blobs, "s3": _open_layered_blobs},
    "cache": {"memory": _open_cache, "redis": _open_redis_cache},
}


@dataclass
class Stores:
    """The adapters one process shares between the services it runs."""
    config: Config
    _open: dict = field(default_factory=dict)
    _starting: dict = field(default_factory=dict)

    async def get(self, port: str):
        """The port's configured adapter, opened once per process: services
        starting together share the one being started."""
        return await self.extra(
            port, lambda: _OPENERS[port][getattr(self.config.storage, port)](self.config))

    async def extra(self, name: str, open_adapter: Callable[[], Any]):
        """An adapter of a port declared outside store/ (searchd's SearchIndex),
        opened once per process by the opener its package passes, closed with
        the others. Services starting together share the one being started."""
        if name not in self._open:
            Path(self.config.data_dir).mkdir(parents=True, exist_ok=True)
            adapter = open_adapter()
            self._open[name] = adapter
            self._starting[name] = asyncio.ensure_future(adapter.start())
        starting = self._starting[name]
        try:
            await starting
        except BaseException:
            # A failed start is not kept: the next caller tries afresh.
            if self._starting.get(name) is starting:
                del self._starting[name], self._open[name]
            raise
        return self._open[name]

    async def queue(self) -> Queue:
        return await self.get("queue")

    async def metadata(self) -> MetadataStore:
        return await self.get("metadata")

    async def blobs(self) -> BlobStore:
        return await self.get("blobs")

    async def cache(self) -> Cache:
        return await self.get("cache")

    async def close(self) -> None:
        while self._open:
            _, adapter = self._open.popitem()
            await adapter.close()
