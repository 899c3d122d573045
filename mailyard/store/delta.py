"""Delta encoding of replies: a reply's text blobs compressed against its parent's.

A reply that quotes its parent repeats most of the parent's text. Its text
part is stored with the parent's text part of the same type as a zstd raw
dictionary (and its skeleton, which holds short inline bodies and the
headers, with the parent's skeleton), through SealedBlobStore.put_delta,
which keeps a delta only when it is much smaller than plain compression.
Readers see nothing of it: `get` rebuilds the plaintext.

A delta blob is useless without its base, so every delta written is returned
as (delta key, base key): the caller links the base to the messages that
link the delta, and records the link `delta/<delta key> -> base`, which keeps
the base alive as long as the delta blob lives, whoever else comes to share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mailyard.proto import events_pb2
from mailyard.store.blobs.base import BlobStore
from mailyard.store.errors import NotFound
from mailyard.store.metadata.base import MetadataStore
from mailyard.store.mime import split
from mailyard.store.mime.skeleton import PartInfo, join

# Link owner of a base: "blob/sha256/<hex of the delta>" (the collector
# unlinks it when it deletes the delta, store/gc/collector.py).
DELTA_OWNER = "blob/"
MAX_PARENT_LOOKUPS = 3      # recipients whose mailbox is searched for the parent


def delta_owner(delta_key: str) -> str:
    return DELTA_OWNER + delta_key


@dataclass(slots=True)
class ParentBlobs:
    """Which of the parent's blobs serve as dictionaries for a reply."""
    skeleton_key: str
    text_by_type: dict[str, str] = field(default_factory=dict)  # content type -> blob key

    def base_for(self, part: PartInfo) -> str:
        return self.text_by_type.get(part.content_type, self.skeleton_key)


def supports_delta(blobs: BlobStore) -> bool:
    return hasattr(blobs, "put_delta") and getattr(blobs, "level", None) is not None


async def find_parent(metadata: MetadataStore, user_ids: list[str],
                      references: list[str]) -> str | None:
    """The skeleton key of the message this one replies to (In-Reply-To, the
    last of its references), found in one of the first recipients' mailboxes."""
    if not references:
        return None
    parent_id = references[-1]
    for user_id in user_ids[:MAX_PARENT_LOOKUPS]:
        thread_id = await metadata.find_thread(user_id, [parent_id])
        if not thread_id:
            continue
        for record in await metadata.list_thread(user_id, thread_id):
            if record.rfc822_message_id == parent_id:
                return record.skeleton_key
    return None


async def parent_blobs(blobs: BlobStore, skeleton_key: str) -> ParentBlobs | None:
    """The parent's skeleton and its cut-out text parts by type; None when
    the parent's blobs are gone (deleted meanwhile)."""
    try:
        skeleton = events_pb2.Skeleton.FromString(await blobs.get(skeleton_key))
        keys = {s.blob_key for s in skeleton.segments if s.WhichOneof("kind") == "blob_key"}
        parts = {key: await blobs.get(key) for key in keys}
    except NotFound:
        return None
    _, _, infos = split(join(skeleton, parts), 1)  # min 1: every body gets its key
    found = ParentBlobs(skeleton_key)
    for info in infos:
        if info.content_type.startswith("text/") and info.blob_key in keys:
            found.text_by_type.setdefault(info.content_type, info.blob_key)
    return found


async def put_text_deltas(blobs: BlobStore, parent: ParentBlobs, parts: dict[str, bytes],
                          infos: list[PartInfo]) -> list[tuple[str, str]]:
    """Writes the reply's cut-out text parts as deltas where that pays;
    returns (delta key, base key) for each delta blob among them."""
    written = []
    for info in infos:
        if info.blob_key and info.content_type.startswith("text/") and info.blob_key in parts:
            base = parent.base_for(info)
            key, depends_on = await blobs.put_delta(parts[info.blob_key], base)
            if depends_on:
                written.append((key, depends_on))
    return written


async def with_chains(blobs: BlobStore, deltas: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The deltas plus the links down each base's own chain (a base may be a
    delta itself), so a message links every blob its text needs to be read."""
    out, seen = list(deltas), {delta for delta, _ in deltas}
    pending = [base for _, base in deltas]
    while pending:
        key = pending.pop()
        if key in seen:
            continue
        seen.add(key)
        try:
            base = await blobs.base_of(key)
        except NotFound:
            continue
        if base:
            out.append((key, base))
            pending.append(base)
    return out
