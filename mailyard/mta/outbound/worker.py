"""The outbound worker: one attempt per mail.outbound record, then the
message's entry is settled.

A record acts only while its generation is its OutboundEntry's; otherwise it
is stale (delivered, deleted, held or rescheduled since) and is committed
without action. After an attempt, recipients that were delivered leave the
envelope, failed ones go into one DSN, deferred ones stay: the entry gets a
new generation by compare-and-set first, then the record for the next
attempt goes on the delay tier, and only then is the original committed.

A crash anywhere loses nothing. Before the compare-and-set the original is
simply attempted again. Between the compare-and-set and the tier record, the
replayed original finds the entry one generation ahead and deferred, which no
other writer leaves without a record, and publishes that record itself (a
process remembers the generations it settled, so a mere duplicate of a
record it acted on does not do that again).
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from typing import Awaitable, Callable, TypeVar

from google.protobuf.message import DecodeError

from mailyard.mta.dns import Resolver
from mailyard.mta.outbound import dsn, outcome
from mailyard.mta.outbound.client import Message, Settings
from mailyard.mta.outbound.lanes import Lanes
from mailyard.mta.outbound.outcome import DEFERRED, DELIVERED, FAILED, Outcome
from mailyard.mta.outbound.schedule import RetrySchedule, tier_topic
from mailyard.mta.outbound.window import Window
from mailyard.policy import metrics
from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.proto import events_pb2
from mailyard.store.blobs.base import BlobStore
from mailyard.store.errors import NotFound, StorageError
from mailyard.store.metadata.base import (OUTBOUND_DEFERRED, OUTBOUND_HELD, MetadataStore,
                                          OutboundEntry)
from mailyard.store import trace
from mailyard.store.outbox import OUTBOUND_TOPIC
from mailyard.store.queue.base import Queue, Record
from mailyard.store.queue.consume import OUTAGE_PAUSE, sleep_unless

T = TypeVar("T")

GROUP = "outbound"
DLQ_TOPIC = "mail.dlq"
SHUTDOWN_GRACE = 20.0  # seconds running attempts get to finish at a stop
SETTLED_MEMORY = 100_000  # (queue id, generation) pairs remembered
MAX_FAILURES = 5  # unexpected errors on one record before it goes to mail.dlq
_LOG_VERBS = {DELIVERED: "sent", DEFERRED: "deferred", FAILED: "bounced"}


def now_ms() -> int:
    return int(time.time() * 1000)


class OutboundWorker:
    def __init__(self, config: Config, queue: Queue, metadata: MetadataStore,
                 blobs: BlobStore, resolver: Resolver, log: EventLog | None = None):
        self.config, self.queue, self.metadata, self.blobs = config, queue, metadata, blobs
        self.log = log or EventLog("outbound")
        self.schedule = RetrySchedule(config.outbound)
        self.lanes = Lanes(resolver, Settings.from_config(config), config.outbound, self.log)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # queue id -> (lock, users)
        self._settled: OrderedDict[str, int] = OrderedDict()
        self._failures: dict[tuple[str, int], int] = {}
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event, ready=None) -> None:
        self._stop = stop
        consumer = await self.queue.consumer(OUTBOUND_TOPIC, GROUP)
        window = Window(consumer, self.config.outbound.concurrency, self.handle)
        if ready:
            ready(None)
        try:
            await window.run(stop)
        finally:
            await window.drain(SHUTDOWN_GRACE)
            await self.lanes.close()
            await consumer.close()

    async def handle(self, record: Record) -> bool:
        """Acts on one record; True once it may be committed. Storage outages
        are waited out here, so only a stop leaves a record uncommitted."""
        try:
            envelope = events_pb2.OutboundEnvelope.FromString(record.value)
        except DecodeError as exc:
            await self._retrying(self._dead_letter, record, f"DecodeError: {exc}")
            return True
        # Two records of one message (a tier that put it back twice) never run at once.
        lock, users = self._locks.get(envelope.queue_id, (asyncio.Lock(), 0))
        self._locks[envelope.queue_id] = (lock, users + 1)
        try:
            async with lock:
                await self._handle(envelope, record)
            self._failures.pop((envelope.queue_id, envelope.generation), None)
            return True
        except StorageError:
            return False  # stopping during an outage: fetched again after the restart
        except Exception as exc:  # a bug: try again a few times, then set the record aside
            reason = f"{type(exc).__name__}: {exc}"
            key = (envelope.queue_id, envelope.generation)
            self._failures[key] = self._failures.get(key, 0) + 1
            self.log.error("attempt_failed", queue_id=envelope.queue_id, error=reason,
                           failures=self._failures[key])
            if self._failures[key] < MAX_FAILURES:
                await sleep_unless(self._stop, OUTAGE_PAUSE)
                return False
            del self._failures[key]
            # The entry stays: `mailyard queue` shows it, `queue retry` tries again.
            await self._retrying(self._dead_letter, record, reason)
            return True
        finally:
            lock, users = self._locks[envelope.queue_id]
            if users == 1:
                del self._locks[envelope.queue_id]
            else:
                self._locks[envelope.queue_id] = (lock, users - 1)

    async def _handle(self, envelope: events_pb2.OutboundEnvelope, record: Record) -> None:
        queue_id = envelope.queue_id
        entry = await self._retrying(self.metadata.get_outbound, queue_id)
        if entry is None or entry.generation != envelope.generation:
            await self._recover(envelope, entry)
            return
        if entry.state == OUTBOUND_HELD:
            self.log.info("held", queue_id=queue_id)
            return
        wait_ms = envelope.not_before_ms - now_ms()
        if wait_ms > 1000:  # not due yet (sent for later): park it on a tier
            tier = self.schedule.tier_for(wait_ms / 1000)
            await self._retrying(self.queue.publish, tier_topic(tier), record.key, record.value)
            return
        try:
            raw = await self._retrying(self.blobs.get, envelope.spool_key)
        except NotFound:
            lost = outcome.failed("5.3.0", "the queued message content is missing from the "
                                           "spool; please send it again")
            raw, outcomes = b"", {rcpt: lost for rcpt in envelope.rcpt_to}
            self.log.error("spool_missing", queue_id=queue_id, spool_key=envelope.spool_key)
        else:
            outcomes = await self.attempt(envelope, raw)
        await self.settle(envelope, raw, outcomes)

    async def attempt(self, envelope: events_pb2.OutboundEnvelope,
                      raw: bytes) -> dict[str, Outcome]:
        """Delivers to every recipient, one transaction per domain, all at once."""
        by_domain: dict[str, list[str]] = {}
        outcomes: dict[str, Outcome] = {}
        for rcpt in dict.fromkeys(envelope.rcpt_to):
            local, at, domain = rcpt.rpartition("@")
            if not at or not local or not domain:
                outcomes[rcpt] = outcome.failed("5.1.3", f"bad recipient address {rcpt!r}")
            else:
                by_domain.setdefault(domain.lower(), []).append(rcpt)
        domains = list(by_domain)
        results = await asyncio.gather(*(
            self.lanes.deliver(domain, Message(envelope.queue_id, envelope.mail_from,
                                               by_domain[domain], raw, envelope.smtputf8))
            for domain in domains))
        for result in results:
            outcomes.update(result)
        for rcpt, result in outcomes.items():
            metrics.outbound_attempts.labels(_LOG_VERBS[result.action]).inc()
            self.log.info(_LOG_VERBS[result.action], queue_id=envelope.queue_id, to=rcpt,
                          relay=result.remote_mta or "none", attempt=envelope.attempt + 1,
                          status=result.status, reply=result.diagnostic)
        await trace.record(self.metadata, self.log, [trace.step(
            envelope.queue_id, trace.ATTEMPT, f"{envelope.attempt + 1}:{rcpt}",
            attempt=envelope.attempt + 1, to=rcpt, result=_LOG_VERBS[result.action],
            status=result.status, relay=result.remote_mta or "none", reply=result.diagnostic)
            for rcpt, result in outcomes.items()])
        return outcomes

    async def settle(self, envelope: events_pb2.OutboundEnvelope, raw: bytes,
                     outcomes: dict[str, Outcome]) -> None:
        """Records what the attempt did: DSNs first (idempotent), then the
        entry (compare-and-set), then the record of the next attempt."""
        now = now_ms()
        queue_id = envelope.queue_id
        failed = {r: o for r, o in outcomes.items() if o.action == FAILED}
        deferred = {r: o for r, o in outcomes.items() if o.action == DEFERRED}
        following = events_pb2.OutboundEnvelope()
        following.CopyFrom(envelope)
        following.attempt += 1
        following.generation += 1
        del following.rcpt_to[:]
        following.rcpt_to.extend(r for r in dict.fromkeys(envelope.rcpt_to) if r in deferred)
        following.last_error = _summary(deferred.values())
        due = self.schedule.next_attempt(following, now) if deferred else None
        if deferred and due is None:  # expired: the deferred recipients fail now
            days = self.schedule.expire_ms / 86_400_000
            for rcpt, result in deferred.items():
                failed[rcpt] = dataclasses.replace(result, action=FAILED)
            self.log.info("expired", queue_id=queue_id, rcpts=len(deferred),
                          after_days=f"{days:g}")
            deferred = {}
        if failed:
            await self._report(envelope, raw, failed, dsn.FAILED)
        if deferred:
            due_ms, tier = due
            if self.schedule.warn_now(envelope, now):
                await self._report(envelope, raw, deferred, dsn.DELAYED,
                                   self.schedule.expires_at_ms(envelope))
                following.delay_warned = True
            following.not_before_ms = due_ms
            value = following.SerializeToString()
            entry = OutboundEntry(queue_id=queue_id, generation=following.generation,
                                  state=OUTBOUND_DEFERRED, envelope=value,
                                  next_attempt_ms=due_ms, last_error=following.last_error,
                                  updated_at_ms=now)
            if await self._retrying(self.metadata.put_outbound, entry, envelope.generation):
                await self._retrying(self.queue.publish, tier_topic(tier), queue_id.encode(),
                                     value)
                self.log.info("rescheduled", queue_id=queue_id, attempt=following.attempt,
                              rcpts=len(deferred), next_attempt=_iso(due_ms),
                              tier=tier_topic(tier))
                await trace.record(self.metadata, self.log, [trace.step(
                    queue_id, trace.RESCHEDULED, str(following.attempt),
                    next_attempt=_iso(due_ms), rcpt_to=",".join(following.rcpt_to),
                    last_error=following.last_error)])
            else:
                self.log.info("changed_during_attempt", queue_id=queue_id)
        elif await self._retrying(self.metadata.delete_outbound, queue_id, envelope.generation):
            self.log.info("removed", queue_id=queue_id)
        self._remember(queue_id, envelope.generation)

    async def _report(self, envelope: events_pb2.OutboundEnvelope, raw: bytes,
                      outcomes: dict[str, Outcome], action: str, retry_until_ms: int = 0) -> None:
        if not envelope.mail_from:
            # RFC 3461 / RFC 5321 6.1: a bounce is never bounced, or two
            # broken systems would mail each other forever.
            self.log.info("report_dropped", queue_id=envelope.queue_id, action=action,
                          reason="null sender")
            return
        if not envelope.user_id:
            self.log.warning("report_dropped", queue_id=envelope.queue_id, action=action,
                             reason="no local sender to tell")
            return
        report_id = await self._retrying(
            dsn.send, self.blobs, self.queue, self.metadata, self.config.gc, hostname=self.config.hostname, envelope=envelope,
            raw=raw, outcomes=outcomes, action=action, retry_until_ms=retry_until_ms)
        self.log.info("report_queued", queue_id=envelope.queue_id, action=action,
                      report_queue_id=report_id, rcpts=len(outcomes))
        await trace.record(self.metadata, self.log, [trace.step(
            envelope.queue_id, trace.BOUNCED, f"{action}:{envelope.attempt + 1}", action=action,
            to=envelope.mail_from, report_queue_id=report_id, rcpt_to=",".join(outcomes))])

    async def _recover(self, envelope: events_pb2.OutboundEnvelope,
                       entry: OutboundEntry | None) -> None:
        """A stale record. If it is the replay of an attempt that crashed
        between its compare-and-set and its tier record, publish that record."""
        if (entry is not None and entry.state == OUTBOUND_DEFERRED
                and entry.generation == envelope.generation + 1
                and self._settled.get(envelope.queue_id) != envelope.generation):
            following = events_pb2.OutboundEnvelope.FromString(entry.envelope)
            tier = self.schedule.tier_for(max(following.not_before_ms - now_ms(), 0) / 1000)
            await self._retrying(self.queue.publish, tier_topic(tier),
                                 envelope.queue_id.encode(), entry.envelope)
            self._remember(envelope.queue_id, envelope.generation)
            self.log.warning("reschedule_recovered", queue_id=envelope.queue_id,
                             generation=entry.generation, tier=tier_topic(tier))
            return
        self.log.debug("stale", queue_id=envelope.queue_id, generation=envelope.generation)

    def _remember(self, queue_id: str, generation: int) -> None:
        self._settled[queue_id] = generation
        self._settled.move_to_end(queue_id)
        while len(self._settled) > SETTLED_MEMORY:
            self._settled.popitem(last=False)

    async def _retrying(self, call: Callable[..., Awaitable[T]], *args, **kwargs) -> T:
        """Calls a storage operation until it gets through, pausing between
        tries; raises StorageError only once the worker is stopping."""
        while True:
            try:
                return await call(*args, **kwargs)
            except StorageError as exc:
                self.log.error("storage_unavailable", error=str(exc))
                if self._stop.is_set():
                    raise
                await sleep_unless(self._stop, OUTAGE_PAUSE)

    async def _dead_letter(self, record: Record, reason: str) -> None:
        letter = events_pb2.DeadLetter(
            topic=record.topic, partition=record.partition, offset=record.offset,
            key=record.key, value=record.value, reason=reason, attempts=1,
            failed_at_ms=now_ms(), group=GROUP)
        await self.queue.publish(DLQ_TOPIC, record.key, letter.SerializeToString())
        self.log.error("dead_lettered", offset=record.offset, reason=reason)


def _summary(results) -> str:
    """The distinct reasons of a deferral, for `queue list` and the next DSN."""
    return "; ".join(dict.fromkeys(r.diagnostic for r in results))[:1000]


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
