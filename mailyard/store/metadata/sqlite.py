"""MetadataStore on SQLite: the embedded default, one database file.

The tables mirror the distributed data model so a Cassandra adapter maps one
to one: `messages` holds each full record under (user_id, message_id), and
`message_labels` is the listing table, clustered newest first per
(user_id, label), so a page is a range read, never a sort of the mailbox.

One dedicated thread owns the connection, so the event loop never waits on
disk and calls run in order. Writes that arrive while a transaction is being
committed are grouped into the next one (each in its own savepoint, so one
failing write fails only its caller): many deliveries share one fsync. WAL lets readers in other processes (the
launcher may run services in separate processes on one data dir) go on while
one writes; the busy timeout makes writers queue instead of failing, and
synchronous=FULL makes a commit durable before the caller goes on to commit
its queue offset.
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from mailyard.store.errors import AlreadyExists, NotFound, StorageError, VersionConflict
from mailyard.store.metadata.base import (CHANGE_ADDED, CHANGE_DELETED, CHANGE_LABELS,
                                          DELETION_DONE, DELETION_PENDING, AttachmentRef,
                                          BlobDeletion, Change, Cursor, Draft, MessageRecord,
                                          MetadataStore, OutboundEntry, SpamVerdict,
                                          TRACE_RETENTION_MS, TraceEvent, User,
                                          thread_subject)

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's transaction

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS domains (
        domain TEXT PRIMARY KEY
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS users (
        address TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # Lists and attachments are JSON text; rows can be large, so keep the rowid
    # table (WITHOUT ROWID suits small rows only).
    """CREATE TABLE IF NOT EXISTS messages (
        user_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        received_at_ms INTEGER NOT NULL,
        skeleton_key TEXT NOT NULL,
        size INTEGER NOT NULL,
        rfc822_message_id TEXT NOT NULL,
        references_json TEXT NOT NULL,
        sender TEXT NOT NULL,
        to_json TEXT NOT NULL,
        cc_json TEXT NOT NULL,
        subject TEXT NOT NULL,
        snippet TEXT NOT NULL,
        labels_json TEXT NOT NULL,
        has_attachments INTEGER NOT NULL,
        attachments_json TEXT NOT NULL,
        malformed INTEGER NOT NULL,
        queue_id TEXT NOT NULL,
        PRIMARY KEY (user_id, message_id)
    )""",
    # The primary key is the listing index: (user, label) then newest first,
    # ties by message_id descending, exactly the order of list_messages.
    """CREATE TABLE IF NOT EXISTS message_labels (
        user_id TEXT NOT NULL,
        label TEXT NOT NULL,
        received_at_ms INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (user_id, label, received_at_ms DESC, message_id DESC)
    ) WITHOUT ROWID""",
    # Every message of a user newest first, whatever its labels (a reindex).
    """CREATE INDEX IF NOT EXISTS messages_by_time
        ON messages (user_id, received_at_ms DESC, message_id DESC)""",
    """CREATE TABLE IF NOT EXISTS thread_ids (
        user_id TEXT NOT NULL,
        rfc822_message_id TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        PRIMARY KEY (user_id, rfc822_message_id)
    ) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS messages_by_thread
        ON messages (user_id, thread_id, received_at_ms, message_id)""",
    # The subject fallback of threading: the latest thread of each normalized
    # subject (see thread_subject), for replies from clients that drop References.
    """CREATE TABLE IF NOT EXISTS thread_subjects (
        user_id TEXT NOT NULL,
        subject_key TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        last_at_ms INTEGER NOT NULL,
        PRIMARY KEY (user_id, subject_key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS user_labels (
        user_id TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (user_id, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS drafts (
        user_id TEXT NOT NULL,
        draft_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        content_json TEXT NOT NULL,
        PRIMARY KEY (user_id, draft_id)
    )""",
    """CREATE INDEX IF NOT EXISTS drafts_by_time
        ON drafts (user_id, updated_at_ms DESC, draft_id DESC)""",
    # Per-user change log read by WatchMailbox: seq is max+1 inside the
    # writing transaction (IMMEDIATE, so serialized across processes).
    """CREATE TABLE IF NOT EXISTS changes (
        user_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        message_id TEXT NOT NULL,
        labels_json TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (user_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS outbound (
        queue_id TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,
        state TEXT NOT NULL,
        envelope BLOB NOT NULL,
        next_attempt_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS trace_events (
        queue_id TEXT NOT NULL,
        step TEXT NOT NULL,
        event_key TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        detail_json TEXT NOT NULL,
        PRIMARY KEY (queue_id, step, event_key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS trace_events_by_time ON trace_events (at_ms)",
    """CREATE TABLE IF NOT EXISTS trace_refs (
        ref TEXT NOT NULL,
        queue_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (ref, queue_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS blob_links (
        blob_key TEXT NOT NULL,
        owner TEXT NOT NULL,
        PRIMARY KEY (blob_key, owner)
    ) WITHOUT ROWID""",
    # A message's links are dropped by owner (delete_messages, delete_outbound).
    """CREATE INDEX IF NOT EXISTS blob_links_by_owner ON blob_links (owner)""",
    # The garbage collector's claims and tombstones (store/gc).
    """CREATE TABLE IF NOT EXISTS blob_deletions (
        blob_key TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # The distinct blobs charged to each user's quota, with their sizes.
    """CREATE TABLE IF NOT EXISTS user_blobs (
        user_id TEXT NOT NULL,
        blob_key TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (user_id, blob_key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS spam_weights (
        scope TEXT NOT NULL,
        feature INTEGER NOT NULL,
        weight REAL NOT NULL,
        PRIMARY KEY (scope, feature)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS spam_verdicts (
        user_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        verdict_json TEXT NOT NULL,
        PRIMARY KEY (user_id, message_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS blocked_senders (
        entry TEXT PRIMARY KEY
    ) WITHOUT ROWID""",
)
_SQL_PARAMS = 500  # features per IN (...) query, well under SQLite's parameter limit

_COLUMNS = ("user_id", "message_id", "thread_id", "received_at_ms", "skeleton_key", "size",
            "rfc822_message_id", "references_json", "sender", "to_json", "cc_json", "subject",
            "snippet", "labels_json", "has_attachments", "attachments_json", "malformed",
            "queue_id")
_SELECT = "SELECT " + ", ".join("m." + c for c in _COLUMNS) + " FROM messages AS m"
_INSERT = (f"INSERT INTO messages ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
           " ON CONFLICT (user_id, message_id) DO NOTHING")
_LIST = (_SELECT + " JOIN message_labels AS l"
         " ON m.user_id = l.user_id AND m.message_id = l.message_id"
         " WHERE l.user_id = ? AND l.label = ? {after}"
         " ORDER BY l.received_at_ms DESC, l.message_id DESC LIMIT ?")
_AFTER = "AND (l.received_at_ms, l.message_id) < (?, ?)"
_COUNT = "SELECT count(*) FROM message_labels AS l WHERE l.user_id = ? AND l.label = ?"
_UNREAD = (" AND EXISTS (SELECT 1 FROM message_labels AS u WHERE u.user_id = l.user_id"
           " AND u.label = 'UNREAD' AND u.received_at_ms = l.received_at_ms"
           " AND u.message_id = l.message_id)")
_ADD_LABEL = ("INSERT INTO message_labels (user_id, label, received_at_ms, message_id)"
              " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
_REMOVE_LABEL = ("DELETE FROM message_labels"
                 " WHERE user_id = ? AND label = ? AND received_at_ms = ? AND message_id = ?")


_OUTBOUND_SELECT = ("SELECT queue_id, generation, state, envelope, next_attempt_ms, last_error,"
                    " updated_at_ms FROM outbound")


class SqliteMetadataStore(MetadataStore):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[..., Any], tuple, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metadata-sqlite")
        await self._call(self._open)

    async def close(self) -> None:
        if self._executor is None:
            return
        executor = self._executor
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        try:
            await self._call(self._close_db)  # runs after every call already queued
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    # --- domains -------------------------------------------------------
    async def add_domain(self, domain: str) -> None:
        await self._write_call(self._write, "INSERT INTO domains (domain) VALUES (?)"
                         " ON CONFLICT DO NOTHING", (domain.lower(),))

    async def list_domains(self) -> list[str]:
        rows = await self._call(self._read, "SELECT domain FROM domains ORDER BY domain", ())
        return [row[0] for row in rows]

    async def has_domain(self, domain: str) -> bool:
        rows = await self._call(self._read, "SELECT 1 FROM domains WHERE domain = ?",
                                (domain.lower(),))
        return bool(rows)

    # --- users ---------------------------------------------------------
    async def put_user(self, user: User) -> None:
        await self._write_call(self._write, "INSERT INTO users (address, password_hash, created_at_ms)"
                         " VALUES (?, ?, ?) ON CONFLICT (address) DO UPDATE SET"
                         " password_hash = excluded.password_hash,"
                         " created_at_ms = excluded.created_at_ms",
                         (user.address.lower(), user.password_hash, user.created_at_ms))

    async def get_user(self, address: str) -> User | None:
        rows = await self._call(self._read, "SELECT address, password_hash, created_at_ms"
                                " FROM users WHERE address = ?", (address.lower(),))
        return User(*rows[0]) if rows else None

    async def list_users(self) -> list[User]:
        rows = await self._call(self._read, "SELECT address, password_hash, created_at_ms"
                                " FROM users ORDER BY address", ())
        return [User(*row) for row in rows]

    # --- messages ------------------------------------------------------
    async def put_message(self, record: MessageRecord) -> bool:
        created = await self._write_call(self._put_message, record)
        if created:
            self.changes.notify(record.user_id)
        return created

    async def get_message(self, user_id: str, message_id: str) -> MessageRecord | None:
        rows = await self._call(self._read, _SELECT + " WHERE m.user_id = ? AND m.message_id = ?",
                                (user_id.lower(), message_id))
        return _record(rows[0]) if rows else None

    async def list_messages(self, user_id: str, label: str, limit: int,
                            after: Cursor | None = None) -> list[MessageRecord]:
        if limit <= 0:  # SQLite reads a negative LIMIT as "no limit"
            return []
        if after is None:
            sql, params = _LIST.format(after=""), (user_id.lower(), label, limit)
        else:
            sql = _LIST.format(after=_AFTER)
            params = (user_id.lower(), label, after[0], after[1], limit)
        return [_record(row) for row in await self._call(self._read, sql, params)]

    async def list_all_messages(self, user_id: str, limit: int,
                                after: Cursor | None = None) -> list[MessageRecord]:
        if limit <= 0:
            return []
        sql, params = _SELECT + " WHERE m.user_id = ?", [user_id.lower()]
        if after is not None:
            sql += " AND (m.received_at_ms, m.message_id) < (?, ?)"
            params += [after[0], after[1]]
        sql += " ORDER BY m.received_at_ms DESC, m.message_id DESC LIMIT ?"
        return [_record(row) for row in await self._call(self._read, sql, (*params, limit))]

    async def count_messages(self, user_id: str, label: str, unread_only: bool = False) -> int:
        sql = _COUNT + (_UNREAD if unread_only else "")
        rows = await self._call(self._read, sql, (user_id.lower(), label))
        return rows[0][0]

    async def delete_messages(self, user_id: str, message_ids: list[str]) -> list[MessageRecord]:
        deleted = await self._write_call(self._delete_messages, user_id.lower(), message_ids)
        self._notify(user_id, deleted)
        return deleted

    async def modify_labels(self, user_id: str, message_ids: list[str],
                            add: set[str], remove: set[str]) -> list[MessageRecord]:
        changed = await self._write_call(self._modify_labels, user_id.lower(), message_ids, add,
                                         remove)
        self._notify(user_id, changed)
        return changed

    async def find_thread(self, user_id: str, rfc822_ids: list[str]) -> str | None:
        return await self._call(self._find_thread, user_id.lower(), rfc822_ids)

    async def list_thread(self, user_id: str, thread_id: str) -> list[MessageRecord]:
        rows = await self._call(self._read, _SELECT + " WHERE m.user_id = ? AND m.thread_id = ?"
                                " ORDER BY m.received_at_ms, m.message_id",
                                (user_id.lower(), thread_id))
        return [_record(row) for row in rows]

    async def find_thread_by_subject(self, user_id: str, subject: str,
                                     since_ms: int) -> str | None:
        key, _ = thread_subject(subject)
        if not key:
            return None
        rows = await self._call(self._read, "SELECT thread_id FROM thread_subjects"
                                " WHERE user_id = ? AND subject_key = ? AND last_at_ms >= ?",
                                (user_id.lower(), key, since_ms))
        return rows[0][0] if rows else None

    # --- user labels ---------------------------------------------------
    async def create_label(self, user_id: str, name: str) -> bool:
        return await self._write_call(self._create_label, user_id.lower(), name)

    async def list_labels(self, user_id: str) -> list[str]:
        rows = await self._call(self._read, "SELECT name FROM user_labels WHERE user_id = ?"
                                " ORDER BY name", (user_id.lower(),))
        return [row[0] for row in rows]

    async def rename_label(self, user_id: str, old: str, new: str) -> list[str]:
        ids = await self._write_call(self._relabel, user_id.lower(), old, new)
        self._notify(user_id, ids)
        return ids

    async def delete_label(self, user_id: str, name: str) -> list[str]:
        ids = await self._write_call(self._relabel, user_id.lower(), name, None)
        self._notify(user_id, ids)
        return ids

    # --- drafts --------------------------------------------------------
    async def put_draft(self, draft: Draft, expected_version: int) -> Draft:
        return await self._write_call(self._put_draft, draft, expected_version)

    async def get_draft(self, user_id: str, draft_id: str) -> Draft | None:
        rows = await self._call(self._read, _DRAFT_SELECT + " WHERE user_id = ? AND draft_id = ?",
                                (user_id.lower(), draft_id))
        return _draft(rows[0]) if rows else None

    async def list_drafts(self, user_id: str, limit: int,
                          after: Cursor | None = None) -> list[Draft]:
        if limit <= 0:
            return []
        sql, params = _DRAFT_SELECT + " WHERE user_id = ?", [user_id.lower()]
        if after is not None:
            sql += " AND (updated_at_ms, draft_id) < (?, ?)"
            params += [after[0], after[1]]
        sql += " ORDER BY updated_at_ms DESC, draft_id DESC LIMIT ?"
        return [_draft(row) for row in await self._call(self._read, sql, (*params, limit))]

    async def delete_draft(self, user_id: str, draft_id: str, expected_version: int = 0) -> bool:
        return await self._write_call(self._delete_draft, user_id.lower(), draft_id,
                                      expected_version)

    # --- change log ----------------------------------------------------
    async def list_changes(self, user_id: str, after: int, limit: int) -> list[Change]:
        if limit <= 0:
            return []
        rows = await self._call(self._read, "SELECT seq, kind, message_id, labels_json, at_ms"
                                " FROM changes WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                (user_id.lower(), after, limit))
        return [Change(seq, kind, message_id, json.loads(labels), at_ms)
                for seq, kind, message_id, labels, at_ms in rows]

    async def last_change(self, user_id: str) -> int:
        rows = await self._call(self._read, "SELECT max(seq) FROM changes WHERE user_id = ?",
                                (user_id.lower(),))
        return rows[0][0] or 0

    # --- message trace -------------------------------------------------
    async def add_trace(self, events: list[TraceEvent], refs: list[str] = ()) -> None:
        await self._write_call(self._add_trace, list(events), list(refs))

    async def get_trace(self, queue_id: str) -> list[TraceEvent]:
        rows = await self._call(self._read, "SELECT queue_id, at_ms, step, event_key, detail_json"
                                " FROM trace_events WHERE queue_id = ?", (queue_id,))
        return sorted((TraceEvent(q, at, step, key, json.loads(detail))
                       for q, at, step, key, detail in rows),
                      key=lambda e: (e.at_ms, e.step, e.key))

    async def find_trace(self, ref: str) -> list[str]:
        rows = await self._call(self._read, "SELECT queue_id FROM trace_refs WHERE ref = ?"
                                " ORDER BY queue_id", (ref,))
        return [row[0] for row in rows]

    # --- outbound queue ------------------------------------------------
    async def put_outbound(self, entry: OutboundEntry, expected_generation: int = -1) -> bool:
        return await self._write_call(self._put_outbound, entry, expected_generation)

    async def get_outbound(self, queue_id: str) -> OutboundEntry | None:
        rows = await self._call(self._read, _OUTBOUND_SELECT + " WHERE queue_id = ?", (queue_id,))
        return OutboundEntry(*rows[0]) if rows else None

    async def list_outbound(self, limit: int, after: str = "") -> list[OutboundEntry]:
        if limit <= 0:
            return []
        rows = await self._call(self._read, _OUTBOUND_SELECT + " WHERE queue_id > ?"
                                " ORDER BY queue_id LIMIT ?", (after, limit))
        return [OutboundEntry(*row) for row in rows]

    async def delete_outbound(self, queue_id: str, expected_generation: int = -1) -> bool:
        return await self._write_call(self._delete_outbound, queue_id, expected_generation)

    # --- blob links ----------------------------------------------------
    async def link_blobs(self, owner: str, keys: list[str]) -> None:
        await self._write_call(self._write_many, "INSERT INTO blob_links (blob_key, owner)"
                         " VALUES (?, ?) ON CONFLICT DO NOTHING", [(k, owner) for k in keys])

    async def blob_owners(self, key: str) -> list[str]:
        rows = await self._call(self._read, "SELECT owner FROM blob_links WHERE blob_key = ?"
                                " ORDER BY owner", (key,))
        return [row[0] for row in rows]

    async def unlink_blobs(self, owner: str, keys: list[str]) -> None:
        await self._write_call(self._write_many, "DELETE FROM blob_links"
                               " WHERE blob_key = ? AND owner = ?", [(k, owner) for k in keys])

    # --- blob deletions ------------------------------------------------
    async def claim_blob_deletion(self, key: str, at_ms: int) -> bool:
        return await self._write_call(
            self._write_counted, "INSERT INTO blob_deletions (blob_key, state, at_ms)"
            " VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (key, DELETION_PENDING, at_ms)) == 1

    async def end_blob_deletion(self, key: str, deleted: bool, at_ms: int) -> None:
        if deleted:
            await self._write_call(self._write, "UPDATE blob_deletions SET state = ?, at_ms = ?"
                                   " WHERE blob_key = ?", (DELETION_DONE, at_ms, key))
        else:
            await self._write_call(self._write, "DELETE FROM blob_deletions WHERE blob_key = ?"
                                   " AND state = ?", (key, DELETION_PENDING))

    async def blob_deletions(self, keys: list[str]) -> dict[str, BlobDeletion]:
        found: dict[str, BlobDeletion] = {}
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), _SQL_PARAMS):
            chunk = keys[start:start + _SQL_PARAMS]
            rows = await self._call(self._read, "SELECT blob_key, state, at_ms FROM blob_deletions"
                                    f" WHERE blob_key IN ({', '.join('?' * len(chunk))})",
                                    tuple(chunk))
            found.update((row[0], BlobDeletion(*row)) for row in rows)
        return found

    async def list_blob_deletions(self, limit: int, after: str = "") -> list[BlobDeletion]:
        rows = await self._call(self._read, "SELECT blob_key, state, at_ms FROM blob_deletions"
                                " WHERE blob_key > ? ORDER BY blob_key LIMIT ?", (after, limit))
        return [BlobDeletion(*row) for row in rows]

    async def forget_blob_deletion(self, key: str) -> None:
        await self._write_call(self._write, "DELETE FROM blob_deletions WHERE blob_key = ?"
                               " AND state = ?", (key, DELETION_DONE))

    # --- storage usage -------------------------------------------------
    async def charge_blobs(self, user_id: str, sizes: dict[str, int]) -> None:
        user_id = user_id.lower()
        await self._write_call(self._write_many, "INSERT INTO user_blobs (user_id, blob_key, size)"
                               " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                               [(user_id, k, size) for k, size in sizes.items()])

    async def storage_usage(self, user_id: str) -> int:
        rows = await self._call(self._read, "SELECT coalesce(sum(size), 0) FROM user_blobs"
                                " WHERE user_id = ?", (user_id.lower(),))
        return rows[0][0]

    # --- spam filtering ------------------------------------------------
    async def spam_weights(self, scope: str, features: list[int]) -> dict[int, float]:
        features = list(dict.fromkeys(features))
        found: dict[int, float] = {}
        for start in range(0, len(features), _SQL_PARAMS):
            chunk = features[start:start + _SQL_PARAMS]
            rows = await self._call(
                self._read, "SELECT feature, weight FROM spam_weights WHERE scope = ?"
                f" AND feature IN ({', '.join('?' * len(chunk))})", (scope, *chunk))
            found.update(rows)
        return found

    async def add_spam_weights(self, scope: str, deltas: dict[int, float]) -> None:
        if deltas:
            await self._write_call(
                self._write_many, "INSERT INTO spam_weights (scope, feature, weight)"
                " VALUES (?, ?, ?) ON CONFLICT (scope, feature) DO UPDATE SET"
                " weight = weight + excluded.weight",
                [(scope, feature, delta) for feature, delta in deltas.items()])

    async def put_spam_verdict(self, verdict: SpamVerdict) -> None:
        await self._write_call(
            self._write, "INSERT INTO spam_verdicts (user_id, message_id, verdict_json)"
            " VALUES (?, ?, ?) ON CONFLICT (user_id, message_id) DO UPDATE SET"
            " verdict_json = excluded.verdict_json",
            (verdict.user_id.lower(), verdict.message_id, json.dumps(asdict(verdict))))

    async def get_spam_verdict(self, user_id: str, message_id: str) -> SpamVerdict | None:
        rows = await self._call(self._read, "SELECT verdict_json FROM spam_verdicts"
                                " WHERE user_id = ? AND message_id = ?",
                                (user_id.lower(), message_id))
        return SpamVerdict(**json.loads(rows[0][0])) if rows else None

    async def set_sender_blocked(self, entry: str, blocked: bool) -> bool:
        sql = ("INSERT INTO blocked_senders (entry) VALUES (?) ON CONFLICT DO NOTHING"
               if blocked else "DELETE FROM blocked_senders WHERE entry = ?")
        return await self._write_call(self._write_counted, sql, (entry.lower(),)) > 0

    async def blocked_senders(self, candidates: list[str]) -> list[str]:
        wanted = [c.lower() for c in candidates][:_SQL_PARAMS]
        if not wanted:
            return []
        rows = await self._call(self._read, "SELECT entry FROM blocked_senders WHERE entry IN"
                                f" ({', '.join('?' * len(wanted))})", tuple(wanted))
        found = {row[0] for row in rows}
        return [c for c in wanted if c in found]

    async def list_blocked_senders(self, limit: int, after: str = "") -> list[str]:
        rows = await self._call(self._read, "SELECT entry FROM blocked_senders WHERE entry > ?"
                                " ORDER BY entry LIMIT ?", (after, limit))
        return [row[0] for row in rows]

    # --- plumbing ------------------------------------------------------
    def _notify(self, user_id: str, changed: list) -> None:
        if changed:
            self.changes.notify(user_id)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs `fn` on the connection's thread; backend failures become StorageError."""
        if self._executor is None:
            raise StorageError("metadata store is not started")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except (sqlite3.Error, OSError) as e:
            raise StorageError(f"metadata store {self._path}: {e}") from e

    async def _write_call(self, fn: Callable[..., T], *args: Any) -> T:
        """Queues a write for the next group commit and waits until it is durable."""
        if self._executor is None:
            raise StorageError("metadata store is not started")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    outcomes = await self._call(self._run_writes, [(f, a) for f, a, _ in batch])
                except StorageError as e:
                    outcomes = [(False, e)] * len(batch)
                for (_, _, future), (ok, value) in zip(batch, outcomes):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    elif isinstance(value, (sqlite3.Error, OSError)):
                        future.set_exception(StorageError(f"metadata store {self._path}: {value}"))
                    else:
                        future.set_exception(value)
        finally:
            self._flusher = None

    # --- on the connection's thread ------------------------------------
    def _run_writes(self, writes: list[tuple[Callable[..., Any], tuple]]) -> list[tuple[bool, Any]]:
        """Runs each write in its own savepoint inside one transaction: one commit
        (one fsync) for the lot. If the commit fails, every write fails."""
        outcomes: list[tuple[bool, Any]] = []
        with _transaction(self._conn()) as db:
            for fn, args in writes:
                db.execute("SAVEPOINT write")
                try:
                    outcomes.append((True, fn(*args)))
                    db.execute("RELEASE write")
                except Exception as e:  # this caller's failure, not the batch's
                    db.execute("ROLLBACK TO write")
                    db.execute("RELEASE write")
                    outcomes.append((False, e))
        return outcomes

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"metadata store {self._path}: cannot use WAL (got {mode})")
            db.execute("PRAGMA synchronous=FULL")
            with _transaction(db):
                for statement in SCHEMA:
                    db.execute(statement)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError("metadata store is not started")
        return self._db

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        return self._conn().execute(sql, params).fetchall()

    def _write(self, sql: str, params: tuple) -> None:
        self._conn().execute(sql, params)

    def _write_counted(self, sql: str, params: tuple) -> int:
        return self._conn().execute(sql, params).rowcount

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        with _transaction(self._conn()) as db:
            db.executemany(sql, rows)

    def _put_message(self, record: MessageRecord) -> bool:
        row = _row(record)
        user_id, message_id, thread_id, received_at_ms = row[:4]
        with _transaction(self._conn()) as db:
            if db.execute(_INSERT, row).rowcount == 0:
                return False  # a replay: keep the labels the user changed since
            db.executemany(_ADD_LABEL, [(user_id, label, received_at_ms, message_id)
                                        for label in record.labels])
            if record.rfc822_message_id:
                # The first message with this Message-ID fixes its thread.
                db.execute("INSERT INTO thread_ids (user_id, rfc822_message_id, thread_id)"
                           " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                           (user_id, record.rfc822_message_id, thread_id))
            subject_key, _ = thread_subject(record.subject)
            if subject_key:
                db.execute("INSERT INTO thread_subjects (user_id, subject_key, thread_id,"
                           " last_at_ms) VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                           " thread_id = excluded.thread_id, last_at_ms = excluded.last_at_ms"
                           " WHERE excluded.last_at_ms >= thread_subjects.last_at_ms",
                           (user_id, subject_key, thread_id, received_at_ms))
            _append_change(db, user_id, CHANGE_ADDED, message_id, record.labels)
        return True

    def _modify_labels(self, user_id: str, message_ids: list[str],
                       add: set[str], remove: set[str]) -> list[MessageRecord]:
        changed: list[MessageRecord] = []
        with _transaction(self._conn()) as db:
            for message_id in dict.fromkeys(message_ids):  # once each, in the caller's order
                row = db.execute(_SELECT + " WHERE m.user_id = ? AND m.message_id = ?",
                                 (user_id, message_id)).fetchone()
                if row is None:
                    continue  # missing or another user's: skipped alike
                record = _record(row)
                labels = (record.labels | add) - remove
                key = (record.received_at_ms, message_id)
                db.executemany(_ADD_LABEL, [(user_id, label, *key)
                                            for label in labels - record.labels])
                db.executemany(_REMOVE_LABEL, [(user_id, label, *key)
                                               for label in record.labels - labels])
                if labels != record.labels:
                    db.execute("UPDATE messages SET labels_json = ?"
                               " WHERE user_id = ? AND message_id = ?",
                               (json.dumps(sorted(labels)), user_id, message_id))
                    _append_change(db, user_id, CHANGE_LABELS, message_id, labels)
                record.labels = labels
                changed.append(record)
        return changed

    def _delete_messages(self, user_id: str, message_ids: list[str]) -> list[MessageRecord]:
        deleted: list[MessageRecord] = []
        with _transaction(self._conn()) as db:
            for message_id in dict.fromkeys(message_ids):
                row = db.execute(_SELECT + " WHERE m.user_id = ? AND m.message_id = ?",
                                 (user_id, message_id)).fetchone()
                if row is None:
                    continue
                record = _record(row)
                db.execute("DELETE FROM messages WHERE user_id = ? AND message_id = ?",
                           (user_id, message_id))
                db.executemany(_REMOVE_LABEL, [(user_id, label, record.received_at_ms, message_id)
                                               for label in record.labels])
                _unlink_message(db, user_id, message_id)
                _append_change(db, user_id, CHANGE_DELETED, message_id, set())
                deleted.append(record)
        return deleted

    def _create_label(self, user_id: str, name: str) -> bool:
        return self._conn().execute(
            "INSERT INTO user_labels (user_id, name, created_at_ms) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING", (user_id, name, int(time.time() * 1000))).rowcount == 1

    def _relabel(self, user_id: str, old: str, new: str | None) -> list[str]:
        """Renames user label `old` to `new`, or deletes it when `new` is None."""
        with _transaction(self._conn()) as db:
            if db.execute("DELETE FROM user_labels WHERE user_id = ? AND name = ?",
                          (user_id, old)).rowcount == 0:
                raise NotFound(f"label {old!r} not found")
            if new is not None and db.execute(
                    "INSERT INTO user_labels (user_id, name, created_at_ms) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (user_id, new, int(time.time() * 1000))).rowcount == 0:
                raise AlreadyExists(f"label {new!r} already exists")
            rows = db.execute(_SELECT + " JOIN message_labels AS l ON m.user_id = l.user_id"
                              " AND m.message_id = l.message_id WHERE l.user_id = ? AND l.label = ?",
                              (user_id, old)).fetchall()
            ids = []
            for row in rows:
                record = _record(row)
                labels = record.labels - {old} | ({new} if new is not None else set())
                key = (record.received_at_ms, record.message_id)
                db.execute(_REMOVE_LABEL, (user_id, old, *key))
                if new is not None:
                    db.execute(_ADD_LABEL, (user_id, new, *key))
                db.execute("UPDATE messages SET labels_json = ? WHERE user_id = ? AND message_id = ?",
                           (json.dumps(sorted(labels)), user_id, record.message_id))
                _append_change(db, user_id, CHANGE_LABELS, record.message_id, labels)
                ids.append(record.message_id)
        return ids

    def _put_draft(self, draft: Draft, expected_version: int) -> Draft:
        user_id = draft.user_id.lower()
        with _transaction(self._conn()) as db:
            row = db.execute("SELECT version FROM drafts WHERE user_id = ? AND draft_id = ?",
                             (user_id, draft.draft_id)).fetchone()
            if expected_version == 0 and row is not None:
                raise AlreadyExists(f"draft {draft.draft_id!r} already exists")
            if expected_version != 0 and row is None:
                raise NotFound(f"draft {draft.draft_id!r} not found")
            if row is not None and row[0] != expected_version:
                raise VersionConflict(f"draft {draft.draft_id!r} is at version {row[0]},"
                                      f" not {expected_version}")
            stored = Draft(**{**_draft_fields(draft), "user_id": user_id,
                              "version": expected_version + 1})
            db.execute("INSERT INTO drafts (user_id, draft_id, version, updated_at_ms, content_json)"
                       " VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, draft_id) DO UPDATE SET"
                       " version = excluded.version, updated_at_ms = excluded.updated_at_ms,"
                       " content_json = excluded.content_json",
                       (user_id, stored.draft_id, stored.version, stored.updated_at_ms,
                        _draft_content(stored)))
        return stored

    def _add_trace(self, events: list[TraceEvent], refs: list[str]) -> None:
        db = self._conn()
        db.executemany("INSERT OR REPLACE INTO trace_events (queue_id, step, event_key, at_ms,"
                       " detail_json) VALUES (?, ?, ?, ?, ?)",
                       [(e.queue_id, e.step, e.key, e.at_ms, json.dumps(e.detail))
                        for e in events])
        queue_ids = dict.fromkeys(e.queue_id for e in events)
        now_ms = int(time.time() * 1000)
        db.executemany("INSERT OR IGNORE INTO trace_refs (ref, queue_id, at_ms) VALUES (?, ?, ?)",
                       [(ref, q, now_ms) for ref in refs if ref for q in queue_ids])
        # Steps are kept TRACE_RETENTION_MS, as Cassandra's TTL does; swept hourly.
        if now_ms - getattr(self, "_trace_swept_ms", 0) > 3_600_000:
            self._trace_swept_ms = now_ms
            db.execute("DELETE FROM trace_events WHERE at_ms < ?", (now_ms - TRACE_RETENTION_MS,))
            db.execute("DELETE FROM trace_refs WHERE at_ms < ?", (now_ms - TRACE_RETENTION_MS,))

    def _put_outbound(self, entry: OutboundEntry, expected_generation: int) -> bool:
        row = (entry.queue_id, entry.generation, entry.state, entry.envelope,
               entry.next_attempt_ms, entry.last_error, entry.updated_at_ms)
        if expected_generation == -1:
            self._conn().execute(
                "INSERT OR REPLACE INTO outbound (queue_id, generation, state, envelope,"
                " next_attempt_ms, last_error, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            return True
        return self._conn().execute(
            "UPDATE outbound SET generation = ?, state = ?, envelope = ?, next_attempt_ms = ?,"
            " last_error = ?, updated_at_ms = ? WHERE queue_id = ? AND generation = ?",
            (*row[1:], entry.queue_id, expected_generation)).rowcount == 1

    def _delete_outbound(self, queue_id: str, expected_generation: int) -> bool:
        sql, params = "DELETE FROM outbound WHERE queue_id = ?", [queue_id]
        if expected_generation != -1:
            sql += " AND generation = ?"
            params.append(expected_generation)
        with _transaction(self._conn()) as db:
            if db.execute(sql, params).rowcount != 1:
                return False
            db.execute("DELETE FROM blob_links WHERE owner = ?", (f"outbound/{queue_id}",))
        return True

    def _delete_draft(self, user_id: str, draft_id: str, expected_version: int) -> bool:
        with _transaction(self._conn()) as db:
            row = db.execute("SELECT version FROM drafts WHERE user_id = ? AND draft_id = ?",
                             (user_id, draft_id)).fetchone()
            if row is None:
                return False
            if expected_version and row[0] != expected_version:
                raise VersionConflict(f"draft {draft_id!r} is at version {row[0]},"
                                      f" not {expected_version}")
            db.execute("DELETE FROM drafts WHERE user_id = ? AND draft_id = ?", (user_id, draft_id))
        return True

    def _find_thread(self, user_id: str, rfc822_ids: list[str]) -> str | None:
        db = self._conn()
        for rfc822_id in rfc822_ids:  # the caller's order is its preference
            row = db.execute("SELECT thread_id FROM thread_ids"
                             " WHERE user_id = ? AND rfc822_message_id = ?",
                             (user_id, rfc822_id)).fetchone()
            if row is not None:
                return row[0]
        return None


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    if db.in_transaction:  # inside a group commit: its savepoint is enough
        yield db
        return
    # IMMEDIATE takes the write lock up front, so a transaction that reads
    # before it writes waits in the busy handler rather than failing with
    # SQLITE_BUSY when another process wrote in between.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _unlink_message(db: sqlite3.Connection, user_id: str, message_id: str) -> None:
    """Drops a message's blob links and uncharges the blobs no other message
    of the user links (owners `user/...` sort between `user/` and `user0`)."""
    owner = f"{user_id}/{message_id}"
    keys = [row[0] for row in db.execute("SELECT blob_key FROM blob_links WHERE owner = ?",
                                         (owner,))]
    db.execute("DELETE FROM blob_links WHERE owner = ?", (owner,))
    for key in keys:
        if db.execute("SELECT 1 FROM blob_links WHERE blob_key = ? AND owner >= ? AND owner < ?"
                      " LIMIT 1", (key, f"{user_id}/", f"{user_id}0")).fetchone() is None:
            db.execute("DELETE FROM user_blobs WHERE user_id = ? AND blob_key = ?", (user_id, key))


def _append_change(db: sqlite3.Connection, user_id: str, kind: str, message_id: str,
                   labels: set[str]) -> None:
    db.execute("INSERT INTO changes (user_id, seq, kind, message_id, labels_json, at_ms)"
               " SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ?, ? FROM changes WHERE user_id = ?",
               (user_id, kind, message_id, json.dumps(sorted(labels)), int(time.time() * 1000),
                user_id))


_DRAFT_CONTENT = ("to", "cc", "bcc", "subject", "body", "reply_to_id")
_DRAFT_SELECT = "SELECT user_id, draft_id, version, updated_at_ms, content_json FROM drafts"


def _draft_fields(d: Draft) -> dict:
    return {name: getattr(d, name) for name in Draft.__slots__}


def _draft_content(d: Draft) -> str:
    return json.dumps({name: getattr(d, name) for name in _DRAFT_CONTENT})


def _draft(row: tuple) -> Draft:
    user_id, draft_id, version, updated_at_ms, content = row
    return Draft(user_id=user_id, draft_id=draft_id, version=version,
                 updated_at_ms=updated_at_ms, **json.loads(content))


def _row(r: MessageRecord) -> tuple:
    return (r.user_id.lower(), r.message_id, r.thread_id, r.received_at_ms, r.skeleton_key,
            r.size, r.rfc822_message_id, json.dumps(r.references), r.sender, json.dumps(r.to),
            json.dumps(r.cc), r.subject, r.snippet, json.dumps(sorted(r.labels)),
            int(r.has_attachments), json.dumps([asdict(a) for a in r.attachments]),
            int(r.malformed), r.queue_id)


def _record(row: tuple) -> MessageRecord:
    (user_id, message_id, thread_id, received_at_ms, skeleton_key, size, rfc822_message_id,
     references, sender, to, cc, subject, snippet, labels, has_attachments, attachments,
     malformed, queue_id) = row
    return MessageRecord(
        user_id=user_id, message_id=message_id, thread_id=thread_id,
        received_at_ms=received_at_ms, skeleton_key=skeleton_key, size=size,
        rfc822_message_id=rfc822_message_id, references=json.loads(references), sender=sender,
        to=json.loads(to), cc=json.loads(cc), subject=subject, snippet=snippet,
        labels=set(json.loads(labels)), has_attachments=bool(has_attachments),
        attachments=[AttachmentRef(**a) for a in json.loads(attachments)],
        malformed=bool(malformed), queue_id=queue_id)
