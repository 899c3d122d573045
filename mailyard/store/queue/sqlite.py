"""The embedded Queue adapter: a partitioned log in one SQLite database (WAL).

Everything the log promises lives in the database, not in memory, so several
processes may share one file: record offsets, each group's committed offsets
and the leases that split a group's partitions between its live members.

SQLite work runs in two single-thread executors so the event loop never blocks:
every write goes through one connection (no write-lock contention inside this
process), reads through another (a large fetch does not hold up publishers).
"""
from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from mailyard.store.errors import StorageError
from mailyard.store.queue.base import Consumer, Queue, Record, partition_for

T = TypeVar("T")

# How long a statement waits for another process's write lock before failing.
_BUSY_TIMEOUT = 10.0

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL
);
-- Next offset per partition, kept apart from the records so truncation
-- never lets an offset be handed out twice.
CREATE TABLE IF NOT EXISTS heads (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
);
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    committed INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
);
CREATE TABLE IF NOT EXISTS members (
    member TEXT PRIMARY KEY,
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (grp, topic, partition)
);
COMMIT;
"""

_Pending = tuple[str, bytes, bytes, "asyncio.Future[Record]"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@contextmanager
def _transaction(db: sqlite3.Connection, durable: bool = True) -> Iterator[sqlite3.Connection]:
    """One write transaction, all or nothing. `durable=False` skips the fsync:
    for lease bookkeeping, which is cheap to lose and renewed every fetch."""
    db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _ensure_topic(db: sqlite3.Connection, topic: str, partitions: int) -> int:
    """The topic's partition count, creating the topic with `partitions` if new."""
    row = db.execute("SELECT partitions FROM topics WHERE topic = ?", (topic,)).fetchone()
    if row:
        return row[0]
    db.execute("INSERT INTO topics VALUES (?, ?)", (topic, partitions))
    db.executemany("INSERT INTO heads VALUES (?, ?, 0)", [(topic, p) for p in range(partitions)])
    return partitions


class SqliteQueue(Queue):
    def __init__(self, path: str | os.PathLike, partitions: int = 4,
                 poll_interval: float = 0.5, member_ttl: float = 10.0,
                 retention_ms: float | None = None, retention_check: float = 300.0) -> None:
        """`retention_ms`: records older than this that every group has
        committed are deleted every `retention_check` seconds (like Kafka's
        log retention), so the log does not grow forever; None keeps all."""
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.path = os.fspath(path)
        self.partitions = partitions  # for new topics; existing ones keep theirs
        self.poll_interval = poll_interval
        self.member_ttl = member_ttl
        self.retention_ms = retention_ms
        self.retention_check = retention_check
        self._janitor: asyncio.Task[None] | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="queue-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="queue-read")
        self._wdb: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wakeups: dict[str, asyncio.Event] = {}
        self._consumers: set[SqliteConsumer] = set()
        self._closed = False

    # -- lifecycle --

    async def start(self) -> None:
        self._wdb = await self._call(self._writer, "open", self._open_writer)
        self._rdb = await self._call(self._reader, "open", self._open_reader)
        if self.retention_ms is not None:
            self._janitor = asyncio.create_task(self._retain())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._janitor:
            self._janitor.cancel()
        if self._flusher:
            await self._flusher
        for consumer in list(self._consumers):
            await consumer.close()
        for executor, db in ((self._writer, self._wdb), (self._reader, self._rdb)):
            if db is not None:
                await self._call(executor, "close", db.close)
            executor.shutdown(wait=False)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE).
        return sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, isolation_level=None)

    def _open_writer(self) -> sqlite3.Connection:
        db = self._connect()
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(_SCHEMA)
        return db

    def _open_reader(self) -> sqlite3.Connection:
        db = self._connect()
        db.execute("PRAGMA query_only = ON")
        return db

    def _check_open(self) -> None:
        if self._closed or self._wdb is None:
            raise StorageError(f"queue {self.path} is not open")

    async def _call(self, executor: ThreadPoolExecutor, what: str,
                    fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except sqlite3.Error as exc:
            raise StorageError(f"queue {self.path}: {what} failed: {exc}") from exc

    # -- publishing --

    async def publish(self, topic: str, key: bytes, value: bytes) -> Record:
        self._check_open()
        done: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._pending.append((topic, bytes(key), bytes(value), done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        # Group commit: publishes that arrive while a batch is being written
        # wait for the next one, so many publishers share one transaction and
        # one fsync instead of queueing for one each.
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    records = await self._call(self._writer, "publish", self._append,
                                               [(t, k, v) for t, k, v, _ in batch])
                except Exception as exc:
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for (*_, done), record in zip(batch, records):
                    if not done.done():  # the publisher may have been cancelled
                        done.set_result(record)
                for topic in {r.topic for r in records}:
                    self._wake(topic)
        finally:
            self._flusher = None

    def _append(self, batch: list[tuple[str, bytes, bytes]]) -> list[Record]:
        assert self._wdb is not None
        now = _now_ms()
        counts: dict[str, int] = {}
        heads: dict[tuple[str, int], int] = {}
        records = []
        with _transaction(self._wdb) as db:
            for topic, key, value in batch:
                if topic not in counts:
                    counts[topic] = _ensure_topic(db, topic, self.partitions)
                partition = partition_for(key, counts[topic])
                if (topic, partition) not in heads:
                    heads[topic, partition] = db.execute(
                        "SELECT next_offset FROM heads WHERE topic = ? AND partition = ?",
                        (topic, partition)).fetchone()[0]
                records.append(Record(topic, partition, heads[topic, partition], key, value, now))
                heads[topic, partition] += 1
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
                           [(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp_ms)
                            for r in records])
            db.executemany("UPDATE heads SET next_offset = ? WHERE topic = ? AND partition = ?",
                           [(n, t, p) for (t, p), n in heads.items()])
        return records

    def _wakeup(self, topic: str) -> asyncio.Event:
        return self._wakeups.setdefault(topic, asyncio.Event())

    def _wake(self, topic: str) -> None:
        event = self._wakeups.pop(topic, None)
        if event:
            event.set()

    # -- consuming --

    async def consumer(self, topic: str, group: str) -> Consumer:
        self._check_open()
        member = uuid.uuid4().hex
        partitions = await self._call(self._writer, "join", self._join, topic, group, member)
        consumer = SqliteConsumer(self, topic, group, member, partitions)
        self._consumers.add(consumer)
        return consumer

    def _join(self, topic: str, group: str, member: str) -> int:
        assert self._wdb is not None
        with _transaction(self._wdb) as db:
            partitions = _ensure_topic(db, topic, self.partitions)
            # A new group starts at the oldest record still kept; its rows also
            # make it a known group, which holds back truncation.
            db.execute("""
                INSERT OR IGNORE INTO offsets (grp, topic, partition, committed)
                SELECT ?, h.topic, h.partition, COALESCE(
                    (SELECT MIN(r.offset) FROM records r
                     WHERE r.topic = h.topic AND r.partition = h.partition), h.next_offset)
                FROM heads h WHERE h.topic = ?""", (group, topic))
            db.execute("INSERT INTO members VALUES (?, ?, ?, ?)",
                       (member, group, topic, time.time() + self.member_ttl))
        return partitions

    def _sync_leases(self, topic: str, group: str, member: str,
                     partitions: int) -> tuple[list[int], bool]:
        """Renews the member's heartbeat and moves its leases towards a fair
        share; returns the partitions it holds and whether it released any."""
        assert self._wdb is not None
        now = time.time()
        scope = (group, topic)
        with _transaction(self._wdb, durable=False) as db:
            # Members that stopped renewing (a killed process) lose their partitions.
            db.execute("""DELETE FROM leases WHERE member IN (SELECT member FROM members
                          WHERE grp = ? AND topic = ? AND expires < ?)""", (*scope, now))
            db.execute("DELETE FROM members WHERE grp = ? AND topic = ? AND expires < ?",
                       (*scope, now))
            db.execute("""INSERT INTO members VALUES (?, ?, ?, ?)
                          ON CONFLICT (member) DO UPDATE SET expires = excluded.expires""",
                       (member, *scope, now + self.member_ttl))
            live = db.execute("SELECT COUNT(*) FROM members WHERE grp = ? AND topic = ?",
                              scope).fetchone()[0]
            fair = math.ceil(partitions / live)
            held = [p for (p,) in db.execute(
                "SELECT partition FROM leases WHERE grp = ? AND topic = ? AND member = ? "
                "ORDER BY partition", (*scope, member))]
            released = held[fair:]
            db.executemany("DELETE FROM leases WHERE grp = ? AND topic = ? AND partition = ?",
                           [(*scope, p) for p in released])
            held = held[:fair]
            if len(held) < fair:
                taken = {p for (p,) in db.execute(
                    "SELECT partition FROM leases WHERE grp = ? AND topic = ?", scope)}
                free = [p for p in range(partitions) if p not in taken][:fair - len(held)]
                db.executemany("INSERT INTO leases VALUES (?, ?, ?, ?)",
                               [(*scope, p, member) for p in free])
                held += free
        return held, bool(released)

    def _read(self, topic: str, group: str, order: list[int], positions: dict[int, int],
              max_records: int) -> list[Record]:
        assert self._rdb is not None
        records: list[Record] = []
        for partition in order:
            room = max_records - len(records)
            if room <= 0:
                break
            committed = self._rdb.execute(
                "SELECT committed FROM offsets WHERE grp = ? AND topic = ? AND partition = ?",
                (group, topic, partition)).fetchone()
            start = max(committed[0] if committed else 0, positions.get(partition, 0))
            rows = self._rdb.execute(
                "SELECT offset, key, value, timestamp_ms FROM records "
                "WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, partition, start, room))
            records += [Record(topic, partition, *row) for row in rows]
        return records

    def _commit(self, topic: str, group: str, ends: dict[int, int]) -> None:
        assert self._wdb is not None
        with _transaction(self._wdb) as db:
            db.executemany("""
                INSERT INTO offsets VALUES (?, ?, ?, ?)
                ON CONFLICT (grp, topic, partition)
                DO UPDATE SET committed = MAX(committed, excluded.committed)""",
                [(group, topic, p, end) for p, end in ends.items()])

    def _leave(self, member: str) -> None:
        assert self._wdb is not None
        with _transaction(self._wdb, durable=False) as db:
            db.execute("DELETE FROM leases WHERE member = ?", (member,))
            db.execute("DELETE FROM members WHERE member = ?", (member,))

    # -- bookkeeping --

    async def lag(self, topic: str, group: str) -> int:
        self._check_open()
        return await self._call(self._reader, "lag", self._lag, topic, group)

    def _lag(self, topic: str, group: str) -> int:
        assert self._rdb is not None
        # A group that never joined would start at the oldest record kept.
        return self._rdb.execute("""
            SELECT COALESCE(SUM(h.next_offset - COALESCE(o.committed,
                (SELECT MIN(r.offset) FROM records r
                 WHERE r.topic = h.topic AND r.partition = h.partition), h.next_offset)), 0)
            FROM heads h LEFT JOIN offsets o
              ON o.grp = ? AND o.topic = h.topic AND o.partition = h.partition
            WHERE h.topic = ?""", (group, topic)).fetchone()[0]

    async def truncate(self, topic: str, keep_ms: float) -> int:
        """Deletes records older than `keep_ms` that every group known on the
        topic has committed past; returns how many. A topic no group has ever
        joined keeps everything, since its consumers may just not have started.
        A group stays known for good, so a retired group holds records back."""
        self._check_open()
        return await self._call(self._writer, "truncate", self._truncate, topic,
                                _now_ms() - keep_ms)

    async def _retain(self) -> None:
        """Applies `retention_ms` to every topic now and then. Safe from every
        process at once: truncation only drops what all groups committed."""
        while True:
            await asyncio.sleep(self.retention_check)
            try:
                for topic in await self._call(self._reader, "topics", self._topics):
                    await self.truncate(topic, self.retention_ms)
                # Give the space back: the WAL keeps its high-water size otherwise.
                await self._call(self._writer, "checkpoint", self._checkpoint)
            except StorageError:
                pass  # a busy or failing disk: try again next round

    def _topics(self) -> list[str]:
        assert self._rdb is not None
        return [row[0] for row in self._rdb.execute("SELECT topic FROM topics")]

    def _checkpoint(self) -> None:
        assert self._wdb is not None
        self._wdb.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _truncate(self, topic: str, cutoff_ms: float) -> int:
        assert self._wdb is not None
        deleted = 0
        with _transaction(self._wdb) as db:
            floors = db.execute("SELECT partition, MIN(committed) FROM offsets "
                                "WHERE topic = ? GROUP BY partition", (topic,)).fetchall()
            for partition, floor in floors:
                deleted += db.execute(
                    "DELETE FROM records WHERE topic = ? AND partition = ? "
                    "AND offset < ? AND timestamp_ms < ?",
                    (topic, partition, floor, cutoff_ms)).rowcount
        return deleted


class SqliteConsumer(Consumer):
    """A group member. Its heartbeat is renewed on every fetch (and every
    poll while a fetch waits), so processing one batch for longer than
    `member_ttl` hands its partitions to the other members."""

    def __init__(self, queue: SqliteQueue, topic: str, group: str, member: str,
                 partitions: int) -> None:
        self._queue = queue
        self.topic = topic
        self.group = group
        self._member = member
        self._partitions = partitions
        self._positions: dict[int, int] = {}  # next offset to hand out, past what was fetched
        self._turn = 0  # rotates the partition read first, so a busy one starves no other
        self._closed = False

    async def fetch(self, max_records: int = 100, timeout: float = 1.0) -> list[Record]:
        if self._closed:
            raise StorageError(f"consumer of {self.topic} for {self.group} is closed")
        self._queue._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Taken before reading, so a publish landing in between still wakes us.
            wakeup = self._queue._wakeup(self.topic)
            records = await self._poll(max_records)
            remaining = deadline - loop.time()
            if records or remaining <= 0:
                return records
            try:
                # Publishers in this process wake us; other processes' records
                # are found by looking again every poll_interval.
                await asyncio.wait_for(wakeup.wait(), min(self._queue.poll_interval, remaining))
            except TimeoutError:
                pass

    async def _poll(self, max_records: int) -> list[Record]:
        q = self._queue
        held, released = await q._call(q._writer, "fetch", q._sync_leases, self.topic,
                                       self.group, self._member, self._partitions)
        if released:
            q._wake(self.topic)  # members waiting in this process can take them now
        self._positions = {p: o for p, o in self._positions.items() if p in held}
        if not held:
            return []
        self._turn = (self._turn + 1) % len(held)
        order = held[self._turn:] + held[:self._turn]
        records = await q._call(q._reader, "fetch", q._read, self.topic, self.group, order,
                                dict(self._positions), max_records)
        for record in records:
            self._positions[record.partition] = record.offset + 1
        return records

    async def commit(self, records: list[Record]) -> None:
        # Allowed after close or after losing a partition: offsets only move forward.
        self._queue._check_open()
        ends: dict[int, int] = {}
        for record in records:
            if record.topic != self.topic:
                raise ValueError(f"record of {record.topic} committed on {self.topic}")
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
        if ends:
            await self._queue._call(self._queue._writer, "commit", self._queue._commit,
                                    self.topic, self.group, ends)

    async def rewind(self) -> None:
        self._positions.clear()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        q = self._queue
        q._consumers.discard(self)
        await q._call(q._writer, "leave", q._leave, self._member)
        q._wake(self.topic)  # its partitions are free for members waiting here
