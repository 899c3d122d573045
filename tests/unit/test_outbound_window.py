"""The outbound worker's consumer window on the real SQLite log: records
finish out of order, commits never pass one still running, and a full window
keeps its partitions."""
from __future__ import annotations

import asyncio

from mailyard.mta.outbound.window import Window
from mailyard.store.queue.sqlite import SqliteQueue


async def started_queue(tmp_path, **kwargs) -> SqliteQueue:
    queue = SqliteQueue(tmp_path / "queue.db", partitions=1, poll_interval=0.05, **kwargs)
    await queue.start()
    return queue


async def eventually(predicate, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_commits_stop_below_the_oldest_record_still_running(tmp_path):
    queue = await started_queue(tmp_path)
    for n in range(6):
        await queue.publish("t", b"k", str(n).encode())
    release = {n: asyncio.Event() for n in range(6)}
    started: list[int] = []

    async def handle(record) -> bool:
        started.append(int(record.value))
        await release[int(record.value)].wait()
        return True

    consumer = await queue.consumer("t", "g")
    window = Window(consumer, capacity=10, handle=handle)
    stop = asyncio.Event()
    task = asyncio.create_task(window.run(stop))
    await eventually(lambda: asyncio.sleep(0, len(started) == 6))
    for n in (0, 1, 3, 4):
        release[n].set()
    await eventually(lambda: _lag_is(queue, 4))  # 2 still runs: 2..5 stay uncommitted
    await asyncio.sleep(0.6)
    assert await queue.lag("t", "g") == 4
    release[2].set()
    await eventually(lambda: _lag_is(queue, 1))  # 5 still runs
    stop.set()
    await window.drain(grace=0.1)  # 5 is cancelled, not committed
    await task
    await consumer.close()
    assert await queue.lag("t", "g") == 1
    again = await queue.consumer("t", "g")
    assert [r.value for r in await again.fetch(10, timeout=2)] == [b"5"]
    await queue.close()


async def _lag_is(queue, expected: int) -> bool:
    return await queue.lag("t", "g") == expected


async def test_a_full_window_keeps_its_partitions_and_takes_no_more(tmp_path):
    queue = await started_queue(tmp_path, member_ttl=1.5)
    for n in range(3):
        await queue.publish("t", b"k", str(n).encode())
    running, most = 0, 0
    gate = asyncio.Event()

    async def handle(record) -> bool:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        return True

    window = Window(await queue.consumer("t", "g"), capacity=2, handle=handle)
    stop = asyncio.Event()
    task = asyncio.create_task(window.run(stop))
    await asyncio.sleep(3.5)  # past member_ttl: a member that stopped fetching would be gone
    rival = await queue.consumer("t", "g")
    assert await rival.fetch(10, timeout=1.0) == [], "the busy member lost its partition"
    await rival.close()
    assert most == 2
    gate.set()
    await eventually(lambda: _lag_is(queue, 0))
    stop.set()
    await task
    assert most == 2
    await queue.close()
