"""A consumer that keeps many records in flight and finishes them out of order.

A remote server may take minutes to answer, so the outbound worker cannot
process a batch and commit it as the other consumers do: one slow destination
would hold up every other. Instead each record runs on its own, and the
committed offset of a partition moves up to just before the oldest record of
that partition still running.

A member must keep fetching to keep its partitions (see store/queue/base.py),
also while the window is full: it then rewinds and fetches the records it
already holds, which renews its membership and takes nothing new.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from mailyard.store.queue.base import Consumer, Record

HEARTBEAT = 0.5  # seconds between fetches while the window is full


class Window:
    def __init__(self, consumer: Consumer, capacity: int,
                 handle: Callable[[Record], Awaitable[bool]]):
        """`handle(record)` returns True when the record is done (commit it),
        False to leave it uncommitted so that it is fetched again later."""
        self.consumer, self.capacity, self.handle = consumer, capacity, handle
        self.running: dict[tuple[int, int], asyncio.Task] = {}
        # Per partition: offsets taken and not yet committed -> finished?
        self._taken: dict[int, dict[int, Record | None]] = {}
        self._retry = False

    async def run(self, stop: asyncio.Event) -> None:
        # Refill in batches of a quarter window, so that fetches and commits
        # (each a durable write) stay few while records finish one by one.
        refill = max(1, self.capacity // 4)
        while not stop.is_set():
            if self.capacity - len(self.running) < refill:
                await self._wait_for_room(refill, HEARTBEAT)
                if self.capacity - len(self.running) < refill:
                    await self.consumer.rewind()  # renews the membership, takes nothing
                    await self._take(await self.consumer.fetch(1, timeout=0), start=False)
                    await self.commit()
                    continue
            if self._retry:  # a record asked to be fetched again
                self._retry = False
                await self.consumer.rewind()
            await self._take(await self.consumer.fetch(self.capacity - len(self.running),
                                                       timeout=0.5))
            await self.commit()

    async def _take(self, records: list[Record], start: bool = True) -> None:
        for record in records:
            taken = self._taken.setdefault(record.partition, {})
            key = (record.partition, record.offset)
            if taken.get(record.offset) is not None or key in self.running:
                continue  # finished or running: a re-fetch after a rewind
            if not start:  # no room: fetch it again once there is
                self._retry = True
                continue
            # None until finished: it holds back the commits of later offsets.
            taken[record.offset] = None
            self.running[key] = asyncio.create_task(self._run(record))

    async def _run(self, record: Record) -> None:
        key = (record.partition, record.offset)
        try:
            done = await self.handle(record)
        except Exception:
            done = False  # `handle` reports its own errors; fetch it again
        finally:
            self.running.pop(key, None)
        if done:
            self._taken[record.partition][record.offset] = record
        else:
            self._retry = True

    async def _wait_for_room(self, room: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.running and self.capacity - len(self.running) < room:
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.wait(list(self.running.values()), timeout=left,
                               return_when=asyncio.FIRST_COMPLETED)

    async def commit(self) -> None:
        """Commits, per partition, the finished records below the oldest one
        still running."""
        ready = []
        for taken in self._taken.values():
            last = None
            for offset in sorted(taken):
                if taken[offset] is None:
                    break
                last = taken.pop(offset)
            if last is not None:
                ready.append(last)
        if ready:
            await self.consumer.commit(ready)

    async def drain(self, grace: float) -> None:
        """At shutdown: lets the running records finish for up to `grace`
        seconds, cancels the rest (they are fetched again after a restart),
        and commits what finished."""
        if self.running:
            await asyncio.wait(list(self.running.values()), timeout=grace)
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.commit()
