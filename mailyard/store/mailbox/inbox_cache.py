"""The inbox head in the Cache port: the newest summaries and the unread count.

Written through by whoever changes a mailbox (the delivery worker, the API)
by re-reading the MetadataStore after its own write, so the cached head is
rebuilt from the source of truth rather than patched; a TTL bounds how long a
lost race between two writers can show a stale head. A cache that fails only
costs a MetadataStore read.
"""
from __future__ import annotations

from mailyard.policy import metrics
from mailyard.proto import mailbox_pb2
from mailyard.store.cache.base import Cache
from mailyard.store.metadata.base import MessageRecord, MetadataStore

INBOX = "INBOX"


def to_summary(record: MessageRecord) -> mailbox_pb2.MessageSummary:
    return mailbox_pb2.MessageSummary(
        id=record.message_id, thread_id=record.thread_id, to=record.to,
        subject=record.subject, snippet=record.snippet, received_at=record.received_at_ms,
        labels=sorted(record.labels), unread=record.unread,
        has_attachments=record.has_attachments, size=record.size,
        **{"from": record.sender})


class InboxCache:
    def __init__(self, cache: Cache, metadata: MetadataStore, size: int = 50,
                 ttl: float = 300.0, log=None):
        self.cache, self.metadata, self.size, self.ttl, self.log = cache, metadata, size, ttl, log

    @staticmethod
    def key(user_id: str) -> str:
        return f"inbox-head:{user_id}"

    async def refresh(self, user_id: str) -> None:
        records = await self.metadata.list_messages(user_id, INBOX, self.size)
        unread = await self.metadata.count_messages(user_id, INBOX, unread_only=True)
        head = mailbox_pb2.ListMessagesResponse(
            messages=[to_summary(r) for r in records], unread_count=unread)
        try:
            await self.cache.set(self.key(user_id), head.SerializeToString(), ttl=self.ttl)
        except Exception as exc:
            if self.log:
                self.log.warning("cache_write_failed", user=user_id, error=repr(exc))

    async def read(self, user_id: str) -> mailbox_pb2.ListMessagesResponse | None:
        try:
            value = await self.cache.get(self.key(user_id))
        except Exception as exc:
            if self.log:
                self.log.warning("cache_read_failed", user=user_id, error=repr(exc))
            return None
        metrics.cache_requests.labels("inbox", "miss" if value is None else "hit").inc()
        if value is None:
            return None
        return mailbox_pb2.ListMessagesResponse.FromString(value)
