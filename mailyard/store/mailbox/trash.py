"""Trash, untrash and permanent delete, each for many ids at once.

Trash follows Gmail: it adds TRASH and takes the message out of INBOX, and
search leaves trash out unless asked. Untrash removes TRASH and puts received
mail back in INBOX; a sent copy (SENT label) never was in INBOX and stays out.
Whatever other labels the message had (STARRED, user labels) are kept both ways.
Delete removes the record and its blob links for good (the blobs are freed by
a garbage collector once no owner links them) and tells the indexer.
"""
from __future__ import annotations

import grpc

from mailyard.proto import mailbox_pb2
from mailyard.store.mailbox.inbox_cache import InboxCache, to_summary
from mailyard.store.mailbox.index_events import DELETED, LABELS_CHANGED, announce
from mailyard.store.metadata.base import MetadataStore
from mailyard.store.queue.base import Queue

MAX_IDS = 1000


class TrashHandler:
    def __init__(self, metadata: MetadataStore, queue: Queue, inbox: InboxCache):
        self.metadata, self.queue, self.inbox = metadata, queue, inbox

    async def _ids(self, request, context) -> list[str]:
        ids = list(dict.fromkeys(request.ids))
        if not ids or len(ids) > MAX_IDS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"ids must name 1..{MAX_IDS} messages")
        return ids

    async def trash(self, user: str, request, context):
        ids = await self._ids(request, context)
        records = await self.metadata.modify_labels(user, ids, {"TRASH"}, {"INBOX"})
        return await self._changed(user, records, context)

    async def untrash(self, user: str, request, context):
        ids = await self._ids(request, context)
        found = [r for r in [await self.metadata.get_message(user, i) for i in ids] if r]
        sent = [r.message_id for r in found if "SENT" in r.labels]
        received = [r.message_id for r in found if "SENT" not in r.labels]
        records = []
        if received:
            records += await self.metadata.modify_labels(user, received, {"INBOX"}, {"TRASH"})
        if sent:
            records += await self.metadata.modify_labels(user, sent, set(), {"TRASH"})
        order = {message_id: n for n, message_id in enumerate(ids)}
        records.sort(key=lambda r: order[r.message_id])
        return await self._changed(user, records, context)

    async def _changed(self, user: str, records, context):
        if not records:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such messages")
        await self.inbox.refresh(user)
        await announce(self.queue, LABELS_CHANGED, user, [r.message_id for r in records])
        return mailbox_pb2.ModifyLabelsResponse(messages=[to_summary(r) for r in records])

    async def delete(self, user: str, request, context):
        ids = await self._ids(request, context)
        deleted = await self.metadata.delete_messages(user, ids)
        if not deleted:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such messages")
        await self.inbox.refresh(user)
        await announce(self.queue, DELETED, user, [r.message_id for r in deleted])
        return mailbox_pb2.DeleteMessagesResponse(deleted_ids=[r.message_id for r in deleted])
