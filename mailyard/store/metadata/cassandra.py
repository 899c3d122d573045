"""MetadataStore on Cassandra: the distributed adapter (storage.metadata = "cassandra").

The tables and why they have their shape: cassandra_schema. The change log,
through which every change of a user's messages goes: cassandra_changes.

The driver runs its own I/O thread; each statement is sent with execute_async
and its ResponseFuture's callbacks resolve an asyncio future through
call_soon_threadsafe, so the event loop never waits on the network. Statements
are prepared once at start. Timeouts, unavailable replicas and overloaded
nodes are retried here (the driver's own retry policy is switched off, so
there is one place that decides) with exponential backoff and full jitter;
every write is safe to repeat: fixed timestamps, upserts, and conditional
writes that carry an id recognizing their own earlier success.

Statements run at `cassandra.consistency` (LOCAL_QUORUM), conditional ones
with LOCAL_SERIAL. A change is planned from reads at that level, so its
exact counts and label sets assume reads see the last acknowledged write:
QUORUM-class levels do, ONE does not.
"""
from __future__ import annotations

import asyncio
import dataclasses
import heapq
import json
import random
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from cassandra import (ConsistencyLevel, CoordinationFailure, OperationTimedOut, ProtocolVersion,
                       Timeout, Unavailable)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.policies import (DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy,
                                FallthroughRetryPolicy, TokenAwarePolicy)
from cassandra.protocol import OverloadedErrorMessage
from cassandra.query import BatchStatement, BatchType, dict_factory

from mailyard.policy.config import CassandraConfig
from mailyard.policy.tls import client_context, warn_if_unverified
from mailyard.store.errors import AlreadyExists, NotFound, StorageError, VersionConflict
from mailyard.store.metadata.base import (CHANGE_DELETED, DELETION_DONE, DELETION_PENDING,
                                          BlobDeletion, Change, Cursor, Draft, MessageRecord,
                                          MetadataStore, OutboundEntry, SpamVerdict,
                                          TraceEvent, User, thread_subject)
from mailyard.store.metadata.cassandra_changes import (APPLY_CQL, RECORD_COLUMNS, Entry, Planner,
                                                       apply_writes, bucket_of, record_from_row)
from mailyard.store.metadata.cassandra_schema import (ALL_MAIL, BLOCKLIST_BUCKETS, LOG_BUCKET_SIZE,
                                                      SHARD_ROWS, SPAM_WEIGHT_UNIT, TABLES,
                                                      keyspace_cql, table_cql)

RETRYABLE = (OperationTimedOut, Timeout, Unavailable, NoHostAvailable, OverloadedErrorMessage,
             CoordinationFailure, ConnectionException)
ATTEMPTS = 4                 # per statement, on the errors above
CLAIM_ATTEMPTS = 50          # per change, when other processes keep claiming the user's next seq
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.02, 2.0
MAX_CLAIM = 64               # entries per conditional batch (one partition, so one mutation)
IN_FLIGHT = 128              # statements this store has outstanding at once
SPAM_IN_SIZE = 100           # features per IN read or counter batch
PAGE_SIZE = 1000             # rows per page of the few reads that page (scans, whole labels)
NO_LIMIT = 2**31 - 1         # CQL's LIMIT is a 32-bit int

# A change's planner: given the items not settled yet, each item's entry (None
# when it changes nothing) and the result its caller gets.
_Plan = Callable[[list[str], Planner], Awaitable[list[tuple[str, Entry | None, Any]]]]
_KEYSPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
_RECORD_SELECT = "SELECT " + ", ".join(RECORD_COLUMNS) + " FROM messages"
_DRAFT_CONTENT = ("to", "cc", "bcc", "subject", "body", "reply_to_id")
_DRAFT_COLUMNS = "user_id, draft_id, version, updated_at_ms, content, op_id"
_CHANGE_COLUMNS = "seq, kind, message_id, labels, at_ms, claim, effects"
_OUTBOUND_COLUMNS = ("queue_id, generation, state, envelope, next_attempt_ms, last_error,"
                     " updated_at_ms")

CQL = {
    # domains and users
    "add_domain": "INSERT INTO domains (domain) VALUES (?)",
    "has_domain": "SELECT domain FROM domains WHERE domain = ?",
    "domains": "SELECT domain FROM domains",
    "put_user": "INSERT INTO users (address, password_hash, created_at_ms) VALUES (?, ?, ?)",
    "get_user": "SELECT address, password_hash, created_at_ms FROM users WHERE address = ?",
    "users": "SELECT address, password_hash, created_at_ms FROM users",
    # messages
    "record": _RECORD_SELECT + " WHERE user_id = ? AND message_id = ?",
    "partitions": "SELECT bucket, shard FROM label_partitions WHERE user_id = ? AND label = ?",
    "page": ("SELECT received_at_ms, message_id FROM messages_by_label WHERE user_id = ?"
             " AND label = ? AND bucket = ? AND shard = ? LIMIT ?"),
    "page_after": ("SELECT received_at_ms, message_id FROM messages_by_label WHERE user_id = ?"
                   " AND label = ? AND bucket = ? AND shard = ?"
                   " AND (received_at_ms, message_id) < (?, ?) LIMIT ?"),
    "label_count": "SELECT total, unread FROM label_counts WHERE user_id = ? AND label = ?",
    "label_counts": "SELECT label, total, unread FROM label_counts WHERE user_id = ?",
    "arrivals_of": "SELECT arrivals FROM bucket_arrivals WHERE user_id = ? AND bucket = ?",
    # threads
    "thread_of": ("SELECT thread_id FROM thread_ids WHERE user_id = ?"
                  " AND rfc822_message_id = ?"),
    "thread_subject_of": ("SELECT thread_id, last_at_ms FROM thread_subjects"
                          " WHERE user_id = ? AND subject_key = ?"),
    "thread_members": ("SELECT message_id FROM messages_by_thread"
                       " WHERE user_id = ? AND thread_id = ?"),
    # user labels
    "label": "SELECT name, renamed_from FROM user_labels WHERE user_id = ? AND name = ?",
    "labels": "SELECT name FROM user_labels WHERE user_id = ?",
    "create_label": ("INSERT INTO user_labels (user_id, name, op_id, renamed_from)"
                     " VALUES (?, ?, ?, ?) IF NOT EXISTS"),
    "drop_label": "DELETE FROM user_labels WHERE user_id = ? AND name = ? IF EXISTS",
    "settle_label": ("UPDATE user_labels SET renamed_from = null WHERE user_id = ? AND name = ?"
                     " IF EXISTS"),
    # drafts
    "create_draft": (f"INSERT INTO drafts ({_DRAFT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                     " IF NOT EXISTS"),
    "update_draft": ("UPDATE drafts SET version = ?, updated_at_ms = ?, content = ?, op_id = ?"
                     " WHERE user_id = ? AND draft_id = ? IF version = ?"),
    "draft": f"SELECT {_DRAFT_COLUMNS} FROM drafts WHERE user_id = ? AND draft_id = ?",
    "draft_times": "SELECT draft_id, updated_at_ms FROM drafts WHERE user_id = ?",
    "drafts_in": f"SELECT {_DRAFT_COLUMNS} FROM drafts WHERE user_id = ? AND draft_id IN ?",
    "delete_draft": "DELETE FROM drafts WHERE user_id = ? AND draft_id = ? IF EXISTS",
    "delete_draft_at": "DELETE FROM drafts WHERE user_id = ? AND draft_id = ? IF version = ?",
    # change log
    "log_head": "SELECT bucket FROM change_heads WHERE user_id = ?",
    "set_log_head": "UPDATE change_heads USING TIMESTAMP ? SET bucket = ? WHERE user_id = ?",
    "log_last": ("SELECT seq, applied_through FROM changes WHERE user_id = ? AND bucket = ?"
                 " ORDER BY seq DESC LIMIT 1"),
    "log_since": (f"SELECT {_CHANGE_COLUMNS}, applied_through FROM changes"
                  " WHERE user_id = ? AND bucket = ? AND seq > ? LIMIT ?"),
    "claim_first": ("INSERT INTO changes (user_id, bucket, seq, kind, message_id, labels, at_ms,"
                    " claim, effects) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"),
    "claim_next": ("INSERT INTO changes (user_id, bucket, seq, kind, message_id, labels, at_ms,"
                   " claim, effects) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
    "mark_applied": ("UPDATE changes USING TIMESTAMP ? SET applied_through = ?"
                     " WHERE user_id = ? AND bucket = ?"),
    "drop_effects": "DELETE effects FROM changes WHERE user_id = ? AND bucket = ? AND seq = ?",
    # message trace
    "add_trace": ("INSERT INTO trace_events (queue_id, step, event_key, at_ms, detail)"
                  " VALUES (?, ?, ?, ?, ?)"),
    "add_trace_ref": "INSERT INTO trace_refs (ref, queue_id) VALUES (?, ?)",
    "trace": "SELECT queue_id, step, event_key, at_ms, detail FROM trace_events WHERE queue_id = ?",
    "trace_ref": "SELECT queue_id FROM trace_refs WHERE ref = ?",
    # outbound queue
    "put_outbound": (f"INSERT INTO outbound ({_OUTBOUND_COLUMNS}, op_id)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
    "swap_outbound": ("UPDATE outbound SET generation = ?, state = ?, envelope = ?,"
                      " next_attempt_ms = ?, last_error = ?, updated_at_ms = ?, op_id = ?"
                      " WHERE queue_id = ? IF generation = ?"),
    "outbound": f"SELECT {_OUTBOUND_COLUMNS}, op_id FROM outbound WHERE queue_id = ?",
    "outbound_all": f"SELECT {_OUTBOUND_COLUMNS} FROM outbound",
    "delete_outbound": "DELETE FROM outbound WHERE queue_id = ? IF EXISTS",
    "delete_outbound_at": "DELETE FROM outbound WHERE queue_id = ? IF generation = ?",
    # blob links
    "link": "INSERT INTO blob_links (blob_key, owner) VALUES (?, ?)",
    "link_owner": "INSERT INTO blob_links_by_owner (owner, blob_key) VALUES (?, ?)",
    "owners": "SELECT owner FROM blob_links WHERE blob_key = ?",
    "owner_keys": "SELECT blob_key FROM blob_links_by_owner WHERE owner = ?",
    "unlink": "DELETE FROM blob_links USING TIMESTAMP ? WHERE blob_key = ? AND owner = ?",
    "unlink_owner": "DELETE FROM blob_links_by_owner USING TIMESTAMP ? WHERE owner = ?",
    "drop_link": "DELETE FROM blob_links WHERE blob_key = ? AND owner = ?",
    "drop_owner_link": "DELETE FROM blob_links_by_owner WHERE owner = ? AND blob_key = ?",
    "owners_between": ("SELECT owner FROM blob_links WHERE blob_key = ? AND owner >= ?"
                       " AND owner < ? LIMIT 1"),
    # blob deletions: every write conditional, so claims are atomic
    "claim_deletion": ("INSERT INTO blob_deletions (blob_key, state, at_ms) VALUES (?, ?, ?)"
                       " IF NOT EXISTS"),
    "deletion_done": ("UPDATE blob_deletions SET state = ?, at_ms = ? WHERE blob_key = ?"
                      " IF EXISTS"),
    "drop_deletion": "DELETE FROM blob_deletions WHERE blob_key = ? IF state = ?",
    "deletions_in": "SELECT blob_key, state, at_ms FROM blob_deletions WHERE blob_key IN ?",
    "deletions_all": "SELECT blob_key, state, at_ms FROM blob_deletions",
    # storage usage
    "charge": "INSERT INTO user_blobs (user_id, blob_key, size) VALUES (?, ?, ?)",
    "uncharge": "DELETE FROM user_blobs WHERE user_id = ? AND blob_key = ?",
    "usage": "SELECT sum(size) AS total FROM user_blobs WHERE user_id = ?",
    # spam filtering
    "spam_weights": "SELECT feature, weight FROM spam_weights WHERE scope = ? AND feature IN ?",
    "add_spam_weight": ("UPDATE spam_weights SET weight = weight + ?"
                        " WHERE scope = ? AND feature = ?"),
    "put_spam_verdict": "INSERT INTO spam_verdicts (user_id, message_id, verdict) VALUES (?, ?, ?)",
    "spam_verdict": "SELECT verdict FROM spam_verdicts WHERE user_id = ? AND message_id = ?",
    "block_sender": "INSERT INTO blocked_senders (bucket, entry) VALUES (?, ?) IF NOT EXISTS",
    "unblock_sender": "DELETE FROM blocked_senders WHERE bucket = ? AND entry = ? IF EXISTS",
    "blocked_in": "SELECT entry FROM blocked_senders WHERE bucket = ? AND entry IN ?",
    "blocked_after": ("SELECT entry FROM blocked_senders WHERE bucket = ? AND entry > ?"
                      " LIMIT ?"),
}
assert not set(CQL) & set(APPLY_CQL), "statement names must be unique"
CQL.update(APPLY_CQL)


def _where(config: CassandraConfig) -> str:
    return "cassandra at " + ", ".join(f"{host}:{config.port}" for host in config.contact_points)


def _keyspace(name: str) -> str:
    if not _KEYSPACE.match(name):
        raise StorageError(f"cassandra keyspace {name!r} is not a valid CQL name")
    return name


RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.5, 5.0  # between attempts to reach a node that went away


def _cluster(config: CassandraConfig) -> Cluster:
    level = ConsistencyLevel.name_to_value.get(config.consistency.upper())
    if level is None:
        raise StorageError(f"cassandra.consistency {config.consistency!r} is not a consistency"
                           f" level ({', '.join(ConsistencyLevel.name_to_value)})")
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(config.local_datacenter)),
        retry_policy=FallthroughRetryPolicy(), consistency_level=level,
        serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
        request_timeout=config.request_timeout, row_factory=dict_factory)
    auth = (PlainTextAuthProvider(config.username, config.password)
            if config.username else None)
    # Protocol v5 (Cassandra 4.0 and later) without the driver's noisy
    # negotiation down from its newest beta version.
    tls = None
    if config.tls.enabled:  # client_encryption_options on the nodes
        warn_if_unverified(config.tls, f"cassandra {','.join(config.contact_points)}")
        tls = client_context(config.tls, "cassandra.tls")
    return Cluster(list(config.contact_points), port=config.port, auth_provider=auth,
                   ssl_context=tls,
                   protocol_version=ProtocolVersion.V5,
                   execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                   connect_timeout=config.request_timeout,
                   control_connection_timeout=config.request_timeout,
                   # The driver's default waits up to 10 minutes between
                   # attempts to reach a node that was down: after a restart of
                   # a few minutes every call failed for minutes more.
                   reconnection_policy=ExponentialReconnectionPolicy(RECONNECT_FIRST_S,
                                                                     RECONNECT_MAX_S))


async def apply_schema(config: CassandraConfig) -> list[str]:
    """Creates the keyspace and the tables that are missing (`mailyard schema
    apply`); idempotent. Returns one line per object saying what it did."""
    keyspace = _keyspace(config.keyspace)

    def run() -> list[str]:
        cluster = _cluster(config)
        try:
            session = cluster.connect()
            done = []
            known = cluster.metadata.keyspaces.get(keyspace)
            session.execute(keyspace_cql(keyspace, config.local_datacenter,
                                         config.replication_factor))
            done.append(f"keyspace {keyspace}: {'exists' if known else 'created'}")
            existing = set(known.tables) if known else set()
            for name, cql in table_cql(keyspace).items():
                session.execute(cql, timeout=max(60.0, config.request_timeout))
                done.append(f"table {keyspace}.{name}: "
                            f"{'exists' if name in existing else 'created'}")
            return done
        finally:
            cluster.shutdown()

    try:
        return await asyncio.to_thread(run)
    except StorageError:
        raise
    except Exception as e:
        raise StorageError(f"{_where(config)}: applying the schema of keyspace {keyspace}:"
                           f" {e}") from e


class CassandraMetadataStore(MetadataStore):
    def __init__(self, config: CassandraConfig, *, shard_rows: int = SHARD_ROWS,
                 log_bucket_size: int = LOG_BUCKET_SIZE) -> None:
        """`shard_rows` and `log_bucket_size` are the layout's sizes; tests make
        them small to reach shards and log partitions with a few messages."""
        self._config = config
        self._keyspace = _keyspace(config.keyspace)
        self._where = f"{_where(config)} (keyspace {self._keyspace})"
        self._shard_rows, self._log_size = shard_rows, log_bucket_size
        self._cluster: Cluster | None = None
        self._session = None
        self._prepared: dict[str, Any] = {}
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._connect)
        except StorageError:
            await self.close()
            raise
        except Exception as e:
            await self.close()
            raise StorageError(f"{self._where}: cannot connect: {e}") from e

    def _connect(self) -> None:
        self._cluster = _cluster(self._config)
        session = self._cluster.connect()
        tables = self._cluster.metadata.keyspaces.get(self._keyspace)
        missing = sorted(set(TABLES) - set(tables.tables if tables else ()))
        if missing:
            raise StorageError(f"{self._where}: tables {', '.join(missing)} do not exist;"
                               " create them with `mailyard schema apply`")
        session.set_keyspace(self._keyspace)
        self._prepared = {name: session.prepare(cql) for name, cql in CQL.items()}
        self._session = session

    async def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    # --- domains -------------------------------------------------------
    async def add_domain(self, domain: str) -> None:
        await self._run("add_domain", (domain.lower(),))

    async def list_domains(self) -> list[str]:
        return sorted(row["domain"] for row in await self._run("domains", ()))

    async def has_domain(self, domain: str) -> bool:
        return bool(await self._run("has_domain", (domain.lower(),)))

    # --- users ---------------------------------------------------------
    async def put_user(self, user: User) -> None:
        await self._run("put_user", (user.address.lower(), user.password_hash, user.created_at_ms))

    async def get_user(self, address: str) -> User | None:
        rows = await self._run("get_user", (address.lower(),))
        return _user(rows[0]) if rows else None

    async def list_users(self) -> list[User]:
        # A scan of every partition: the operator's `user list` and a full
        # reindex use it, no request path does.
        return sorted((_user(row) for row in await self._run("users", ())),
                      key=lambda u: u.address)

    # --- messages ------------------------------------------------------
    async def put_message(self, record: MessageRecord) -> bool:
        record = dataclasses.replace(record, user_id=record.user_id.lower(),
                                     labels=set(record.labels))

        bucket = bucket_of(record.received_at_ms)

        async def plan(pending, planner):
            existing, thread_known, subject, arrivals = await asyncio.gather(
                self._record(record.user_id, record.message_id),
                self._thread_known(record.user_id, record.rfc822_message_id),
                self._subject_last_at(record.user_id, record.subject),
                self._run("arrivals_of", (record.user_id, bucket)))
            if existing is not None:
                return [(record.message_id, None, False)]  # a replay: keep the user's labels
            planner.arrivals[bucket] = arrivals[0]["arrivals"] if arrivals else 0
            entry = planner.added(record, _now_ms(), thread_known=thread_known,
                                  subject_last_at=subject)
            return [(record.message_id, entry, True)]

        settled = await self._change(record.user_id, [record.message_id], plan)
        return settled[record.message_id]

    async def get_message(self, user_id: str, message_id: str) -> MessageRecord | None:
        return await self._record(user_id.lower(), message_id)

    async def list_messages(self, user_id: str, label: str, limit: int,
                            after: Cursor | None = None) -> list[MessageRecord]:
        return await self._listing(user_id.lower(), label, limit, after)

    async def list_all_messages(self, user_id: str, limit: int,
                                after: Cursor | None = None) -> list[MessageRecord]:
        return await self._listing(user_id.lower(), ALL_MAIL, limit, after)

    async def count_messages(self, user_id: str, label: str, unread_only: bool = False) -> int:
        rows = await self._run("label_count", (user_id.lower(), label))
        if not rows:
            return 0
        return rows[0]["unread" if unread_only else "total"] or 0

    async def delete_messages(self, user_id: str, message_ids: list[str]) -> list[MessageRecord]:
        user_id = user_id.lower()
        ids = list(dict.fromkeys(message_ids))

        async def plan(pending, planner):
            planned = []
            for message_id, row in zip(pending, await self._rows(user_id, pending)):
                if row is None:
                    planned.append((message_id, None, None))  # missing or another user's
                    continue
                record = record_from_row(row)
                entry = planner.deleted(record, _now_ms(), row["bucket"], row["shard"])
                planned.append((message_id, entry, record))
            return planned

        settled = await self._change(user_id, ids, plan)
        return [settled[i] for i in ids if settled.get(i) is not None]

    async def modify_labels(self, user_id: str, message_ids: list[str],
                            add: set[str], remove: set[str]) -> list[MessageRecord]:
        user_id = user_id.lower()
        ids = list(dict.fromkeys(message_ids))

        async def plan(pending, planner):
            planned = []
            for message_id, row in zip(pending, await self._rows(user_id, pending)):
                if row is None:
                    planned.append((message_id, None, None))
                    continue
                record = record_from_row(row)
                labels = (record.labels | add) - remove
                entry = None
                if labels != record.labels:
                    entry = planner.relabeled(record, labels, _now_ms(), row["bucket"],
                                              row["shard"])
                planned.append((message_id, entry, dataclasses.replace(record, labels=labels)))
            return planned

        settled = await self._change(user_id, ids, plan)
        return [settled[i] for i in ids if settled.get(i) is not None]

    async def find_thread(self, user_id: str, rfc822_ids: list[str]) -> str | None:
        user_id = user_id.lower()
        wanted = [i for i in dict.fromkeys(rfc822_ids) if i]
        found = await asyncio.gather(*(self._run("thread_of", (user_id, i)) for i in wanted))
        for rows in found:  # the caller's order is its preference
            if rows:
                return rows[0]["thread_id"]
        return None

    async def list_thread(self, user_id: str, thread_id: str) -> list[MessageRecord]:
        user_id = user_id.lower()
        rows = await self._run("thread_members", (user_id, thread_id))
        return await self._records(user_id, [row["message_id"] for row in rows])

    async def find_thread_by_subject(self, user_id: str, subject: str,
                                     since_ms: int) -> str | None:
        key, _ = thread_subject(subject)
        if not key:
            return None
        rows = await self._run("thread_subject_of", (user_id.lower(), key))
        if rows and rows[0]["last_at_ms"] >= since_ms:
            return rows[0]["thread_id"]
        return None

    # --- user labels ---------------------------------------------------
    async def create_label(self, user_id: str, name: str) -> bool:
        op_id = uuid.uuid4()
        row = (await self._run("create_label", (user_id.lower(), name, op_id, None)))[0]
        return row["[applied]"] or row.get("op_id") == op_id  # our own earlier attempt

    async def list_labels(self, user_id: str) -> list[str]:
        return sorted(row["name"] for row in await self._run("labels", (user_id.lower(),)))

    async def rename_label(self, user_id: str, old: str, new: str) -> list[str]:
        user_id = user_id.lower()
        if not await self._run("label", (user_id, old)):
            raise NotFound(f"label {old!r} not found")
        row = (await self._run("create_label", (user_id, new, uuid.uuid4(), old)))[0]
        # A row naming `old` as its origin is this rename, interrupted and replayed.
        if not row["[applied]"] and row.get("renamed_from") != old:
            raise AlreadyExists(f"label {new!r} already exists")
        ids = await self._relabel(user_id, old, new)
        await self._run("drop_label", (user_id, old))
        await self._run("settle_label", (user_id, new))
        return ids

    async def delete_label(self, user_id: str, name: str) -> list[str]:
        user_id = user_id.lower()
        if not await self._run("label", (user_id, name)):
            raise NotFound(f"label {name!r} not found")
        ids = await self._relabel(user_id, name, None)
        await self._run("drop_label", (user_id, name))
        return ids

    async def _relabel(self, user_id: str, old: str, new: str | None) -> list[str]:
        """Replaces label `old` by `new` (or removes it) on every message carrying it."""
        carrying = [message_id for _, message_id in
                    await self._keys(user_id, old, limit=None, after=None)]

        async def plan(pending, planner):
            planned = []
            for message_id, row in zip(pending, await self._rows(user_id, pending)):
                record = record_from_row(row) if row is not None else None
                if record is None or old not in record.labels:
                    planned.append((message_id, None, None))
                    continue
                labels = record.labels - {old} | ({new} if new is not None else set())
                entry = planner.relabeled(record, labels, _now_ms(), row["bucket"], row["shard"])
                planned.append((message_id, entry, message_id))
            return planned

        settled = await self._change(user_id, carrying, plan)
        return [i for i in carrying if settled.get(i) is not None]

    # --- drafts --------------------------------------------------------
    async def put_draft(self, draft: Draft, expected_version: int) -> Draft:
        user_id = draft.user_id.lower()
        stored = dataclasses.replace(draft, user_id=user_id, version=expected_version + 1)
        content = json.dumps({name: getattr(stored, name) for name in _DRAFT_CONTENT})
        op_id = uuid.uuid4()
        if expected_version == 0:
            row = (await self._run("create_draft", (user_id, draft.draft_id, 1,
                                                    stored.updated_at_ms, content, op_id)))[0]
            if not row["[applied]"] and row.get("op_id") != op_id:
                raise AlreadyExists(f"draft {draft.draft_id!r} already exists")
            return stored
        row = (await self._run("update_draft", (stored.version, stored.updated_at_ms, content,
                                                op_id, user_id, draft.draft_id,
                                                expected_version)))[0]
        if row["[applied]"]:
            return stored
        current = row.get("version")
        if current is None:
            raise NotFound(f"draft {draft.draft_id!r} not found")
        if current == stored.version:  # maybe our own attempt that timed out
            mine = await self._run("draft", (user_id, draft.draft_id))
            if mine and mine[0]["op_id"] == op_id:
                return stored
        raise VersionConflict(f"draft {draft.draft_id!r} is at version {current},"
                              f" not {expected_version}")

    async def get_draft(self, user_id: str, draft_id: str) -> Draft | None:
        rows = await self._run("draft", (user_id.lower(), draft_id))
        return _draft(rows[0]) if rows else None

    async def list_drafts(self, user_id: str, limit: int,
                          after: Cursor | None = None) -> list[Draft]:
        # A user's drafts are one partition of a few hundred rows at most:
        # read their times, sort, then read the page's rows.
        if limit <= 0:
            return []
        user_id = user_id.lower()
        keys = sorted(((row["updated_at_ms"], row["draft_id"])
                       for row in await self._run("draft_times", (user_id,))), reverse=True)
        if after is not None:
            keys = [k for k in keys if k < tuple(after)]
        page = [draft_id for _, draft_id in keys[:limit]]
        if not page:
            return []
        rows = {row["draft_id"]: row for row in await self._run("drafts_in", (user_id, page))}
        return [_draft(rows[i]) for i in page if i in rows]

    async def delete_draft(self, user_id: str, draft_id: str, expected_version: int = 0) -> bool:
        user_id = user_id.lower()
        if not expected_version:
            return (await self._run("delete_draft", (user_id, draft_id)))[0]["[applied]"]
        row = (await self._run("delete_draft_at", (user_id, draft_id, expected_version)))[0]
        if row["[applied]"]:
            return True
        if row.get("version") is None:
            return False
        raise VersionConflict(f"draft {draft_id!r} is at version {row['version']},"
                              f" not {expected_version}")

    # --- change log ----------------------------------------------------
    async def list_changes(self, user_id: str, after: int, limit: int) -> list[Change]:
        user_id = user_id.lower()
        if limit <= 0:
            return []
        rows = await self._log_rows(user_id, after, limit)
        if any(row["seq"] > (row["applied_through"] or 0) for row in rows):
            # A claimed change whose writer died before applying it: apply it
            # now, so what the log shows is what the tables hold.
            async with self._user_lock(user_id):
                await self._settle(user_id)
        return [Change(row["seq"], row["kind"], row["message_id"], list(row["labels"] or []),
                       row["at_ms"]) for row in rows]

    async def last_change(self, user_id: str) -> int:
        # The last applied change: a claim still being applied is not in the
        # tables yet, and list_changes from here will show it once it is.
        _, _, applied = await self._log_tail(user_id.lower())
        return applied

    # --- message trace -------------------------------------------------
    async def add_trace(self, events: list[TraceEvent], refs: list[str] = ()) -> None:
        queue_ids = dict.fromkeys(e.queue_id for e in events)
        await asyncio.gather(
            *(self._run("add_trace", (e.queue_id, e.step, e.key, e.at_ms, json.dumps(e.detail)))
              for e in events),
            *(self._run("add_trace_ref", (ref, q)) for ref in refs if ref for q in queue_ids))

    async def get_trace(self, queue_id: str) -> list[TraceEvent]:
        rows = await self._run("trace", (queue_id,))
        return sorted((TraceEvent(row["queue_id"], row["at_ms"], row["step"], row["event_key"],
                                  json.loads(row["detail"] or "{}")) for row in rows),
                      key=lambda e: (e.at_ms, e.step, e.key))

    async def find_trace(self, ref: str) -> list[str]:
        return sorted(row["queue_id"] for row in await self._run("trace_ref", (ref,)))

    # --- outbound queue ------------------------------------------------
    async def put_outbound(self, entry: OutboundEntry, expected_generation: int = -1) -> bool:
        values = (entry.generation, entry.state, entry.envelope, entry.next_attempt_ms,
                  entry.last_error, entry.updated_at_ms)
        op_id = uuid.uuid4()
        if expected_generation == -1:
            await self._run("put_outbound", (entry.queue_id, *values, op_id))
            return True
        row = (await self._run("swap_outbound", (*values, op_id, entry.queue_id,
                                                 expected_generation)))[0]
        if row["[applied]"]:
            return True
        if row.get("generation") == entry.generation:  # maybe our own attempt that timed out
            mine = await self._run("outbound", (entry.queue_id,))
            return bool(mine) and mine[0]["op_id"] == op_id
        return False

    async def get_outbound(self, queue_id: str) -> OutboundEntry | None:
        rows = await self._run("outbound", (queue_id,))
        return _outbound(rows[0]) if rows else None

    async def list_outbound(self, limit: int, after: str = "") -> list[OutboundEntry]:
        # Every partition, in token order: sorted here (the admin's listing only).
        if limit <= 0:
            return []
        entries = sorted((_outbound(row) for row in await self._run("outbound_all", ())
                          if row["queue_id"] > after), key=lambda e: e.queue_id)
        return entries[:limit]

    async def delete_outbound(self, queue_id: str, expected_generation: int = -1) -> bool:
        if expected_generation == -1:
            deleted = (await self._run("delete_outbound", (queue_id,)))[0]["[applied]"]
        else:
            row = (await self._run("delete_outbound_at", (queue_id, expected_generation)))[0]
            deleted = row["[applied]"]
        if deleted:  # its spool blob is left to the garbage collector
            await self._unlink(f"outbound/{queue_id}", int(time.time() * 1000))
        return deleted

    # --- blob links ----------------------------------------------------
    async def link_blobs(self, owner: str, keys: list[str]) -> None:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        owner_batch = self._batch([("link_owner", (owner, key)) for key in keys])
        await asyncio.gather(self._execute(owner_batch, "link_blobs"),
                             *(self._run("link", (key, owner)) for key in keys))

    async def blob_owners(self, key: str) -> list[str]:
        return sorted(row["owner"] for row in await self._run("owners", (key,)))

    async def unlink_blobs(self, owner: str, keys: list[str]) -> None:
        keys = list(dict.fromkeys(keys))
        await asyncio.gather(*(self._run("drop_link", (key, owner)) for key in keys),
                             *(self._run("drop_owner_link", (owner, key)) for key in keys))

    # --- blob deletions ------------------------------------------------
    async def claim_blob_deletion(self, key: str, at_ms: int) -> bool:
        rows = await self._run("claim_deletion", (key, DELETION_PENDING, at_ms))
        return rows[0]["[applied]"]

    async def end_blob_deletion(self, key: str, deleted: bool, at_ms: int) -> None:
        if deleted:
            await self._run("deletion_done", (DELETION_DONE, at_ms, key))
        else:
            await self._run("drop_deletion", (key, DELETION_PENDING))

    async def blob_deletions(self, keys: list[str]) -> dict[str, BlobDeletion]:
        keys = list(dict.fromkeys(keys))
        chunks = [keys[i:i + SPAM_IN_SIZE] for i in range(0, len(keys), SPAM_IN_SIZE)]
        results = await asyncio.gather(*(self._run("deletions_in", (chunk,)) for chunk in chunks))
        return {row["blob_key"]: BlobDeletion(row["blob_key"], row["state"], row["at_ms"])
                for rows in results for row in rows}

    async def list_blob_deletions(self, limit: int, after: str = "") -> list[BlobDeletion]:
        """A scan of the whole table, which holds only claims in progress and
        recent tombstones; for the collector, never on a hot path."""
        found = sorted((BlobDeletion(row["blob_key"], row["state"], row["at_ms"])
                        for row in await self._run("deletions_all", ())
                        if row["blob_key"] > after), key=lambda d: d.key)
        return found[:limit]

    async def forget_blob_deletion(self, key: str) -> None:
        await self._run("drop_deletion", (key, DELETION_DONE))

    # --- storage usage -------------------------------------------------
    async def charge_blobs(self, user_id: str, sizes: dict[str, int]) -> None:
        user_id = user_id.lower()
        await asyncio.gather(*(self._run("charge", (user_id, key, size))
                               for key, size in sizes.items()))

    async def storage_usage(self, user_id: str) -> int:
        rows = await self._run("usage", (user_id.lower(),))
        return (rows[0]["total"] or 0) if rows else 0

    # --- spam filtering ------------------------------------------------
    async def spam_weights(self, scope: str, features: list[int]) -> dict[int, float]:
        features = list(dict.fromkeys(features))
        chunks = [features[i:i + SPAM_IN_SIZE] for i in range(0, len(features), SPAM_IN_SIZE)]
        results = await asyncio.gather(*(self._run("spam_weights", (scope, chunk))
                                         for chunk in chunks))
        return {row["feature"]: row["weight"] / SPAM_WEIGHT_UNIT
                for rows in results for row in rows}

    async def add_spam_weights(self, scope: str, deltas: dict[int, float]) -> None:
        steps = [(round(delta * SPAM_WEIGHT_UNIT), feature) for feature, delta in deltas.items()]
        steps = [(units, feature) for units, feature in steps if units]
        batches = []
        for start in range(0, len(steps), SPAM_IN_SIZE):
            batch = BatchStatement(batch_type=BatchType.COUNTER)  # one partition: the scope
            for units, feature in steps[start:start + SPAM_IN_SIZE]:
                batch.add(self._statement("add_spam_weight"), (units, scope, feature))
            batches.append(batch)
        await asyncio.gather(*(self._execute(b, "add_spam_weights") for b in batches))

    async def put_spam_verdict(self, verdict: SpamVerdict) -> None:
        verdict = dataclasses.replace(verdict, user_id=verdict.user_id.lower())
        await self._run("put_spam_verdict", (verdict.user_id, verdict.message_id,
                                             json.dumps(dataclasses.asdict(verdict))))

    async def get_spam_verdict(self, user_id: str, message_id: str) -> SpamVerdict | None:
        rows = await self._run("spam_verdict", (user_id.lower(), message_id))
        return SpamVerdict(**json.loads(rows[0]["verdict"])) if rows else None

    async def set_sender_blocked(self, entry: str, blocked: bool) -> bool:
        entry = entry.lower()
        name = "block_sender" if blocked else "unblock_sender"
        return (await self._run(name, (_blocklist_bucket(entry), entry)))[0]["[applied]"]

    async def blocked_senders(self, candidates: list[str]) -> list[str]:
        wanted = list(dict.fromkeys(c.lower() for c in candidates))
        by_bucket: dict[int, list[str]] = {}
        for entry in wanted:
            by_bucket.setdefault(_blocklist_bucket(entry), []).append(entry)
        results = await asyncio.gather(*(self._run("blocked_in", (bucket, entries))
                                         for bucket, entries in by_bucket.items()))
        found = {row["entry"] for rows in results for row in rows}
        return [c.lower() for c in candidates if c.lower() in found]

    async def list_blocked_senders(self, limit: int, after: str = "") -> list[str]:
        results = await asyncio.gather(*(self._run("blocked_after", (bucket, after, limit))
                                         for bucket in range(BLOCKLIST_BUCKETS)))
        return list(heapq.merge(*([row["entry"] for row in rows] for rows in results)))[:limit]

    # --- listing -------------------------------------------------------
    async def _listing(self, user_id: str, label: str, limit: int,
                       after: Cursor | None) -> list[MessageRecord]:
        if limit <= 0:
            return []
        keys = await self._keys(user_id, label, limit, after)
        records = await self._records(user_id, [message_id for _, message_id in keys])
        # A row whose message changed while we read is left out, not shown wrong.
        return [r for r in records if label == ALL_MAIL or label in r.labels]

    async def _keys(self, user_id: str, label: str, limit: int | None,
                    after: Cursor | None) -> list[tuple[int, str]]:
        """(received_at_ms, message_id) of the label's newest `limit` rows after
        `after` (all of them for None), newest first: bucket by bucket, the
        shards of a bucket merged."""
        buckets: dict[int, list[int]] = {}
        for row in await self._run("partitions", (user_id, label)):
            buckets.setdefault(row["bucket"], []).append(row["shard"])
        keys: list[tuple[int, str]] = []
        for bucket in sorted(buckets, reverse=True):
            if after is not None and bucket > after[0]:
                continue  # every row in it is newer than the cursor
            need = NO_LIMIT if limit is None else limit - len(keys)
            pages = await asyncio.gather(*(
                self._run("page", (user_id, label, bucket, shard, need)) if after is None else
                self._run("page_after", (user_id, label, bucket, shard, after[0], after[1], need))
                for shard in buckets[bucket]))
            merged = heapq.merge(*([(row["received_at_ms"], row["message_id"]) for row in page]
                                   for page in pages), reverse=True)
            keys.extend(merged)
            if limit is not None and len(keys) >= limit:
                return keys[:limit]
        return keys

    async def _record(self, user_id: str, message_id: str) -> MessageRecord | None:
        rows = await self._run("record", (user_id, message_id))
        return record_from_row(rows[0]) if rows else None

    async def _rows(self, user_id: str, message_ids: list[str]) -> list[dict | None]:
        found = await asyncio.gather(*(self._run("record", (user_id, i)) for i in message_ids))
        return [rows[0] if rows else None for rows in found]

    async def _records(self, user_id: str, message_ids: list[str]) -> list[MessageRecord]:
        return [record_from_row(row) for row in await self._rows(user_id, message_ids)
                if row is not None]

    async def _thread_known(self, user_id: str, rfc822_id: str) -> bool:
        return bool(rfc822_id) and bool(await self._run("thread_of", (user_id, rfc822_id)))

    async def _subject_last_at(self, user_id: str, subject: str) -> int | None:
        key, _ = thread_subject(subject)
        if not key:
            return None
        rows = await self._run("thread_subject_of", (user_id, key))
        return rows[0]["last_at_ms"] if rows else None

    # --- the change log: claim, apply, settle --------------------------
    async def _change(self, user_id: str, items: list[str], plan: _Plan) -> dict[str, Any]:
        """Runs `plan` on the items not settled yet and claims the entries it
        returns as the user's next seqs, then applies them; when another process
        claimed first, plans the rest again from what is stored now. Returns each
        item's result (the plan's third value) once it is settled."""
        settled: dict[str, Any] = {}
        async with self._user_lock(user_id):
            for attempt in range(CLAIM_ATTEMPTS):
                pending = [i for i in items if i not in settled]
                if not pending:
                    return settled
                tail = await self._settle(user_id)
                planner = Planner(await self._counts(user_id), {}, self._shard_rows)
                changes = []
                for item, entry, result in await plan(pending, planner):
                    if entry is None:
                        settled[item] = result
                    else:
                        changes.append((item, entry, result))
                claimed = await self._claim_and_apply(user_id, tail, [e for _, e, _ in changes])
                for item, _, result in changes[:claimed]:
                    settled[item] = result
                if claimed < len(changes):
                    await _backoff(attempt)
        if len(settled) == len(items):
            return settled
        raise StorageError(f"{self._where}: changing {user_id}'s mailbox: other writers kept"
                           f" claiming its change log ({CLAIM_ATTEMPTS} attempts)")

    async def _counts(self, user_id: str) -> dict[str, tuple[int, int]]:
        return {row["label"]: (row["total"] or 0, row["unread"] or 0)
                for row in await self._run("label_counts", (user_id,))}

    async def _claim_and_apply(self, user_id: str, tail: int, entries: list[Entry]) -> int:
        """Claims `entries` as seqs tail+1, tail+2, ... in conditional batches
        that stay inside one log partition, applying each batch once claimed.
        Returns how many were claimed before another writer got a seq first."""
        done = 0
        while done < len(entries):
            first = tail + done + 1
            bucket = self._log_bucket(first)
            room = self._log_end(bucket) - first + 1
            chunk = entries[done:done + min(room, MAX_CLAIM)]
            if not await self._claim(user_id, bucket, first, chunk):
                return done
            if bucket > 0 and first == self._log_end(bucket - 1) + 1:
                await self._run("set_log_head", (bucket, bucket, user_id))
            await self._apply(user_id, bucket, [(first + i, e) for i, e in enumerate(chunk)])
            done += len(chunk)
        return done

    async def _claim(self, user_id: str, bucket: int, first: int, chunk: list[Entry]) -> bool:
        claim = uuid.uuid4()
        batch = self._batch([
            ("claim_first" if i == 0 else "claim_next",
             (user_id, bucket, first + i, e.kind, e.message_id, e.labels, e.at_ms, claim,
              e.effects_json()))
            for i, e in enumerate(chunk)])
        row = (await self._execute(batch, f"claiming change {first} of {user_id}"))[0]
        # Not applied but holding our claim id: our attempt that timed out got it.
        return row["[applied]"] or row.get("claim") == claim

    async def _apply(self, user_id: str, bucket: int, entries: list[tuple[int, Entry]]) -> None:
        """Applies claimed entries (all in log partition `bucket`) and records
        that they are. Every write is timestamped with its seq, so they may go
        out at once and in any order."""
        writes = [w for seq, entry in entries for w in apply_writes(user_id, seq, entry)]
        await asyncio.gather(*(self._run(name, values) for name, values in writes),
                             *(self._unlink(f"{user_id}/{entry.message_id}", entry.at_ms, user_id)
                               for _, entry in entries if entry.kind == CHANGE_DELETED))
        last = entries[-1][0]
        await self._execute(self._batch(
            [("mark_applied", (last, last, user_id, bucket))]
            + [("drop_effects", (user_id, bucket, seq)) for seq, _ in entries]),
            f"recording changes up to {last} of {user_id} as applied")
        self.changes.notify(user_id)

    async def _unlink(self, owner: str, at_ms: int, user_id: str = "") -> None:
        """Drops a deleted message's blob links, timestamped with the deletion's
        claim, so a link written afterwards (the message delivered again) stays;
        with `user_id`, uncharges what no other message of the user links."""
        at_us = at_ms * 1000
        keys = [row["blob_key"] for row in await self._run("owner_keys", (owner,))]
        await asyncio.gather(self._run("unlink_owner", (at_us, owner)),
                             *(self._run("unlink", (at_us, key, owner)) for key in keys))
        if user_id:
            await asyncio.gather(*(self._uncharge(user_id, key) for key in keys))

    async def _uncharge(self, user_id: str, key: str) -> None:
        """Uncharges a blob once no message of the user links it (owners
        `user/...` sort between `user/` and `user0`)."""
        if not await self._run("owners_between", (key, f"{user_id}/", f"{user_id}0")):
            await self._run("uncharge", (user_id, key))

    async def _settle(self, user_id: str) -> int:
        """Applies the user's last claim if its writer did not (it died, or is
        slow: applying twice is harmless); returns the tail seq. Only the last
        claim can be unapplied: nobody claims before applying what precedes."""
        tail, bucket, applied = await self._log_tail(user_id)
        if applied < tail:
            rows = await self._run("log_since", (user_id, bucket, applied, MAX_CLAIM + 1))
            entries = [(row["seq"], Entry(row["kind"], row["message_id"], list(row["labels"] or []),
                                          row["at_ms"], json.loads(row["effects"])))
                       for row in rows if row["effects"] is not None and row["seq"] <= tail]
            if entries:
                await self._apply(user_id, bucket, entries)
        return tail

    async def _log_tail(self, user_id: str) -> tuple[int, int, int]:
        """(tail seq, its log partition, the seq applied up to there)."""
        rows = await self._run("log_head", (user_id,))
        bucket = rows[0]["bucket"] if rows and rows[0]["bucket"] is not None else 0
        while True:
            rows = await self._run("log_last", (user_id, bucket))
            if not rows:
                if bucket == 0:
                    return 0, 0, 0
                bucket -= 1  # a head written ahead of its first claim: look back
                continue
            seq, applied = rows[0]["seq"], rows[0]["applied_through"]
            if seq == self._log_end(bucket) and await self._run("log_last", (user_id, bucket + 1)):
                bucket += 1  # full, and the next one is open
                continue
            return seq, bucket, self._log_end(bucket - 1) if applied is None else applied

    async def _log_rows(self, user_id: str, after: int, limit: int) -> list[dict]:
        rows: list[dict] = []
        bucket = self._log_bucket(after + 1)
        while len(rows) < limit:
            page = await self._run("log_since", (user_id, bucket, after, limit - len(rows)))
            rows += page
            if not page or page[-1]["seq"] != self._log_end(bucket):
                break
            bucket, after = bucket + 1, page[-1]["seq"]
        return rows

    def _log_bucket(self, seq: int) -> int:
        return (seq - 1) // self._log_size

    def _log_end(self, bucket: int) -> int:
        """The last seq log partition `bucket` holds (0 before the first)."""
        return (bucket + 1) * self._log_size

    @asynccontextmanager
    async def _user_lock(self, user_id: str) -> AsyncIterator[None]:
        """Serializes this process's changes of one user, so its own writers
        do not contend for the same seq; other processes are kept in order by
        the conditional claim."""
        lock, users = self._locks.get(user_id, (asyncio.Lock(), 0))
        self._locks[user_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[user_id]
            if users == 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, users - 1)

    # --- plumbing ------------------------------------------------------
    def _batch(self, statements: Iterable[tuple[str, tuple]]) -> BatchStatement:
        """A batch of statements on one partition: applied as one mutation,
        so atomically and in isolation, with no batch log needed."""
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for name, values in statements:
            batch.add(self._statement(name), values)
        return batch

    def _statement(self, name: str):
        if self._session is None:
            raise StorageError(f"{self._where}: metadata store is not started")
        return self._prepared[name]

    async def _run(self, name: str, values: tuple) -> list[dict]:
        return await self._execute(self._statement(name).bind(values), name)

    async def _execute(self, statement, operation: str) -> list[dict]:
        """Runs a statement (every page of its result), retrying what may
        succeed on a second try; anything else is a StorageError."""
        for attempt in range(ATTEMPTS):
            try:
                async with self._in_flight:
                    return await self._send(statement)
            except RETRYABLE as e:
                if attempt == ATTEMPTS - 1:
                    raise StorageError(f"{self._where}: {operation}: {_describe(e)}"
                                       f" (after {ATTEMPTS} attempts)") from e
            except StorageError:
                raise
            except Exception as e:
                raise StorageError(f"{self._where}: {operation}: {_describe(e)}") from e
            await _backoff(attempt)
        raise AssertionError("unreachable")

    def _send(self, statement) -> asyncio.Future:
        session = self._session
        if session is None:
            raise StorageError(f"{self._where}: metadata store is not started")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        rows: list[dict] = []
        statement.fetch_size = PAGE_SIZE
        response = session.execute_async(statement)

        # These run on the driver's I/O thread.
        def page(result) -> None:
            rows.extend(result or ())  # a write has no rows
            if response.has_more_pages:
                response.start_fetching_next_page()
            else:
                _call_soon(loop, _resolve, future, rows)

        def failed(exc: BaseException) -> None:
            _call_soon(loop, _reject, future, exc)

        response.add_callbacks(page, failed)
        return future


def _blocklist_bucket(entry: str) -> int:
    return zlib.crc32(entry.encode()) % BLOCKLIST_BUCKETS


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop closed while the request was out
        pass


def _resolve(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


async def _backoff(attempt: int) -> None:
    """Exponential backoff with full jitter, so retrying writers spread out."""
    await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt)))


def _describe(e: BaseException) -> str:
    if isinstance(e, NoHostAvailable):
        return "no host answered: " + "; ".join(f"{h}: {err}" for h, err in e.errors.items())
    return f"{type(e).__name__}: {e}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _user(row: dict) -> User:
    return User(row["address"], row["password_hash"] or "", row["created_at_ms"] or 0)


def _outbound(row: dict) -> OutboundEntry:
    return OutboundEntry(queue_id=row["queue_id"], generation=row["generation"],
                         state=row["state"], envelope=bytes(row["envelope"] or b""),
                         next_attempt_ms=row["next_attempt_ms"] or 0,
                         last_error=row["last_error"] or "", updated_at_ms=row["updated_at_ms"] or 0)


def _draft(row: dict) -> Draft:
    return Draft(user_id=row["user_id"], draft_id=row["draft_id"], version=row["version"],
                 updated_at_ms=row["updated_at_ms"], **json.loads(row["content"]))
