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


def _open_metadata(config: Config) -> MetadataStore:
    from mailyard.store.metadata.sqlite import SqliteMetadataStore
    return SqliteMetadataStore(config.data_path / "metadata.db")


def _open_blobs(config: Config) -> BlobStore:
    from mailyard.store.blobs.fs import FsBlobStore
    return FsBlobStore(config.data_path / "blobs")


def _open_cache(config: Config) -> Cache:
    from mailyard.store.cache.memory import MemoryCache
    return MemoryCache()


_OPENERS = {
    "queue": {"sqlite": _open_queue},
    "metadata": {"sqlite": _open_metadata},
    "blobs": {"fs": _open_blobs},
    "cache": {"memory": _open_cache},
}


@dataclass
class Stores:
    """The adapters one process shares between the services it runs."""
    config: Config
    _open: dict = field(default_factory=dict)
    _starting: dict = field(default_factory=dict)

    async def get(self, port: str):
        if port not in self._open:
            Path(self.config.data_dir).mkdir(parents=True, exist_ok=True)
            adapter = _OPENERS[port][getattr(self.config.storage, port)](self.config)
            await adapter.start()
            self._open[port] = adapter
        return self._open[port]

    async def extra(self, name: str, open_adapter: Callable[[], Any]):
        """An adapter of a port declared outside store/ (searchd's SearchIndex),
        opened once per process by the opener its package passes, closed with
        the others. Services starting together share the one being started."""
        if name not in self._open:
            Path(self.config.data_dir).mkdir(parents=True, exist_ok=True)
            adapter = open_adapter()
            self._open[name] = adapter
            self._starting[name] = asyncio.ensure_future(adapter.start())
        await self._starting[name]
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
