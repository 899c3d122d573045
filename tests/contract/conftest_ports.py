"""Fixtures for the storage port contract suites, one parameter per adapter.

The embedded adapters always run; a distributed adapter joins when its
environment variable points at a server (started by tests/cluster/). Tests
use fresh uuid keys and users, so they also hold on a shared server.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import AsyncIterator, Awaitable, Callable

import pytest

from mailyard.store.blobs.base import BlobStore
from mailyard.store.cache.base import Cache
from mailyard.store.metadata.base import MetadataStore

BLOB_ADAPTERS = ["fs", "sealed-fs", "sealed-tiered-fs"] + (
    ["s3", "sealed-s3"] if os.environ.get("MAILYARD_S3") else []) + (
    ["s3_tls"] if os.environ.get("MAILYARD_S3_TLS") else [])
CACHE_ADAPTERS = (["memory"] + (["redis"] if os.environ.get("MAILYARD_REDIS") else [])
                  + (["redis_tls"] if os.environ.get("MAILYARD_REDIS_TLS") else []))
METADATA_ADAPTERS = ["sqlite"] + (["cassandra"] if os.environ.get("MAILYARD_CASSANDRA") else [])

MetadataFactory = Callable[[], Awaitable[MetadataStore]]


def _plain_blobstore(name: str, tmp_path, bucket: str = "mailyard-contract") -> BlobStore:
    if name == "s3":
        from mailyard.policy.config import S3Config
        from mailyard.store.blobs.s3 import S3BlobStore
        return S3BlobStore(S3Config(
            endpoint_url=os.environ["MAILYARD_S3"], bucket=bucket,
            access_key_id=os.environ.get("MAILYARD_S3_ACCESS_KEY", ""),
            secret_access_key=os.environ.get("MAILYARD_S3_SECRET_KEY", "")))
    if name == "s3_tls":  # https, the server's certificate verified against the test CA
        from mailyard.policy.config import BackendTlsConfig, S3Config
        from mailyard.store.blobs.s3 import S3BlobStore
        return S3BlobStore(S3Config(
            endpoint_url=os.environ["MAILYARD_S3_TLS"], bucket=bucket,
            access_key_id=os.environ.get("MAILYARD_S3_ACCESS_KEY", ""),
            secret_access_key=os.environ.get("MAILYARD_S3_SECRET_KEY", ""),
            tls=BackendTlsConfig(ca_file=os.environ["MAILYARD_TLS_CA"])))
    from mailyard.store.blobs.fs import FsBlobStore
    return FsBlobStore(tmp_path / bucket)


@pytest.fixture(params=BLOB_ADAPTERS)
async def blobstore(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[BlobStore]:
    """An adapter, or an adapter inside the sealing (and tiering) layers that
    stores.py puts around it."""
    *layers, adapter = request.param.split("-")
    if not layers:
        store = _plain_blobstore(adapter, tmp_path)
    else:
        from mailyard.store.blobs.keyring import Keyring
        from mailyard.store.blobs.sealed import SealedBlobStore
        from mailyard.store.blobs.tiered import TieredBlobStore
        inner = _plain_blobstore(adapter, tmp_path, "mailyard-contract-sealed")
        if "tiered" in layers:
            cold = _plain_blobstore(adapter, tmp_path, "mailyard-contract-cold")
            inner = TieredBlobStore(inner, cold)
        # One fixed secret: blobs an earlier run left in a shared bucket
        # stay readable (another secret would rightly fail authentication).
        keys = tmp_path / "keys.json"
        keys.write_text(json.dumps({"current": 1, "keys": {"1": base64.b64encode(
            hashlib.sha256(b"mailyard blob contract").digest()).decode()}}))
        store = SealedBlobStore(inner, Keyring(keys).open(create=False))
    await store.start()
    yield store
    await store.close()


@pytest.fixture(params=CACHE_ADAPTERS)
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "redis":
        from mailyard.policy.config import RedisConfig
        from mailyard.store.cache.redis import RedisCache
        store = RedisCache(RedisConfig(url=os.environ["MAILYARD_REDIS"]))
    elif request.param == "redis_tls":  # mutual TLS, the server's certificate verified
        from mailyard.policy.config import BackendTlsConfig, RedisConfig
        from mailyard.store.cache.redis import RedisCache
        # A cold pool opening 64 TLS connections at once (the concurrency
        # test) needs more than the default 1 s on a loaded 2-core machine;
        # the contract is about results, test_redis_faults about timeouts.
        tls = BackendTlsConfig(ca_file=os.environ["MAILYARD_TLS_CA"],
                               cert_file=os.environ["MAILYARD_TLS_CLIENT_CERT"],
                               key_file=os.environ["MAILYARD_TLS_CLIENT_KEY"])
        store = RedisCache(RedisConfig(url=os.environ["MAILYARD_REDIS_TLS"], request_timeout=5.0,
                                       tls=tls))
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
