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


@pytest.fixture(params=BLOB_ADAPTERS)
async def blobstore(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[BlobStore]:
    if request.param == "s3":
        from mailyard.policy.config import S3Config
        from mailyard.store.blobs.s3 import S3BlobStore
        store = S3BlobStore(S3Config(
            endpoint_url=os.environ["MAILYARD_S3"], bucket="mailyard-contract",
            access_key_id=os.environ.get("MAILYARD_S3_ACCESS_KEY", ""),
            secret_access_key=os.environ.get("MAILYARD_S3_SECRET_KEY", "")))
    else:
        from mailyard.store.blobs.fs import FsBlobStore
        store = FsBlobStore(tmp_path / "blobs")
    await store.start()
    yield store
    await store.close()


@pytest.fixture(params=CACHE_ADAPTERS)
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "redis":
        from mailyard.policy.config import RedisConfig
        from mailyard.store.cache.redis import RedisCache
        store = RedisCache(RedisConfig(url=os.environ["MAILYARD_REDIS"]))
    else:
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
    opened: list[MetadataStore] = []

    async def open_store() -> MetadataStore:
        if request.param == "cassandra":
            store = await _cassandra_store()
        else:
            from mailyard.store.metadata.sqlite import SqliteMetadataStore
            store = SqliteMetadataStore(tmp_path / "metadata.db")
        await store.start()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


CASSANDRA_TEST_KEYSPACE = "mailyard_test"
_cassandra_schema_applied = False


async def _cassandra_store() -> MetadataStore:
    """A store on the test keyspace, created once per session: creating tables
    is slow on Cassandra, and every test works on fresh uuid users anyway."""
    global _cassandra_schema_applied
    from mailyard.policy.config import CassandraConfig
    from mailyard.store.metadata.cassandra import CassandraMetadataStore, apply_schema
    host, _, port = os.environ["MAILYARD_CASSANDRA"].rpartition(":")
    config = CassandraConfig(contact_points=[host], port=int(port),
                             keyspace=CASSANDRA_TEST_KEYSPACE)
    if not _cassandra_schema_applied:
        await apply_schema(config)
        _cassandra_schema_applied = True
    return CassandraMetadataStore(config)


@pytest.fixture
async def metadata(metadata_factory: MetadataFactory) -> MetadataStore:
    return await metadata_factory()
