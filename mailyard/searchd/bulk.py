"""Bulk indexing (`mailyard search reindex`, the search benchmark): every core busy.

The indexer service indexes mail as it arrives, a batch at a time. Rebuilding
the index of a million messages is another job: text extraction (pure Python)
runs in `processes` worker processes while the previous batch is written (the
SQLite write runs on the index's writer thread and releases the GIL), so the
two overlap instead of taking turns. Each batch is handed to `learn` (the Bloom
filters) before its write starts: a filter must hold every searchable term.
"""
from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

from mailyard.policy.logs import EventLog
from mailyard.searchd.extract import Limits, document
from mailyard.searchd.index.base import SearchDocument, SearchIndex
from mailyard.store.metadata.base import MessageRecord

Item = tuple[MessageRecord, bytes]
_worker_log: EventLog | None = None


@dataclass
class Batch:
    documents: list[SearchDocument]
    terms: set[str] = field(default_factory=set)   # every term of the documents, once


def _extract_all(items: list[Item], limits: Limits) -> Batch:
    """In a worker: the documents, and their distinct terms (for the Bloom
    filters; cheaper here than in the process that also writes)."""
    global _worker_log
    if _worker_log is None:
        _worker_log = EventLog("reindex")
    documents = [document(record, raw, limits, _worker_log) for record, raw in items]
    terms: set[str] = set()
    for doc in documents:
        for text in doc.text.values():
            terms.update(text.split())
    return Batch(documents, terms)


class Extractor:
    """extract.document over a batch: on `processes` worker processes, or on a
    thread of this one when processes is 0."""

    def __init__(self, limits: Limits = Limits(), processes: int = 0):
        self.limits, self.processes = limits, processes
        # spawn, not fork: the parent has SQLite and event-loop threads.
        self._pool = (ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
                      if processes > 0 else None)

    async def extract(self, items: list[Item]) -> Batch:
        if not items:
            return Batch([])
        if self._pool is None:
            return await asyncio.to_thread(_extract_all, items, self.limits)
        loop = asyncio.get_running_loop()
        size = -(-len(items) // (2 * self.processes))  # two chunks a worker: fewer stragglers
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        done = await asyncio.gather(*(loop.run_in_executor(self._pool, _extract_all, chunk,
                                                           self.limits) for chunk in chunks))
        return Batch([doc for part in done for doc in part.documents],
                     set().union(*(part.terms for part in done)))

    async def documents(self, items: list[Item]) -> list[SearchDocument]:
        return (await self.extract(items)).documents

    async def stream(self, item_batches: AsyncIterator[list[Item]]) -> AsyncIterator[Batch]:
        """The batches extracted, one batch ahead: the workers start on the
        next batch while this one is learnt and written."""
        ahead: asyncio.Future | None = None
        try:
            async for items in item_batches:
                started = asyncio.ensure_future(self.extract(items))
                if ahead is not None:
                    yield await ahead
                ahead = started
            if ahead is not None:
                yield await ahead
                ahead = None
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def write_overlapped(index: SearchIndex, batches: AsyncIterator[Batch],
                           learn: Callable[[Batch], Awaitable[None]]) -> int:
    """Writes each batch of `batches` while the next one is being prepared,
    after `learn` has seen it; returns the number of documents written."""
    writing: asyncio.Future | None = None
    written = 0
    try:
        async for batch in batches:
            await learn(batch)
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(index.write(batch.documents))
            written += len(batch.documents)
        if writing is not None:
            await writing
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
    return written
