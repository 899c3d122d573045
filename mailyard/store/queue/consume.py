"""The loop every queue consumer runs (delivery worker, indexer, ...).

Fetch a batch, process it, commit; a backend outage is nobody's bad record, so
on StorageError nothing is committed, the batch is rewound and read again
after a pause. Processing must be idempotent: a crash replays the batch.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from mailyard.store.errors import StorageError
from mailyard.store.queue.base import Queue, Record

OUTAGE_PAUSE = 1.0  # seconds before a batch that met an outage is read again


async def consume(queue: Queue, topic: str, group: str, *, batch_size: int,
                  process: Callable[[list[Record]], Awaitable[Any]], stop: asyncio.Event,
                  log, ready=None,
                  after_commit: Callable[[Any], Awaitable[None]] | None = None) -> None:
    """Runs until `stop` is set. `after_commit(result)` gets what `process`
    returned, once the batch is committed (e.g. to drop what it no longer needs)."""
    consumer = await queue.consumer(topic, group)
    if ready:
        ready(None)
    try:
        while not stop.is_set():
            records = await consumer.fetch(batch_size, timeout=1.0)
            if not records:
                continue
            try:
                result = await process(records)
                await consumer.commit(records)
            except StorageError as exc:
                log.error("storage_unavailable", error=str(exc))
                await consumer.rewind()
                await sleep_unless(stop, OUTAGE_PAUSE)
                continue
            if after_commit is not None:
                await after_commit(result)
    finally:
        await consumer.close()


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps, but wakes at once when `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
