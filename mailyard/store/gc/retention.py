"""Retention: TRASH and SPAM purged `trash_days` / `spam_days` after the
message went there, as Gmail does.

When a message went to a label is read from the user's change log (the last
entry that added the label, or the delivery that filed it there); a message
received within the period cannot have gone there earlier, so only older
ones cost a look at the log. The purge is a permanent delete (links dropped,
quota uncharged, the indexer told); the blobs are the collector's.
"""
from __future__ import annotations

import time

from mailyard.policy.config import GcConfig
from mailyard.policy.logs import EventLog
from mailyard.store.mailbox.index_events import DELETED, announce
from mailyard.store.metadata.base import CHANGE_DELETED, MetadataStore
from mailyard.store.queue.base import Queue

PAGE = 500
DAY_MS = 86400 * 1000


async def purge_expired(metadata: MetadataStore, queue: Queue | None, config: GcConfig,
                        dry_run: bool = False, log: EventLog | None = None,
                        now_ms: int | None = None) -> dict[str, int]:
    """Purges every user's expired TRASH and SPAM; returns the count per label."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    purged = {"TRASH": 0, "SPAM": 0}
    for user in await metadata.list_users():
        for label, days in (("TRASH", config.trash_days), ("SPAM", config.spam_days)):
            if days <= 0:
                continue
            cutoff = now_ms - int(days * DAY_MS)
            ids = await expired(metadata, user.address, label, cutoff)
            if ids and not dry_run:
                deleted = await metadata.delete_messages(user.address, ids)
                ids = [r.message_id for r in deleted]
                if queue is not None:
                    await announce(queue, DELETED, user.address, ids)
                if log is not None:
                    log.info("retention_purged", user=user.address, label=label, count=len(ids))
            purged[label] += len(ids)
    return purged


async def expired(metadata: MetadataStore, user_id: str, label: str, cutoff_ms: int) -> list[str]:
    """The user's messages that have carried `label` since before `cutoff_ms`."""
    old: list[str] = []
    after = None
    while True:
        page = await metadata.list_messages(user_id, label, PAGE, after)
        old += [r.message_id for r in page if r.received_at_ms < cutoff_ms]
        if len(page) < PAGE:
            break
        after = (page[-1].received_at_ms, page[-1].message_id)
    if not old:
        return []
    since = await _labelled_since(metadata, user_id, label, set(old))
    return [m for m in old if since.get(m, 0) < cutoff_ms]


async def _labelled_since(metadata: MetadataStore, user_id: str, label: str,
                          candidates: set[str]) -> dict[str, int]:
    """For each candidate, when it last got `label` according to the change
    log (absent when the log no longer tells: then it has been long enough)."""
    since: dict[str, int] = {}
    after = 0
    while True:
        changes = await metadata.list_changes(user_id, after, PAGE)
        for change in changes:
            if change.message_id not in candidates:
                continue
            if change.kind == CHANGE_DELETED or label not in change.labels:
                since.pop(change.message_id, None)
            elif change.message_id not in since:
                since[change.message_id] = change.at_ms
        if len(changes) < PAGE:
            return since
        after = changes[-1].seq
