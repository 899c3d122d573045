"""Change-log entries of the Cassandra MetadataStore: what a change is, and the
writes that apply it (see cassandra_schema for the shape of the write path).

Driver-free on purpose: planning an entry and turning it into writes are pure
functions of the state read before the claim, so an entry can be applied by
whichever process finds it unapplied, any number of times, with the same result.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from mailyard.store.metadata.base import (CHANGE_ADDED, CHANGE_DELETED, CHANGE_LABELS,
                                          AttachmentRef, MessageRecord, thread_subject)
from mailyard.store.metadata.cassandra_schema import ALL_MAIL, SHARD_ROWS, TIME_BUCKET_MS

UNREAD = "UNREAD"

# The `messages` columns a record is stored in, in the order of the INSERT.
RECORD_COLUMNS = ("user_id", "message_id", "thread_id", "received_at_ms", "skeleton_key", "size",
                  "rfc822_message_id", "refs", "sender", "to_addrs", "cc_addrs", "subject",
                  "snippet", "labels", "has_attachments", "attachments", "malformed", "queue_id",
                  "bucket", "shard")

# Every write an entry's application makes; each carries USING TIMESTAMP seq.
APPLY_CQL = {
    "put_record": (f"INSERT INTO messages ({', '.join(RECORD_COLUMNS)}) VALUES "
                   f"({', '.join('?' * len(RECORD_COLUMNS))}) USING TIMESTAMP ?"),
    "set_labels": ("UPDATE messages USING TIMESTAMP ? SET labels = ?"
                   " WHERE user_id = ? AND message_id = ?"),
    "delete_record": "DELETE FROM messages USING TIMESTAMP ? WHERE user_id = ? AND message_id = ?",
    "list": ("INSERT INTO messages_by_label (user_id, label, bucket, shard, received_at_ms,"
             " message_id) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
    "unlist": ("DELETE FROM messages_by_label USING TIMESTAMP ? WHERE user_id = ? AND label = ?"
               " AND bucket = ? AND shard = ? AND received_at_ms = ? AND message_id = ?"),
    "label_partition": ("INSERT INTO label_partitions (user_id, label, bucket, shard)"
                        " VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
    "count": ("UPDATE label_counts USING TIMESTAMP ? SET total = ?, unread = ?"
              " WHERE user_id = ? AND label = ?"),
    "arrivals": ("UPDATE bucket_arrivals USING TIMESTAMP ? SET arrivals = ?"
                 " WHERE user_id = ? AND bucket = ?"),
    "thread_member": ("INSERT INTO messages_by_thread (user_id, thread_id, received_at_ms,"
                      " message_id) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
    "thread_unmember": ("DELETE FROM messages_by_thread USING TIMESTAMP ? WHERE user_id = ?"
                        " AND thread_id = ? AND received_at_ms = ? AND message_id = ?"),
    "thread_id": ("INSERT INTO thread_ids (user_id, rfc822_message_id, thread_id)"
                  " VALUES (?, ?, ?) USING TIMESTAMP ?"),
    "thread_subject": ("INSERT INTO thread_subjects (user_id, subject_key, thread_id, last_at_ms)"
                       " VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
}

Write = tuple[str, tuple]  # (APPLY_CQL key, bound values)


@dataclass(slots=True)
class Entry:
    """One change of a user's mailbox as the log stores it."""
    kind: str                 # CHANGE_ADDED, CHANGE_LABELS or CHANGE_DELETED
    message_id: str
    labels: list[str]         # as they are after the change, sorted
    at_ms: int
    effects: dict = field(default_factory=dict)  # what applying it writes (JSON)

    def effects_json(self) -> str:
        return json.dumps(self.effects, separators=(",", ":"))


def record_row(record: MessageRecord, bucket: int, shard: int) -> dict:
    """The record as `messages` column values (lists as lists, JSON where CQL has no type)."""
    return {
        "user_id": record.user_id, "message_id": record.message_id,
        "thread_id": record.thread_id, "received_at_ms": record.received_at_ms,
        "skeleton_key": record.skeleton_key, "size": record.size,
        "rfc822_message_id": record.rfc822_message_id, "refs": list(record.references),
        "sender": record.sender, "to_addrs": list(record.to), "cc_addrs": list(record.cc),
        "subject": record.subject, "snippet": record.snippet, "labels": sorted(record.labels),
        "has_attachments": record.has_attachments,
        "attachments": json.dumps([asdict(a) for a in record.attachments]),
        "malformed": record.malformed, "queue_id": record.queue_id,
        "bucket": bucket, "shard": shard}


def record_from_row(row: dict) -> MessageRecord:
    # Cassandra stores an empty collection as null.
    return MessageRecord(
        user_id=row["user_id"], message_id=row["message_id"], thread_id=row["thread_id"],
        received_at_ms=row["received_at_ms"], skeleton_key=row["skeleton_key"],
        size=row["size"], rfc822_message_id=row["rfc822_message_id"] or "",
        references=list(row["refs"] or []), sender=row["sender"] or "",
        to=list(row["to_addrs"] or []), cc=list(row["cc_addrs"] or []),
        subject=row["subject"] or "", snippet=row["snippet"] or "",
        labels=set(row["labels"] or ()), has_attachments=bool(row["has_attachments"]),
        attachments=[AttachmentRef(**a) for a in json.loads(row["attachments"] or "[]")],
        malformed=bool(row["malformed"]), queue_id=row["queue_id"] or "")


def bucket_of(received_at_ms: int) -> int:
    return received_at_ms - received_at_ms % TIME_BUCKET_MS


class Planner:
    """Turns the changes one call makes into entries, keeping the user's label
    counts and bucket arrivals as they will be after each entry, so the entries
    of one claim carry exact absolute values."""

    def __init__(self, counts: dict[str, tuple[int, int]], arrivals: dict[int, int],
                 shard_rows: int = SHARD_ROWS) -> None:
        self.counts = {label: tuple(value) for label, value in counts.items()}
        self.arrivals = dict(arrivals)
        self.shard_rows = shard_rows

    def added(self, record: MessageRecord, at_ms: int, *, thread_known: bool,
              subject_last_at: int | None) -> Entry:
        """`thread_known`: the user has a message with this Message-ID already;
        `subject_last_at`: when the latest message of its subject arrived, if any."""
        bucket = bucket_of(record.received_at_ms)
        arrived = self.arrivals.get(bucket, 0)
        self.arrivals[bucket] = arrived + 1
        effects = {"record": record_row(record, bucket, arrived // self.shard_rows),
                   "arrivals": arrived + 1, "counts": self._recount(set(), record.labels)}
        if record.rfc822_message_id and not thread_known:
            effects["thread_key"] = record.rfc822_message_id  # the first one fixes its thread
        subject_key, _ = thread_subject(record.subject)
        if subject_key and (subject_last_at is None or record.received_at_ms >= subject_last_at):
            effects["subject_key"] = subject_key
        return Entry(CHANGE_ADDED, record.message_id, sorted(record.labels), at_ms, effects)

    def relabeled(self, record: MessageRecord, labels: set[str], at_ms: int,
                  bucket: int, shard: int) -> Entry:
        effects = {"received_at_ms": record.received_at_ms, "bucket": bucket, "shard": shard,
                   "before": sorted(record.labels), "counts": self._recount(record.labels, labels)}
        return Entry(CHANGE_LABELS, record.message_id, sorted(labels), at_ms, effects)

    def deleted(self, record: MessageRecord, at_ms: int, bucket: int, shard: int) -> Entry:
        effects = {"received_at_ms": record.received_at_ms, "bucket": bucket, "shard": shard,
                   "thread_id": record.thread_id, "before": sorted(record.labels),
                   "counts": self._recount(record.labels, set())}
        return Entry(CHANGE_DELETED, record.message_id, [], at_ms, effects)

    def _recount(self, before: set[str], after: set[str]) -> dict[str, list[int]]:
        """The labels whose (total, unread) the change moves, with their new values."""
        changed = {}
        unread_before, unread_after = UNREAD in before, UNREAD in after
        for label in sorted(before | after):
            total, unread = self.counts.get(label, (0, 0))
            new = (total + (label in after) - (label in before),
                   unread + (label in after and unread_after) - (label in before and unread_before))
            if new != (total, unread):
                self.counts[label] = new
                changed[label] = list(new)
        return changed


def apply_writes(user_id: str, seq: int, entry: Entry) -> list[Write]:
    """Every write that applies `entry` (number `seq` of `user_id`'s log). Each
    carries timestamp `seq`, so a late or repeated application loses to newer
    entries and a row deleted by a later entry stays deleted."""
    effects, message_id = entry.effects, entry.message_id
    writes: list[Write] = []

    def listing(labels, bucket: int, shard: int, received_at_ms: int, add: bool) -> None:
        for label in labels:
            if add:
                writes.append(("list", (user_id, label, bucket, shard, received_at_ms,
                                        message_id, seq)))
                writes.append(("label_partition", (user_id, label, bucket, shard, seq)))
            else:
                writes.append(("unlist", (seq, user_id, label, bucket, shard, received_at_ms,
                                          message_id)))

    if entry.kind == CHANGE_ADDED:
        row = effects["record"]
        bucket, shard, received = row["bucket"], row["shard"], row["received_at_ms"]
        writes.append(("put_record", (*(row[c] for c in RECORD_COLUMNS), seq)))
        listing([*row["labels"], ALL_MAIL], bucket, shard, received, add=True)
        writes.append(("thread_member", (user_id, row["thread_id"], received, message_id, seq)))
        writes.append(("arrivals", (seq, effects["arrivals"], user_id, bucket)))
        if "thread_key" in effects:
            writes.append(("thread_id", (user_id, effects["thread_key"], row["thread_id"], seq)))
        if "subject_key" in effects:
            writes.append(("thread_subject", (user_id, effects["subject_key"], row["thread_id"],
                                              received, seq)))
    elif entry.kind == CHANGE_LABELS:
        before, after = set(effects["before"]), set(entry.labels)
        place = (effects["bucket"], effects["shard"], effects["received_at_ms"])
        writes.append(("set_labels", (seq, entry.labels, user_id, message_id)))
        listing(sorted(after - before), *place, add=True)
        listing(sorted(before - after), *place, add=False)
    elif entry.kind == CHANGE_DELETED:
        received = effects["received_at_ms"]
        writes.append(("delete_record", (seq, user_id, message_id)))
        listing([*effects["before"], ALL_MAIL], effects["bucket"], effects["shard"], received,
                add=False)
        writes.append(("thread_unmember", (seq, user_id, effects["thread_id"], received,
                                           message_id)))
    else:
        raise ValueError(f"unknown change kind {entry.kind!r}")
    for label, (total, unread) in effects["counts"].items():
        writes.append(("count", (seq, total, unread, user_id, label)))
    return writes
