"""WatchMailbox: a user's mailbox changes as a stream, resumable by position.

Design: a per-user change log in the MetadataStore rather than a
`mail.changes` topic on the Queue. The log entry is written in the same
transaction as the change itself (put_message, modify_labels,
delete_messages, label renames and deletes), so there is no window where a
change is visible but not logged or logged but rolled back, and no second
writer that could fail after the first succeeded. Its sequence numbers are
per user and gapless, so the position a client holds is a plain number that
names exactly what it has seen, and resuming is a range read of one user's
partition (Cassandra: (user_id) partition, seq clustering, written with a
lightweight transaction). A topic would be keyed and partitioned by user but
its offsets are per partition, shared by many users, and a per-user cursor
over it means reading everybody's changes to find one user's.

Wake-ups: a change made in this process sets the store's ChangeSignal for
the user at once; changes made by another process (the delivery worker run
apart with `mailyard run delivery`) are found by a bounded poll of the log
every `mailbox.watch_poll_interval` seconds. The signal is cleared before each
read of the log, so a change committed between the read and the wait still
wakes the stream.
"""
from __future__ import annotations

import asyncio

import grpc

from mailyard.proto import mailbox_pb2
from mailyard.store.mailbox.inbox_cache import to_summary
from mailyard.store.metadata.base import (CHANGE_ADDED, CHANGE_DELETED, CHANGE_LABELS, Change,
                                          MetadataStore)

KINDS = {CHANGE_ADDED: mailbox_pb2.MailboxChange.MESSAGE_ADDED,
         CHANGE_LABELS: mailbox_pb2.MailboxChange.LABELS_CHANGED,
         CHANGE_DELETED: mailbox_pb2.MailboxChange.MESSAGE_DELETED}
BATCH = 100


class WatchHandler:
    def __init__(self, metadata: MetadataStore, poll_interval: float, stopping: asyncio.Event,
                 max_page_size: int):
        self.metadata, self.poll_interval, self.stopping = metadata, poll_interval, stopping
        self.max_page_size = max_page_size

    async def _to_proto(self, user: str, change: Change) -> mailbox_pb2.MailboxChange:
        out = mailbox_pb2.MailboxChange(position=change.seq, kind=KINDS[change.kind],
                                        message_id=change.message_id, labels=change.labels,
                                        at=change.at_ms)
        if change.kind == CHANGE_ADDED:
            record = await self.metadata.get_message(user, change.message_id)
            if record is not None:
                out.message.CopyFrom(to_summary(record))
        return out

    async def watch(self, user: str, request, context):
        if request.HasField("after") and request.after < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "after must be >= 0")
        signal = self.metadata.changes.subscribe(user)
        try:
            if request.HasField("after"):
                position = request.after
            else:
                position = await self.metadata.last_change(user)
                yield mailbox_pb2.MailboxChange(kind=mailbox_pb2.MailboxChange.SYNC,
                                                position=position)
            while not self.stopping.is_set():
                signal.clear()
                changes = await self.metadata.list_changes(user, position, BATCH)
                for change in changes:
                    yield await self._to_proto(user, change)
                    position = change.seq
                if changes:
                    continue
                await _first(signal.wait(), self.stopping.wait(), timeout=self.poll_interval)
        finally:
            self.metadata.changes.unsubscribe(user, signal)

    async def list(self, user: str, request, context):
        if request.after < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "after must be >= 0")
        if request.page_size < 0 or request.page_size > self.max_page_size:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"page_size must be 0..{self.max_page_size}")
        changes = await self.metadata.list_changes(user, request.after, request.page_size or BATCH)
        return mailbox_pb2.ListChangesResponse(
            changes=[await self._to_proto(user, c) for c in changes],
            position=changes[-1].seq if changes else request.after)


async def _first(*waits, timeout: float) -> None:
    """Returns when any of the awaitables finishes or after `timeout`."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
