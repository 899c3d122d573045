"""Queue contract: every adapter must pass these (fixtures `queue`, `queue_factory`).

Topics and groups get uuid names, so the suite also holds on a shared Kafka.
The SQLite-only tests at the end cover what only the embedded adapter does:
sharing one database file between processes, and truncation.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import mailyard
from mailyard.store.errors import StorageError
from mailyard.store.queue.base import Consumer, Queue, Record, partition_for
from mailyard.store.queue.sqlite import SqliteQueue

KEYS = [f"user{i}".encode() for i in range(32)]  # spread over every partition


def name(kind: str) -> str:
    return f"test.{kind}.{uuid.uuid4().hex}"


async def fetch_n(consumer: Consumer, n: int, timeout: float = 5.0) -> list[Record]:
    """Fetches until `n` records arrived or a fetch comes back empty."""
    records: list[Record] = []
    while len(records) < n:
        batch = await consumer.fetch(max_records=n - len(records), timeout=timeout)
        if not batch:
            break
        records += batch
    return records


# --- contract ----------------------------------------------------------

async def test_publish_then_fetch_returns_the_record(queue: Queue):
    topic = name("topic")
    published = await queue.publish(topic, b"user1", b"hello")
    assert (published.topic, published.key, published.value, published.offset) == \
        (topic, b"user1", b"hello", 0)
    assert abs(published.timestamp_ms - time.time() * 1000) < 60_000

    consumer = await queue.consumer(topic, name("group"))
    assert await consumer.fetch(timeout=5) == [published]


async def test_records_of_one_key_keep_their_order(queue: Queue):
    topic = name("topic")
    published = [await queue.publish(topic, b"user1", b"m%d" % i) for i in range(20)]
    assert [r.offset for r in published] == list(range(20))

    consumer = await queue.consumer(topic, name("group"))
    first = await consumer.fetch(max_records=5, timeout=5)
    assert first == published[:5]
    assert first + await fetch_n(consumer, 15) == published


async def test_a_key_always_maps_to_the_same_partition(queue: Queue):
    topic = name("topic")
    partitions = defaultdict(set)
    for _ in range(3):
        for key in KEYS:
            partitions[key].add((await queue.publish(topic, key, b"x")).partition)
    assert all(len(p) == 1 for p in partitions.values())
    assert len(set.union(*partitions.values())) > 1


async def test_fetch_with_nothing_to_fetch_waits_for_the_timeout(queue: Queue):
    consumer = await queue.consumer(name("topic"), name("group"))
    started = time.monotonic()
    assert await consumer.fetch(timeout=0.5) == []
    assert 0.45 <= time.monotonic() - started < 3


async def test_a_publish_wakes_a_waiting_fetch(queue: Queue):
    topic = name("topic")
    consumer = await queue.consumer(topic, name("group"))
    fetching = asyncio.create_task(consumer.fetch(timeout=10))
    await asyncio.sleep(0.3)
    assert not fetching.done()

    published = time.monotonic()
    record = await queue.publish(topic, b"user1", b"wake up")
    assert await fetching == [record]
    assert time.monotonic() - published < 2


async def test_uncommitted_records_go_to_the_next_member(queue: Queue):
    topic, group = name("topic"), name("group")
    published = [await queue.publish(topic, b"user1", b"m%d" % i) for i in range(5)]
    first = await queue.consumer(topic, group)
    assert await fetch_n(first, 5) == published
    await first.close()

    second = await queue.consumer(topic, group)
    assert await fetch_n(second, 5) == published


async def test_rewind_hands_out_uncommitted_records_again(queue: Queue):
    topic = name("topic")
    published = [await queue.publish(topic, b"user1", b"m%d" % i) for i in range(5)]
    consumer = await queue.consumer(topic, name("group"))
    assert await fetch_n(consumer, 5) == published
    await consumer.commit(published[:2])
    assert await consumer.fetch(timeout=0.2) == []  # fetched, so not handed out again

    await consumer.rewind()
    assert await fetch_n(consumer, 3) == published[2:]


async def test_committed_records_never_come_back(queue: Queue):
    topic, group = name("topic"), name("group")
    published = [await queue.publish(topic, b"user1", b"m%d" % i) for i in range(5)]
    first = await queue.consumer(topic, group)
    await first.commit(await fetch_n(first, 5))
    await first.commit(published[:2])  # an older commit never moves the offset back
    await first.close()

    second = await queue.consumer(topic, group)
    assert await second.fetch(timeout=0.3) == []
    later = await queue.publish(topic, b"user1", b"later")
    assert later.offset == 5
    assert await second.fetch(timeout=5) == [later]
    await second.commit([later])
    await second.rewind()
    assert await second.fetch(timeout=0.2) == []


async def test_commits_survive_reopening(queue_factory):
    topic, group = name("topic"), name("group")
    before = await queue_factory()
    published = [await before.publish(topic, b"user1", b"m%d" % i) for i in range(5)]
    consumer = await before.consumer(topic, group)
    assert await fetch_n(consumer, 5) == published
    await consumer.commit(published[:3])
    await consumer.close()
    await before.close()

    after = await queue_factory()
    assert await after.lag(topic, group) == 2
    assert await fetch_n(await after.consumer(topic, group), 2) == published[3:]


async def test_members_of_a_group_split_the_partitions(queue: Queue):
    topic, group = name("topic"), name("group")
    published = [await queue.publish(topic, key, key) for key in KEYS]
    members = [await queue.consumer(topic, group), await queue.consumer(topic, group)]

    seen: dict[int, list[Record]] = {0: [], 1: []}
    for _ in range(10):
        for i, member in enumerate(members):
            batch = await member.fetch(timeout=0.2)
            await member.commit(batch)
            seen[i] += batch
        if len(seen[0]) + len(seen[1]) >= len(published):
            break

    assert sorted(seen[0] + seen[1], key=lambda r: r.key) == sorted(published, key=lambda r: r.key)
    partitions = [{r.partition for r in seen[i]} for i in (0, 1)]
    assert partitions[0] and partitions[1]
    assert not partitions[0] & partitions[1]


async def test_a_late_member_takes_over_part_of_the_partitions(queue: Queue):
    topic, group = name("topic"), name("group")
    published = [await queue.publish(topic, key, key) for key in KEYS]
    first = await queue.consumer(topic, group)
    seen = {"first": await first.fetch(max_records=4, timeout=5), "late": []}
    await first.commit(seen["first"])

    late = await queue.consumer(topic, group)
    for _ in range(30):
        for label, member in (("late", late), ("first", first)):
            batch = await member.fetch(max_records=4, timeout=0.2)
            await member.commit(batch)
            seen[label] += batch
        if len(seen["first"]) + len(seen["late"]) >= len(published):
            break

    assert seen["late"]
    everything = Counter(r.key for r in seen["first"] + seen["late"])
    assert everything == Counter(KEYS)  # each record exactly once


async def test_each_group_sees_every_record(queue: Queue):
    topic = name("topic")
    published = [await queue.publish(topic, key, key) for key in KEYS]
    for group in (name("group"), name("group")):
        consumer = await queue.consumer(topic, group)
        got = await fetch_n(consumer, len(published))
        assert sorted(r.key for r in got) == sorted(KEYS)


async def test_lag_counts_what_the_group_has_not_committed(queue: Queue):
    topic, group = name("topic"), name("group")
    for i in range(10):
        await queue.publish(topic, b"user1", b"m%d" % i)
    assert await queue.lag(topic, group) == 10  # a new group starts at the oldest record

    consumer = await queue.consumer(topic, group)
    first = await consumer.fetch(max_records=4, timeout=5)
    assert len(first) == 4
    assert await queue.lag(topic, group) == 10  # fetching alone is not progress
    await consumer.commit(first)
    assert await queue.lag(topic, group) == 6
    await consumer.commit(await fetch_n(consumer, 6))
    assert await queue.lag(topic, group) == 0
    assert await queue.lag(topic, name("group")) == 10


async def test_concurrent_publishes_are_all_kept_exactly_once(queue_factory):
    topic = name("topic")
    writer = await queue_factory()
    values = [b"message %d" % i for i in range(200)]
    records = await asyncio.gather(
        *(writer.publish(topic, KEYS[i % len(KEYS)], v) for i, v in enumerate(values)))
    assert [r.value for r in records] == values

    offsets = defaultdict(list)
    for r in records:
        offsets[r.partition].append(r.offset)
    assert all(sorted(o) == list(range(len(o))) for o in offsets.values())

    reader = await queue_factory()  # what was acknowledged is there for anyone opening the log
    got = await fetch_n(await reader.consumer(topic, name("group")), 200)
    assert sorted(r.value for r in got) == sorted(values)


async def test_empty_and_one_mebibyte_values(queue: Queue):
    topic = name("topic")
    large = os.urandom(1 << 20)
    await queue.publish(topic, b"user1", b"")
    await queue.publish(topic, b"user1", large)
    got = await fetch_n(await queue.consumer(topic, name("group")), 2)
    assert [r.value for r in got] == [b"", large]


# --- SQLite adapter ----------------------------------------------------

REPO = Path(mailyard.__file__).resolve().parents[1]

PUBLISH = """
import asyncio, sys
from mailyard.store.queue.sqlite import SqliteQueue
async def main():
    queue = SqliteQueue(sys.argv[1])
    await queue.start()
    await queue.publish(sys.argv[2], b"user1", b"from another process")
    await queue.close()
asyncio.run(main())
"""

CONSUME_THEN_HANG = """
import asyncio, sys
from mailyard.store.queue.sqlite import SqliteQueue
async def main():
    queue = SqliteQueue(sys.argv[1], member_ttl=float(sys.argv[4]))
    await queue.start()
    consumer = await queue.consumer(sys.argv[2], sys.argv[3])
    print(len(await consumer.fetch(timeout=5)), flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def python(code: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
async def sqlite_queue(tmp_path) -> AsyncIterator[SqliteQueue]:
    queue = SqliteQueue(tmp_path / "queue.db", poll_interval=0.05, member_ttl=1.5)
    await queue.start()
    yield queue
    await queue.close()


async def test_records_published_by_another_process_are_fetched(sqlite_queue, tmp_path):
    topic = name("topic")
    consumer = await sqlite_queue.consumer(topic, name("group"))
    fetching = asyncio.create_task(consumer.fetch(timeout=10))
    child = await python(PUBLISH, str(tmp_path / "queue.db"), topic)
    _, errors = await child.communicate()
    assert child.returncode == 0, errors.decode()

    [record] = await fetching
    assert (record.key, record.value, record.offset) == (b"user1", b"from another process", 0)


async def test_a_killed_members_partitions_are_taken_over(sqlite_queue, tmp_path):
    topic, group = name("topic"), name("group")
    for key in KEYS:
        await sqlite_queue.publish(topic, key, key)
    child = await python(CONSUME_THEN_HANG, str(tmp_path / "queue.db"), topic, group, "1.5")
    line = await child.stdout.readline()
    assert line, (await child.stderr.read()).decode()
    assert int(line) == len(KEYS)  # it alone held every partition
    child.kill()
    await child.wait()

    survivor = await sqlite_queue.consumer(topic, group)
    assert await survivor.fetch(timeout=0) == []  # the dead member's lease has not expired yet
    got = await fetch_n(survivor, len(KEYS))
    assert sorted(r.key for r in got) == sorted(KEYS)


async def test_truncate_deletes_only_old_records_every_group_committed(sqlite_queue):
    queue, topic = sqlite_queue, name("topic")
    fast = await queue.consumer(topic, "fast")
    slow = await queue.consumer(topic, "slow")
    published = [await queue.publish(topic, b"user1", b"m%d" % i) for i in range(5)]
    assert await queue.truncate(topic, keep_ms=0) == 0  # nobody committed anything

    await fast.commit(await fetch_n(fast, 5))
    await slow.commit((await fetch_n(slow, 5))[:2])
    await asyncio.sleep(0.02)
    assert await queue.truncate(topic, keep_ms=60_000) == 0  # too young
    assert await queue.truncate(topic, keep_ms=0) == 2
    assert await queue.truncate(topic, keep_ms=0) == 0

    await slow.rewind()
    assert await fetch_n(slow, 3) == published[2:]
    assert await queue.lag(topic, "slow") == 3
    late = await queue.consumer(topic, "late")  # a new group starts at the oldest kept
    assert await queue.lag(topic, "late") == 3
    assert await fetch_n(late, 3) == published[2:]

    await slow.commit(published[2:])
    await late.commit(published[2:])
    await asyncio.sleep(0.02)
    assert await queue.truncate(topic, keep_ms=0) == 3
    assert (await queue.publish(topic, b"user1", b"next")).offset == 5  # offsets never reused


async def test_truncate_keeps_a_topic_no_group_has_joined(sqlite_queue):
    topic = name("topic")
    await sqlite_queue.publish(topic, b"user1", b"waiting for its first consumer")
    await asyncio.sleep(0.02)
    assert await sqlite_queue.truncate(topic, keep_ms=0) == 0
    assert await sqlite_queue.lag(topic, name("group")) == 1


async def test_retention_truncates_committed_records_by_itself(tmp_path):
    queue = SqliteQueue(tmp_path / "queue.db", retention_ms=0, retention_check=0.05)
    await queue.start()
    try:
        kept, done = name("kept"), name("done")
        consumer = await queue.consumer(done, "group")
        await queue.consumer(kept, "group")  # joined, never commits
        for i in range(5):
            await queue.publish(done, b"user1", b"m%d" % i)
            await queue.publish(kept, b"user1", b"m%d" % i)
        await consumer.commit(await fetch_n(consumer, 5))
        await asyncio.sleep(0.5)
        with sqlite3.connect(tmp_path / "queue.db") as db:
            counts = dict(db.execute("SELECT topic, count(*) FROM records GROUP BY topic"))
        assert counts.get(done, 0) == 0 and counts[kept] == 5
    finally:
        await queue.close()


async def test_a_topic_keeps_its_partition_count(tmp_path):
    key = next(k for k in KEYS if partition_for(k, 4) != partition_for(k, 8))
    four = SqliteQueue(tmp_path / "queue.db", partitions=4)
    await four.start()
    assert (await four.publish("old", key, b"x")).partition == partition_for(key, 4)
    await four.close()

    eight = SqliteQueue(tmp_path / "queue.db", partitions=8)
    await eight.start()
    try:
        assert (await eight.publish("old", key, b"x")).partition == partition_for(key, 4)
        assert (await eight.publish("new", key, b"x")).partition == partition_for(key, 8)
    finally:
        await eight.close()


async def test_a_failed_publish_raises_and_leaves_nothing_behind(sqlite_queue, tmp_path):
    db = sqlite3.connect(tmp_path / "queue.db")
    db.execute("CREATE TRIGGER reject BEFORE INSERT ON records WHEN NEW.value = x'626164' "
               "BEGIN SELECT RAISE(ABORT, 'rejected'); END")
    db.close()
    topic = name("topic")
    values = [b"good %d" % i for i in range(20)] + [b"bad"]
    results = await asyncio.gather(*(sqlite_queue.publish(topic, b"user1", v) for v in values),
                                   return_exceptions=True)
    assert isinstance(results[-1], StorageError)
    assert all(isinstance(r, (Record, StorageError)) for r in results)
    acknowledged = [r for r in results if isinstance(r, Record)]

    after = await sqlite_queue.publish(topic, b"user1", b"after")
    got = await fetch_n(await sqlite_queue.consumer(topic, name("group")), 100, timeout=0.5)
    assert got == acknowledged + [after]  # nothing of a failed batch, no offset skipped
    assert [r.offset for r in got] == list(range(len(got)))


async def test_opening_where_no_database_can_be_created_raises_storage_error(tmp_path):
    queue = SqliteQueue(tmp_path / "missing" / "queue.db")
    with pytest.raises(StorageError, match="missing"):
        await queue.start()
    await queue.close()
