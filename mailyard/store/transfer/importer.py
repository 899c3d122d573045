"""Storing a source's messages for one user, as delivery stores received mail.

Each message is split into its skeleton and content-addressed part blobs
(`store_content`, the delivery worker's own code, run in worker processes:
workers.py), threaded as delivery threads, linked, put, and announced on
mail.index so search finds it. Many messages are in flight at once, so their
blob fsyncs overlap and their metadata writes share group commits.

Ids are deterministic: a hash of the user, the message's bytes and which
copy of those bytes in its folder it is. Running an import again therefore
finds what an interrupted run stored (put_message is insert-if-absent), and
the same bytes found in two folders become one message with both labels.
A copy joined to a message stored before adds its folder labels (and
STARRED) but never resets the read state. The checkpoint lets a second run
skip what the first finished instead of redoing it.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field

from mailyard.policy.config import Config
from mailyard.store.gc.links import link_and_secure
from mailyard.store.mailbox.index_events import ADDED, announce
from mailyard.store.metadata.base import (SYSTEM_LABELS, MessageRecord, MetadataStore,
                                          thread_subject)
from mailyard.store.mime import Summary
from mailyard.store.transfer import workers
from mailyard.store.transfer.checkpoint import Checkpoint
from mailyard.store.transfer.headers import received_ms
from mailyard.store.transfer.progress import Progress
from mailyard.store.transfer.sources import Incoming

CHECKPOINT_EVERY_S = 1.0


def message_id_for(user_id: str, digest: str, copy: int) -> str:
    """The id of the `copy`-th (from 0) message with these bytes in a folder."""
    return hashlib.sha256(f"import\0{user_id}\0{digest}\0{copy}".encode()).hexdigest()[:20]


class MessageIds:
    """Ids for a source's messages in order, counting identical copies per folder."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self._copies: Counter[tuple[str, str]] = Counter()

    def next(self, incoming: Incoming) -> str:
        digest = hashlib.sha256(incoming.raw).hexdigest()
        copy = self._copies[incoming.folder, digest]
        self._copies[incoming.folder, digest] += 1
        return message_id_for(self.user_id, digest, copy)


@dataclass
class ImportReport:
    source: str
    total: int = 0
    stored: int = 0          # new messages
    joined: int = 0          # found stored already: another folder's copy, or a rerun's
    skipped: int = 0         # finished by an earlier run, per the checkpoint
    bad: list[tuple[str, str]] = field(default_factory=list)  # (where, why), stored raw
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, user_id: str) -> str:
        done = self.stored + self.joined + self.skipped
        parts = [f"{self.stored} new"]
        if self.joined:
            parts.append(f"{self.joined} already stored")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (done by an earlier run)")
        parts.append(f"{len(self.bad)} malformed, stored raw")
        line = (f"imported {done}/{self.total} messages for {user_id} from {self.source}: "
                f"{', '.join(parts)}; {self.seconds:.1f} s")
        if self.stored + self.joined:
            line += f", {(self.stored + self.joined) / max(self.seconds, 1e-6):.0f} messages/s"
        return line


class Threads:
    """Threads as delivery decides them (store.messages.find_thread: by
    References/In-Reply-To, else a Re:/Fwd: subject within the window), for
    messages stored concurrently. Decisions are made in source order; what
    this run decided is kept in memory, since messages in flight are not in
    the MetadataStore yet, and the store is asked beforehand, concurrently,
    about mail stored before the run."""

    def __init__(self, metadata: MetadataStore, user_id: str, window_s: float,
                 ask_store: bool) -> None:
        self.metadata, self.user_id, self.window_s = metadata, user_id, window_s
        self.ask_store = ask_store  # False when the mailbox was empty: nothing to find
        self._by_message_id: dict[str, str] = {}
        self._by_subject: dict[str, tuple[str, int]] = {}

    async def lookup(self, summary: Summary, received_at_ms: int) -> tuple[str | None, str | None]:
        """What the MetadataStore knows: the thread by references, by subject."""
        if not self.ask_store:
            return None, None
        by_refs = by_subject = None
        if summary.references:
            by_refs = await self.metadata.find_thread(self.user_id, summary.references)
        if by_refs is None and self._subject_applies(summary):
            by_subject = await self.metadata.find_thread_by_subject(
                self.user_id, summary.subject, received_at_ms - int(self.window_s * 1000))
        return by_refs, by_subject

    def assign(self, message_id: str, summary: Summary, received_at_ms: int,
               stored: tuple[str | None, str | None]) -> str:
        by_refs, by_subject = stored
        thread = next((self._by_message_id[r] for r in summary.references
                       if r in self._by_message_id), None) or by_refs
        key, _ = thread_subject(summary.subject)
        if thread is None and self._subject_applies(summary):
            latest = self._by_subject.get(key)
            if latest and latest[1] >= received_at_ms - int(self.window_s * 1000):
                thread = latest[0]
            thread = thread or by_subject
        thread = thread or message_id
        if summary.rfc822_message_id:  # the first message with a Message-ID fixes its thread
            self._by_message_id.setdefault(summary.rfc822_message_id, thread)
        if key and (key not in self._by_subject or received_at_ms >= self._by_subject[key][1]):
            self._by_subject[key] = (thread, received_at_ms)
        return thread

    def _subject_applies(self, summary: Summary) -> bool:
        key, is_reply = thread_subject(summary.subject)
        return bool(key) and is_reply and self.window_s > 0


class Finished:
    """Which messages are done, and the checkpoint of the longest done prefix:
    messages finish out of order, a checkpoint may cover only an unbroken run
    from the start."""

    def __init__(self, checkpoint: Checkpoint, total: int, progress: Progress | None) -> None:
        self.checkpoint, self.total, self.progress = checkpoint, total, progress
        self.count = 0                      # the prefix 0..count-1 is done
        self._digest = hashlib.sha256()     # of the prefix's ids, in order
        self._ids: dict[int, str] = {}
        self._done: set[int] = set()
        self._saved_at = time.monotonic()

    def expect(self, index: int, message_id: str) -> None:
        self._ids[index] = message_id

    def done(self, index: int) -> None:
        self._done.add(index)
        while self.count in self._done:
            self._done.discard(self.count)
            self._digest.update(self._ids.pop(self.count).encode())
            self.count += 1
        if time.monotonic() - self._saved_at >= CHECKPOINT_EVERY_S:
            self.save()
        if self.progress:
            self.progress.update(self.count)

    def save(self) -> None:
        self.checkpoint.save(self.count, self._digest.hexdigest(), self.total)
        self._saved_at = time.monotonic()


@dataclass(slots=True)
class _Slot:
    """One message's place in the run."""
    index: int
    message_id: str
    incoming: Incoming
    turn: asyncio.Future          # resolved once the message before has its thread
    next_turn: asyncio.Future     # resolved once this one has
    earlier: asyncio.Future | None  # the put of the same bytes from another folder
    put: asyncio.Future           # resolved once this one is put


class Importer:
    def __init__(self, config: Config, metadata: MetadataStore, queue, user_id: str,
                 checkpoint: Checkpoint, progress: Progress | None = None,
                 concurrency: int = 64) -> None:
        self.config, self.metadata, self.queue = config, metadata, queue
        self.user_id = user_id
        self.checkpoint, self.progress = checkpoint, progress
        self.concurrency = concurrency
        self._labels_made: set[str] = set()
        self._puts: dict[str, asyncio.Future] = {}  # message id -> its latest put

    async def run(self, source) -> ImportReport:
        started = time.monotonic()
        start = self._verified_prefix(source)
        empty = not await self.metadata.list_all_messages(self.user_id, 1)
        self._threads = Threads(self.metadata, self.user_id,
                                self.config.delivery.thread_subject_window, ask_store=not empty)
        report = ImportReport(str(source.path), total=source.total)
        finished = Finished(self.checkpoint, source.total, self.progress)
        if self.progress:
            self.progress.start(source.total)
        window = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task] = set()
        failures: list[BaseException] = []
        bad: list[tuple[int, str, str]] = []

        def settle(task: asyncio.Task, index: int) -> None:
            tasks.discard(task)
            window.release()
            if task.cancelled():
                return
            if task.exception() is not None:
                failures.append(task.exception())
                return
            created, why = task.result()
            report.stored += created
            report.joined += not created
            if why:
                bad.append((index, *why))
            finished.done(index)

        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        turn.set_result(None)
        ids = MessageIds(self.user_id)
        try:
            with workers.pool(self.config) as self._pool:
                for index, incoming in enumerate(source.messages()):
                    message_id = ids.next(incoming)
                    finished.expect(index, message_id)
                    if index < start:
                        report.skipped += 1
                        finished.done(index)
                        continue
                    await window.acquire()
                    if failures:
                        window.release()
                        break
                    slot = _Slot(index, message_id, incoming, turn, loop.create_future(),
                                 self._puts.get(message_id), loop.create_future())
                    self._puts[message_id] = slot.put
                    task = asyncio.create_task(self._one(slot))
                    task.add_done_callback(lambda t, i=index: settle(t, i))
                    tasks.add(task)
                    turn = slot.next_turn
                if tasks:
                    await asyncio.wait(list(tasks))
        finally:
            finished.save()
            if self.progress:
                self.progress.close(finished.count)
        if failures:
            raise failures[0]
        report.bad = [(where, why) for _, where, why in sorted(bad)]
        report.warnings = list(source.warnings)
        report.seconds = time.monotonic() - started
        return report

    def _verified_prefix(self, source) -> int:
        """How many messages the checkpoint lets this run skip: its count, if
        the source still starts with the messages it counted."""
        wanted = self.checkpoint.done
        if not wanted:
            return 0
        ids, digest, n = MessageIds(self.user_id), hashlib.sha256(), 0
        for incoming in source.messages():
            if n == wanted:
                break
            digest.update(ids.next(incoming).encode())
            n += 1
        return wanted if n == wanted and digest.hexdigest() == self.checkpoint.digest else 0

    async def _one(self, slot: _Slot) -> tuple[bool, tuple[str, str] | None]:
        """Stores one message; returns whether it is new and, if it is
        malformed, where and why."""
        incoming, message_id = slot.incoming, slot.message_id
        try:
            try:
                started = time.monotonic()
                stored = await asyncio.get_running_loop().run_in_executor(
                    self._pool, workers.store, incoming.raw)
                summary = stored.summary
                received = (incoming.received_at_ms or received_ms(incoming.raw)
                            or summary.date_ms or int(time.time() * 1000))
                known = await self._threads.lookup(summary, received)
                await slot.turn
                thread_id = self._threads.assign(message_id, summary, received, known)
            finally:
                slot.next_turn.set_result(None)
            if slot.earlier is not None:
                await slot.earlier
            await self._make_labels(incoming.labels)
            record = MessageRecord(
                user_id=self.user_id, message_id=message_id, thread_id=thread_id,
                received_at_ms=received, skeleton_key=stored.skeleton_key, size=stored.size,
                rfc822_message_id=summary.rfc822_message_id, references=summary.references,
                sender=summary.sender, to=summary.to, cc=summary.cc, subject=summary.subject,
                snippet=summary.snippet, labels=set(incoming.labels),
                has_attachments=bool(stored.attachments), attachments=stored.attachments,
                malformed=summary.malformed)
            # As in delivery: link before the message becomes visible.
            await link_and_secure(
                self.metadata, None, [f"{self.user_id}/{message_id}"], stored.blob_keys, started,
                lambda: asyncio.get_running_loop().run_in_executor(
                    self._pool, workers.store, incoming.raw),
                grace=self.config.gc.grace, claim_lease=self.config.gc.claim_lease)
            await self.metadata.charge_blobs(self.user_id, stored.blob_sizes)
            created = await self.metadata.put_message(record)
            if not created:
                await self.metadata.modify_labels(self.user_id, [message_id],
                                                  incoming.labels - {"UNREAD"}, set())
            await announce(self.queue, ADDED, self.user_id, [message_id])
        finally:
            slot.put.set_result(None)
            if self._puts.get(message_id) is slot.put:
                del self._puts[message_id]
        why = incoming.problem or (summary.defects[0] if summary.malformed else "")
        return created, ((incoming.where, why) if why else None)

    async def _make_labels(self, labels: set[str]) -> None:
        for name in labels - SYSTEM_LABELS - self._labels_made:
            self._labels_made.add(name)
            await self.metadata.create_label(self.user_id, name)
