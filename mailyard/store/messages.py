"""Storing one message: the skeleton and shared part blobs, the thread, the record.

Shared by the delivery worker (received mail) and the mailbox API (the
sender's SENT copy), so both store and thread a message the same way.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from mailyard.store.blobs.base import BlobStore
from mailyard.store.delta import ParentBlobs, put_text_deltas, with_chains
from mailyard.store.metadata.base import AttachmentRef, MetadataStore, thread_subject
from mailyard.store.mime import Summary, parse_or_none, split, summarize


@dataclass(slots=True)
class StoredContent:
    """A raw message's blobs, written and content-addressed, and what was read from it."""
    skeleton_key: str
    summary: Summary
    attachments: list[AttachmentRef]
    blob_keys: list[str]      # every blob a record of it references (for link_blobs)
    size: int
    # (delta blob, its base) for each blob stored compressed against another,
    # down to the full blob at the end of each chain
    deltas: list[tuple[str, str]] = field(default_factory=list)
    # What the user's quota counts for each blob: its plain bytes (a delta's
    # base is the parent's, counted with the parent)
    blob_sizes: dict[str, int] = field(default_factory=dict)


async def store_content(
        blobs: BlobStore, raw: bytes, min_part_size: int,
        parent_of: Callable[[Summary], Awaitable[ParentBlobs | None]] | None = None,
) -> StoredContent:
    """Writes the skeleton and part blobs of `raw` (idempotent: same bytes,
    same keys). When `parent_of` finds the blobs of the message it replies
    to, its text is stored as deltas against them (store/delta.py)."""
    structure = parse_or_none(raw)  # one walk for both
    skeleton, parts, part_infos = split(raw, min_part_size, structure)
    summary = summarize(raw, structure)
    parent = await parent_of(summary) if parent_of else None
    deltas = await put_text_deltas(blobs, parent, parts, part_infos) if parent else []
    await asyncio.gather(*(blobs.put(data) for data in parts.values()))
    skeleton_bytes = skeleton.SerializeToString()
    if parent:
        skeleton_key, depends_on = await blobs.put_delta(skeleton_bytes, parent.skeleton_key)
        if depends_on:
            deltas.append((skeleton_key, depends_on))
        deltas = await with_chains(blobs, deltas)
    else:
        skeleton_key = await blobs.put(skeleton_bytes)
    attachments = await _attachment_refs(blobs, raw, summary, part_infos)
    blob_keys = sorted({skeleton_key, *parts, *(a.blob_key for a in attachments if a.blob_key),
                        *(base for _, base in deltas)})
    sizes = {key: len(data) for key, data in parts.items()}
    sizes[skeleton_key] = len(skeleton_bytes)
    sizes.update((a.blob_key, a.size) for a in attachments if a.blob_key and a.blob_key not in sizes)
    return StoredContent(skeleton_key, summary, attachments, blob_keys, len(raw), deltas, sizes)


async def _attachment_refs(blobs: BlobStore, raw: bytes, summary,
                           part_infos) -> list[AttachmentRef]:
    """Every attachment gets a blob of its encoded body, so the API can
    serve it without rebuilding the message; large ones already have one."""
    by_path = {p.path: p for p in part_infos}
    refs = []
    for att in summary.attachments:
        part = by_path.get(att.path)
        key = part.blob_key if part else None
        if part is not None and key is None:
            start, end = part.body_range
            key = await blobs.put(raw[start:end])
        refs.append(AttachmentRef(
            id=att.id, filename=att.filename, content_type=att.content_type,
            size=att.size, sha256=att.sha256, blob_key=key or "",
            transfer_encoding=att.transfer_encoding))
    return refs


async def find_thread(metadata: MetadataStore, user_id: str, summary: Summary,
                      received_at_ms: int, subject_window_s: float) -> str | None:
    """The user's existing thread this message belongs to, if any: by its
    References/In-Reply-To first; failing that, for a reply or forward whose
    client dropped them ("Re: ..." without References), the latest thread of
    the same normalized subject within the window. A subject alone without a
    Re:/Fwd: prefix never joins a thread: two mails both called "hello" are
    not a conversation. Only the user's own messages are looked at."""
    if summary.references:
        thread_id = await metadata.find_thread(user_id, summary.references)
        if thread_id:
            return thread_id
    key, is_reply = thread_subject(summary.subject)
    if key and is_reply and subject_window_s > 0:
        since = received_at_ms - int(subject_window_s * 1000)
        return await metadata.find_thread_by_subject(user_id, summary.subject, since)
    return None
