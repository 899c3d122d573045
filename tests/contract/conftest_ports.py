"""Fixtures for the storage port contract suites, one parameter per adapter.

The embedded adapters always run; a distributed adapter joins when its
environment variable points at a server (started by tests/cluster/). Tests
use fresh uuid keys and users, so they also hold on a shared server.
"""
from __future__ import annotations

import os
from typing import AsyncIterator, Awaitable, Callable

import pytest

from mailyard.store.blobs.base import BlobStore
from mailyard.store.cache.base import Cache
from mailyard.store.metadata.base import MetadataStore

BLOB_ADAPTERS = ["fs"] + (["s3"] if os.environ.get("MAILYARD_S3") else [])
CACHE_ADAPTERS = ["memory"] + (["redis"] if os.environ.get("MAILYARD_REDIS") else [])
METADATA_ADAPTERS = ["sqlite"] + (["cassandra"] if os.environ.get("MAILYARD_CASSANDRA") else [])

MetadataFactory = Callable[[], Awaitable[MetadataStore]]


def _not_built(name: str) -> None:
    pytest.skip(f"{name} adapter not built yet")


@pytest.fixture(params=BLOB_ADAPTERS)
async def blobstore(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[BlobStore]:
    if request.param != "fs":
        _not_built(request.param)
    from mailyard.store.blobs.fs import FsBlobStore
    store = FsBlobStore(tmp_path / "blobs")
    await store.start()
    yield store
    await store.close()


@pytest.fixture(params=CACHE_ADAPTERS)
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param != "memory":
        _not_built(request.param)
    from mailyard.store.cache.memory import MemoryCache
    store = MemoryCache()
    await store.start()
    yield store
    await store.close()


@pytest.fixture(params=METADATA_ADAPTERS)
async def metadata_factory(request: pytest.FixtureRequest,
                           tmp_path) -> AsyncIterator[MetadataFactory]:
    """Opens started stores on one shared backend (one file, one keyspace), as
    separate processes or a restart would; closes them all afterwards."""
    if request.param != "sqlite":
        _not_built(request.param)
    from mailyard.store.metadata.sqlite import SqliteMetadataStore
    opened: list[MetadataStore] = []

    async def open_store() -> MetadataStore:
        store = SqliteMetadataStore(tmp_path / "metadata.db")
        await store.start()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture
async def metadata(metadata_factory: MetadataFactory) -> MetadataStore:
    return await metadata_factory()
