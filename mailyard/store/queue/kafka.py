"""The Queue port on Kafka (aiokafka), for deployments past one machine.

The port is shaped after Kafka, so this adapter is thin:
- a topic is a Kafka topic, created on first use with `queue.partitions`
  partitions and `kafka.replication_factor` replicas; a topic that exists
  keeps its partition count (changing it would move keys between partitions);
- a record's partition is `partition_for(key)`, chosen here rather than by
  Kafka's partitioner, so the embedded and the Kafka adapter agree;
- a consumer group is a Kafka consumer group whose offsets move only by
  `commit` (never automatically), and never backwards.

Publishing waits for every in-sync replica (acks=all). The producer is
deliberately not idempotent: aiokafka's idempotent producer never gives up on
a batch, so a record whose publish timed out during an outage would still be
appended once Kafka came back, after the MX had answered 451 and the sender
had retried: the same mail twice, under two queue ids. This producer drops a
batch it could not deliver within `request_timeout`. Its retries can append
a record twice only when an acknowledgement was lost; consumers absorb that
(they are idempotent, and a record's ids derive from its queue id). aiokafka
keeps one request per broker in flight, so a retry never reorders a partition.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import (AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener,
                     ConsumerStoppedError, TopicPartition)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (ClusterAuthorizationFailedError, CommitFailedError,
                             IllegalGenerationError, KafkaError, KafkaTimeoutError,
                             RebalanceInProgressError, TopicAlreadyExistsError,
                             TopicAuthorizationFailedError, UnknownMemberIdError, for_code)

from mailyard.policy.config import KafkaConfig
from mailyard.policy.tls import client_context, warn_if_unverified
from mailyard.store.errors import StorageError
from mailyard.store.queue.base import Consumer, Queue, Record, partition_for

T = TypeVar("T")

# Kafka's default cap is 1 MiB per record batch; the port takes larger values.
MAX_RECORD_BYTES = 8 * 1024 * 1024
# Retries of a failed call: exponential backoff from the first pause to the
# cap, with jitter, so clients that failed together do not retry together.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


def _transient(exc: BaseException) -> bool:
    """Errors worth retrying: Kafka unreachable, a leader or coordinator moving."""
    return isinstance(exc, KafkaTimeoutError) or (
        isinstance(exc, KafkaError) and getattr(exc, "retriable", False))


def _transient_for_commit(exc: BaseException) -> bool:
    """A commit that met a rebalance succeeds after the member has rejoined."""
    return _transient(exc) or isinstance(exc, (CommitFailedError, RebalanceInProgressError,
                                               IllegalGenerationError, UnknownMemberIdError))


def _tls_settings(config: KafkaConfig) -> dict:
    """aiokafka's TLS options when [kafka.tls] is enabled (brokers' SSL listeners)."""
    if not config.tls.enabled:
        return {}
    warn_if_unverified(config.tls, f"kafka {','.join(config.bootstrap_servers)}")
    return {"security_protocol": "SSL", "ssl_context": client_context(config.tls, "kafka.tls")}


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class KafkaQueue(Queue):
    def __init__(self, config: KafkaConfig, partitions: int = 4, member_ttl: float = 10.0,
                 retention_ms: float | None = None) -> None:
        """`member_ttl` is the consumers' session timeout: a member silent that
        long (a killed process) loses its partitions. `retention_ms` is the new
        topics' retention.ms; None keeps records for good."""
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if config.replication_factor < 1:
            raise ValueError("kafka.replication_factor must be at least 1")
        self.servers = ",".join(config.bootstrap_servers)
        self.partitions = partitions  # for new topics; existing ones keep theirs
        self.replication_factor = config.replication_factor
        self.timeout = config.request_timeout
        self.member_ttl = member_ttl
        self.retention_ms = retention_ms
        self.prefix = config.topic_prefix  # on every topic and group name
        self._client_settings = dict(
            bootstrap_servers=list(config.bootstrap_servers), client_id=config.client_id,
            request_timeout_ms=_ms(config.request_timeout), retry_backoff_ms=100,
            **_tls_settings(config))
        self._admin: AIOKafkaAdminClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._offsets: AIOKafkaConsumer | None = None  # no group: reads end offsets for lag
        self._topics: dict[str, asyncio.Future[int]] = {}
        self._consumers: set[KafkaConsumer] = set()
        self._closed = False

    # -- lifecycle --

    async def start(self) -> None:
        self._admin, self._producer, self._offsets = await self._retrying("connect", self._connect)

    async def _connect(self) -> tuple[AIOKafkaAdminClient, AIOKafkaProducer, AIOKafkaConsumer]:
        admin = AIOKafkaAdminClient(**self._client_settings)
        producer = AIOKafkaProducer(**self._client_settings, acks="all",
                                    enable_idempotence=False, max_request_size=MAX_RECORD_BYTES)
        offsets = AIOKafkaConsumer(**self._client_settings, enable_auto_commit=False)
        try:
            await admin.start()
            await producer.start()
            await offsets.start()
        except BaseException:
            await _quietly(admin.close(), producer.stop(), offsets.stop())
            raise
        return admin, producer, offsets

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.close()
        # A batch Kafka did not take fails within request_timeout, so stopping
        # the producer (which waits for them) is bounded too.
        if self._producer is not None:
            await _quietly(self._producer.stop(), self._offsets.stop(), self._admin.close(),
                           timeout=2 * self.timeout)

    def _check_open(self) -> None:
        if self._closed or self._producer is None:
            raise StorageError(f"kafka {self.servers}: the queue is not open")

    async def _retrying(self, operation: str, attempt: Callable[[], Awaitable[T]], *,
                        deadline: float | None = None,
                        transient: Callable[[BaseException], bool] = _transient) -> T:
        """Runs `attempt` until it succeeds, fails for good, or the deadline
        (request_timeout from now unless given) passes; then raises StorageError
        naming the servers and the operation."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.timeout
        pause = BACKOFF_FIRST
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    return await attempt()
            except TimeoutError as exc:
                raise StorageError(f"kafka {self.servers}: {operation}: no answer within "
                                   f"{self.timeout:g} s") from exc
            except KafkaError as exc:
                if not transient(exc) or loop.time() + pause >= deadline:
                    raise self._error(operation, exc) from exc
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, BACKOFF_MAX)

    def _error(self, operation: str, exc: BaseException) -> StorageError:
        return StorageError(f"kafka {self.servers}: {operation}: {type(exc).__name__}: {exc}")

    # -- topics --

    async def _partition_count(self, topic: str) -> int:
        """The topic's partition count, creating the topic on first use. Every
        path reaches a topic through here first, so a broker that creates
        topics when asked for their metadata never creates one of ours."""
        known = self._topics.get(topic)
        if known is None:
            known = self._topics[topic] = asyncio.ensure_future(self._open_topic(topic))

            def forget_failure(done: asyncio.Future[int]) -> None:
                if done.cancelled() or done.exception() is not None:
                    self._topics.pop(topic, None)  # the next call tries again
            known.add_done_callback(forget_failure)
        return await asyncio.shield(known)

    async def _open_topic(self, topic: str) -> int:
        deadline = asyncio.get_running_loop().time() + self.timeout
        await self._retrying(f"create topic {topic}", lambda: self._create_topic(topic),
                             deadline=deadline)
        # Waits until this producer's metadata lists the topic, so the first
        # publish to a topic created just now finds its partitions.
        partitions = await self._retrying(f"metadata of {topic}",
                                          lambda: self._producer.partitions_for(topic),
                                          deadline=deadline)
        return len(partitions)

    async def _create_topic(self, topic: str) -> None:
        configs = {
            "max.message.bytes": str(MAX_RECORD_BYTES),
            # A majority of the replicas must have a record before it counts
            # as written (acks=all): 1 of 1, 2 of 3.
            "min.insync.replicas": str(self.replication_factor // 2 + 1),
            # Records keep the time they were published: Record.timestamp_ms.
            "message.timestamp.type": "CreateTime",
            "retention.ms": str(round(self.retention_ms)) if self.retention_ms else "-1",
        }
        response = await self._admin.create_topics(
            [NewTopic(topic, self.partitions, self.replication_factor, topic_configs=configs)])
        for _name, code, *rest in response.topic_errors:
            error = for_code(code)
            # Created, there already, or made by an operator while mailyard
            # may not create topics: the metadata lookup that follows tells.
            if code == 0 or error in (TopicAlreadyExistsError, TopicAuthorizationFailedError,
                                      ClusterAuthorizationFailedError):
                continue
            raise error(rest[0] if rest and rest[0] else topic)

    # -- publishing --

    async def publish(self, topic: str, key: bytes, value: bytes) -> Record:
        self._check_open()
        topic = self.prefix + topic
        key, value = bytes(key), bytes(value)
        partition = partition_for(key, await self._partition_count(topic))
        timestamp = time.time_ns() // 1_000_000
        operation = f"publish to {topic}"
        delivery = await self._retrying(operation, lambda: self._producer.send(
            topic, value, key=key, partition=partition, timestamp_ms=timestamp))
        try:
            # The producer fails an undelivered batch itself after
            # request_timeout; this bound only guards against a hang. The
            # shield keeps a late acknowledgement from being cancelled.
            sent = await asyncio.wait_for(asyncio.shield(delivery), 1.5 * self.timeout)
        except TimeoutError as exc:
            raise StorageError(f"kafka {self.servers}: {operation}: not acknowledged within "
                               f"{1.5 * self.timeout:g} s") from exc
        except KafkaError as exc:
            raise self._error(operation, exc) from exc
        if sent.timestamp_type == 1:  # a topic set to LogAppendTime by an operator
            timestamp = sent.timestamp
        return Record(topic, sent.partition, sent.offset, key, value, timestamp)

    # -- consuming --

    async def consumer(self, topic: str, group: str) -> Consumer:
        self._check_open()
        topic, group = self.prefix + topic, self.prefix + group
        await self._partition_count(topic)  # the group subscribes to partitions that exist
        member = KafkaConsumer(self, topic, group)
        await member.join()
        self._consumers.add(member)
        return member

    # -- bookkeeping --

    async def lag(self, topic: str, group: str) -> int:
        self._check_open()
        topic, group = self.prefix + topic, self.prefix + group
        partitions = await self._partition_count(topic)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends, starts, committed = await self._retrying(f"lag of {group} on {topic}",
                                                       lambda: self._offsets_of(group, tps))
        total = 0
        for tp in tps:
            # A group that never committed on a partition starts at its oldest
            # record still kept, and so does one whose records retention took.
            done = committed.get(tp)
            position = max(done.offset if done is not None else -1, starts[tp])
            total += max(0, ends[tp] - position)
        return total

    async def _offsets_of(self, group: str, tps: list[TopicPartition]):
        ends = await self._offsets.end_offsets(tps)
        starts = await self._offsets.beginning_offsets(tps)
        committed = await self._admin.list_consumer_group_offsets(group, partitions=tps)
        return ends, starts, committed


class _Membership(ConsumerRebalanceListener):
    """Tells a member when the group hands it partitions or takes them back."""

    def __init__(self, member: KafkaConsumer) -> None:
        self._member = member

    async def on_partitions_revoked(self, revoked) -> None:
        # Another member may commit on them before they come back.
        for tp in revoked:
            self._member._committed.pop(tp.partition, None)

    async def on_partitions_assigned(self, assigned) -> None:
        self._member._joined.set()


class KafkaConsumer(Consumer):
    """A member of a Kafka consumer group. aiokafka heartbeats in the
    background, so a member that is slow to fetch keeps its partitions (up to
    Kafka's max.poll.interval, 5 minutes); a killed one loses them after
    `member_ttl`."""

    def __init__(self, queue: KafkaQueue, topic: str, group: str) -> None:
        self._queue = queue
        self.topic = topic
        self.group = group
        self._committed: dict[int, int] = {}  # the group's offset per held partition, as last seen
        self._joined = asyncio.Event()
        self._client: AIOKafkaConsumer | None = None
        self._rewind_pending = False
        self._closed = False

    async def join(self) -> None:
        """Returns once the group has handed this member its share of the
        partitions, so members opened one after the other split them at once."""
        q = self._queue
        self._client = await q._retrying(f"join {self.group} on {self.topic}", self._connect)
        # A rebalance waits up to the session timeout for the other members.
        patience = q.member_ttl + q.timeout
        try:
            await asyncio.wait_for(self._joined.wait(), patience)
        except TimeoutError:
            await self.close()
            raise StorageError(f"kafka {q.servers}: join {self.group} on {self.topic}: "
                               f"no partitions assigned within {patience:g} s") from None

    async def _connect(self) -> AIOKafkaConsumer:
        q = self._queue
        client = AIOKafkaConsumer(
            **q._client_settings, group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=_ms(q.member_ttl),
            heartbeat_interval_ms=_ms(q.member_ttl / 10),
            max_partition_fetch_bytes=MAX_RECORD_BYTES)
        client.subscribe([self.topic], listener=_Membership(self))
        try:
            await client.start()
        except BaseException:
            await _quietly(client.stop())
            raise
        return client

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"kafka {self._queue.servers}: the consumer of {self.topic} "
                               f"for {self.group} is closed")

    async def fetch(self, max_records: int = 100, timeout: float = 1.0) -> list[Record]:
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if self._rewind_pending:
                async with asyncio.timeout(self._queue.timeout):
                    await self._rewind()
                self._rewind_pending = False
            # Kafka holds the fetch request until a record arrives (fetch_max_wait_ms),
            # so a publish answers it at once.
            batches = await self._client.getmany(timeout_ms=_ms(timeout), max_records=max_records)
        except ConsumerStoppedError:
            raise StorageError(f"kafka {self._queue.servers}: the consumer of {self.topic} "
                               f"for {self.group} was closed while fetching") from None
        except (KafkaError, TimeoutError) as exc:
            if isinstance(exc, KafkaError) and not _transient(exc):
                raise self._queue._error(f"fetch {self.topic} for {self.group}", exc) from exc
            # Kafka is away or the group is moving: nothing to hand out this
            # time (a pending rewind is tried again by the next fetch).
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return []
        return [Record(r.topic, r.partition, r.offset, r.key if r.key is not None else b"",
                       r.value if r.value is not None else b"", r.timestamp)
                for records in batches.values() for r in records]

    async def commit(self, records: list[Record]) -> None:
        self._check_open()
        ends: dict[int, int] = {}
        for record in records:
            if record.topic != self.topic:
                raise ValueError(f"record of {record.topic} committed on {self.topic}")
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
        if ends:
            await self._queue._retrying(f"commit {self.group} on {self.topic}",
                                        lambda: self._commit(ends),
                                        transient=_transient_for_commit)

    async def _commit(self, ends: dict[int, int]) -> None:
        held = self._client.assignment()
        if not held:
            raise RebalanceInProgressError("waiting for the group to assign partitions")
        offsets = {}
        for partition, end in ends.items():
            tp = TopicPartition(self.topic, partition)
            # A partition the group moved to another member: that member hands
            # these records out again, as the port allows (at least once).
            if tp in held and end > await self._committed_offset(tp):
                offsets[tp] = end
        if offsets:
            await self._client.commit(offsets)
            for tp, end in offsets.items():
                self._committed[tp.partition] = end

    async def _committed_offset(self, tp: TopicPartition) -> int:
        if tp.partition not in self._committed:
            offset = await self._client.committed(tp)
            self._committed[tp.partition] = -1 if offset is None else offset
        return self._committed[tp.partition]

    async def rewind(self) -> None:
        # Done by the next fetch, before it hands out anything: the group's
        # offsets live in Kafka, and a rewind usually follows an outage, which
        # fetch waits out (consume() rewinds after a failed commit).
        self._check_open()
        self._rewind_pending = True

    async def _rewind(self) -> None:
        for tp in self._client.assignment():
            self._committed.pop(tp.partition, None)
            offset = await self._committed_offset(tp)
            if offset < 0:  # nothing committed: a new group starts at the oldest record
                await self._client.seek_to_beginning(tp)
            else:
                self._client.seek(tp, offset)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue._consumers.discard(self)
        if self._client is not None:
            # Leaves the group; when Kafka is away, its session timeout does.
            await _quietly(self._client.stop(), timeout=self._queue.timeout)


async def _quietly(*closing: Awaitable, timeout: float | None = None) -> None:
    """Closes clients on the way out, where a failure changes nothing."""
    for awaitable in closing:
        try:
            await asyncio.wait_for(awaitable, timeout)
        except (KafkaError, OSError, TimeoutError):
            pass
