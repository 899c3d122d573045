"""Fixtures for the Queue contract suite, one parameter per adapter.

The SQLite adapter always runs; tests/cluster adds Kafka when its server runs.
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mailyard.store.queue.base import Queue

QUEUE_ADAPTERS = ["sqlite"]  # tests/cluster adds "kafka" when its server runs
if os.environ.get("MAILYARD_KAFKA"):
    QUEUE_ADAPTERS.append("kafka")
if os.environ.get("MAILYARD_KAFKA_TLS"):
    QUEUE_ADAPTERS.append("kafka_tls")

QueueFactory = Callable[[], Awaitable[Queue]]


@pytest.fixture(params=QUEUE_ADAPTERS)
async def queue_factory(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[QueueFactory]:
    """Opens started queues on one shared backend (one database file, one
    cluster), as a restart or another process would; closes them afterwards."""
    opened: list[Queue] = []

    def new_queue() -> Queue:
        if request.param == "kafka":
            from mailyard.policy.config import KafkaConfig
            from mailyard.store.queue.kafka import KafkaQueue
            # One cluster shared by every test: they use fresh uuid topics and groups.
            return KafkaQueue(KafkaConfig(bootstrap_servers=[os.environ["MAILYARD_KAFKA"]]))
        if request.param == "kafka_tls":  # TLS, the broker's certificate verified
            from mailyard.policy.config import BackendTlsConfig, KafkaConfig
            from mailyard.store.queue.kafka import KafkaQueue
            return KafkaQueue(KafkaConfig(
                bootstrap_servers=[os.environ["MAILYARD_KAFKA_TLS"]],
                tls=BackendTlsConfig(enabled=True, ca_file=os.environ["MAILYARD_TLS_CA"])))
        from mailyard.store.queue.sqlite import SqliteQueue
        # A long poll interval, so a fetch that returns early proves that the
        # publisher woke it rather than a poll happening to find the record.
        return SqliteQueue(tmp_path / "queue.db", poll_interval=5.0)

    async def open_queue() -> Queue:
        queue = new_queue()
        await queue.start()
        opened.append(queue)
        return queue

    yield open_queue
    for queue in opened:
        await queue.close()


@pytest.fixture
async def queue(queue_factory: QueueFactory) -> Queue:
    return await queue_factory()
