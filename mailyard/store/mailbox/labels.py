"""Labels: Gmail's system labels plus each user's own, with their counts.

A user label name is printable text without leading or trailing space, at
most 225 characters, and never a system label's name in any case ("inbox" is
refused, so it cannot be mistaken for INBOX). Names are case-sensitive
otherwise. ModifyLabels creates a user label it has not seen yet; deleting
one removes it from every message, renaming one renames it on them.
"""
from __future__ import annotations

import re

import grpc

from mailyard.proto import mailbox_pb2
from mailyard.store.errors import AlreadyExists, NotFound
from mailyard.store.mailbox.inbox_cache import InboxCache
from mailyard.store.mailbox.index_events import LABELS_CHANGED, announce
from mailyard.store.metadata.base import SYSTEM_LABELS, MetadataStore
from mailyard.store.queue.base import Queue

# Printable, no leading/trailing space, bounded length.
LABEL_NAME = re.compile(r"^[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]{0,223}[^\x00-\x1f\x7f\s])?$")
SYSTEM_ORDER = ("INBOX", "STARRED", "IMPORTANT", "SENT", "DRAFT", "SPAM", "TRASH", "UNREAD")
MAX_DRAFTS_COUNTED = 10_000


def label_problem(name: str) -> str | None:
    """Why `name` cannot be any label (system or user), or None."""
    if not LABEL_NAME.match(name):
        return f"invalid label {name!r}"
    return None


def user_label_problem(name: str) -> str | None:
    """Why `name` cannot be a user label's name, or None."""
    if not LABEL_NAME.match(name):
        return f"invalid label name {name!r}: printable, no leading or trailing space, 1..225 characters"
    if name.upper() in SYSTEM_LABELS:
        return f"label name {name!r} is reserved for the system label {name.upper()}"
    return None


class LabelsHandler:
    def __init__(self, metadata: MetadataStore, queue: Queue, inbox: InboxCache):
        self.metadata, self.queue, self.inbox = metadata, queue, inbox

    async def _label(self, user: str, name: str, system: bool) -> mailbox_pb2.Label:
        if name == "DRAFT":  # drafts live in their own table, never unread
            total = len(await self.metadata.list_drafts(user, MAX_DRAFTS_COUNTED))
            unread = 0
        else:
            total = await self.metadata.count_messages(user, name)
            unread = await self.metadata.count_messages(user, name, unread_only=True)
        return mailbox_pb2.Label(
            name=name, type=mailbox_pb2.Label.SYSTEM if system else mailbox_pb2.Label.USER,
            messages_total=total, messages_unread=unread)

    async def list(self, user: str, request, context):
        labels = [await self._label(user, name, True) for name in SYSTEM_ORDER]
        labels += [await self._label(user, name, False)
                   for name in await self.metadata.list_labels(user)]
        return mailbox_pb2.ListLabelsResponse(labels=labels)

    async def _check(self, name: str, context) -> None:
        problem = user_label_problem(name)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def create(self, user: str, request, context):
        await self._check(request.name, context)
        if not await self.metadata.create_label(user, request.name):
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"label {request.name!r} already exists")
        return await self._label(user, request.name, False)

    async def ensure(self, user: str, names) -> None:
        """Creates the user labels among `names` that do not exist yet (ModifyLabels)."""
        for name in names:
            if name not in SYSTEM_LABELS:
                await self.metadata.create_label(user, name)

    async def rename(self, user: str, request, context):
        if request.name in SYSTEM_LABELS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"system label {request.name} cannot be renamed")
        await self._check(request.new_name, context)
        try:
            ids = await self.metadata.rename_label(user, request.name, request.new_name)
        except NotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"label {request.name!r} not found")
        except AlreadyExists:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"label {request.new_name!r} already exists")
        await self._relabelled(user, ids)
        return await self._label(user, request.new_name, False)

    async def delete(self, user: str, request, context):
        if request.name in SYSTEM_LABELS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"system label {request.name} cannot be deleted")
        try:
            ids = await self.metadata.delete_label(user, request.name)
        except NotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"label {request.name!r} not found")
        await self._relabelled(user, ids)
        return mailbox_pb2.DeleteLabelResponse(message_ids=ids)

    async def _relabelled(self, user: str, ids: list[str]) -> None:
        if ids:
            await self.inbox.refresh(user)
            await announce(self.queue, LABELS_CHANGED, user, ids)
