"""What the MetadataStore contract cannot see on Cassandra: listings that span
months and shards, a change log over several partitions, a writer that dies
between claiming a change and applying it, two processes changing one
message's labels at once, and the errors an operator gets.

Uses the contract suite's keyspace on the real server of tests/cluster/.
"""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mailyard.policy.cli import to_toml
from mailyard.policy.config import CassandraConfig
from mailyard.store.errors import StorageError
from mailyard.store.metadata.base import CHANGE_ADDED, CHANGE_DELETED, CHANGE_LABELS, MessageRecord
from mailyard.store.metadata.cassandra import CassandraMetadataStore, apply_schema
from mailyard.store.metadata.cassandra_schema import TABLES, TIME_BUCKET_MS
from tests.cluster.conftest import cluster_address

KEYSPACE = "mailyard_test"  # the contract suite's
T0 = 1_700_000_000_000


@pytest.fixture
async def config() -> CassandraConfig:
    host, _, port = cluster_address("MAILYARD_CASSANDRA").rpartition(":")
    config = CassandraConfig(contact_points=[host], port=int(port), keyspace=KEYSPACE)
    await apply_schema(config)
    return config


@pytest.fixture
async def open_store(config: CassandraConfig):
    """Opens stores with a tiny layout: 3 arrivals per shard, 4 seqs per log
    partition, so a few messages reach every partition boundary."""
    opened = []

    async def open_one(**layout) -> CassandraMetadataStore:
        store = CassandraMetadataStore(config, **{"shard_rows": 3, "log_bucket_size": 4,
                                                  **layout})
        await store.start()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


def new_user() -> str:
    return f"c{uuid.uuid4().hex[:16]}@example.test"


def message(user: str, received_at_ms: int, message_id: str, labels: set[str]) -> MessageRecord:
    return MessageRecord(user_id=user, message_id=message_id, thread_id=message_id,
                         received_at_ms=received_at_ms, skeleton_key="sha256/" + "0" * 64,
                         size=10, labels=set(labels))


def newest_first(records) -> list[str]:
    return [r.message_id for r in sorted(records, key=lambda r: (r.received_at_ms, r.message_id),
                                         reverse=True)]


async def paged(list_page, size: int) -> list[str]:
    seen, after = [], None
    while page := await list_page(size, after):
        seen += [r.message_id for r in page]
        after = (page[-1].received_at_ms, page[-1].message_id)
    return seen


async def test_listings_and_counts_span_months_shards_and_log_partitions(open_store):
    store = await open_store()
    user = new_user()
    # Three months; ties within a millisecond; more arrivals per month than a shard holds.
    records = [message(user, T0 + (i % 3) * TIME_BUCKET_MS + i // 6, f"m{i:02}",
                       {"INBOX", "UNREAD"} if i % 4 else {"SENT"}) for i in range(26)]
    for r in records:
        assert await store.put_message(r)
    inbox = [r for r in records if "INBOX" in r.labels]

    async def listing(label):
        return await paged(lambda size, after: store.list_messages(user, label, size, after), 4)

    assert await listing("INBOX") == newest_first(inbox)
    assert await paged(lambda size, after: store.list_all_messages(user, size, after), 5) == (
        newest_first(records))
    assert await store.count_messages(user, "INBOX") == len(inbox)

    read = [r.message_id for r in inbox[::2]]
    await store.modify_labels(user, read, add={"Work"}, remove={"UNREAD"})
    deleted = [r.message_id for r in records[::5]]
    await store.delete_messages(user, deleted)
    live = [r for r in inbox if r.message_id not in deleted]
    assert await listing("INBOX") == newest_first(live)
    assert await listing("Work") == newest_first([r for r in live if r.message_id in read])
    assert await store.count_messages(user, "INBOX", unread_only=True) == len(
        [r for r in live if r.message_id not in read])
    assert await store.count_messages(user, "Work") == len(
        [r for r in live if r.message_id in read])

    # Renaming a label used by many messages claims their changes in several batches.
    await store.create_label(user, "Work")
    moved = await store.rename_label(user, "Work", "Done")
    assert sorted(moved) == sorted(r.message_id for r in live if r.message_id in read)
    assert await listing("Done") == newest_first([r for r in live if r.message_id in read])
    assert await listing("Work") == []

    changes = await store.list_changes(user, 0, 1000)
    expected = len(records) + len(read) + len(deleted) + len(moved)
    assert [c.seq for c in changes] == list(range(1, expected + 1))
    assert [c.kind for c in changes[:len(records)]] == [CHANGE_ADDED] * len(records)
    assert {c.kind for c in changes[len(records):]} == {CHANGE_LABELS, CHANGE_DELETED}
    assert await store.last_change(user) == expected
    # Windows that start and end inside and across log partitions of 4.
    for after, limit in ((0, 3), (3, 2), (5, 7), (expected - 1, 5), (expected, 5)):
        window = await store.list_changes(user, after, limit)
        assert [c.seq for c in window] == list(range(after + 1, min(after + limit, expected) + 1))


class Killed(Exception):
    """Stands for the process dying between a claim and its application."""


async def test_a_change_whose_writer_died_is_applied_by_the_next_one(open_store):
    dying, survivor = await open_store(), await open_store()
    user = new_user()
    first = message(user, T0, "first", {"INBOX", "UNREAD"})
    assert await survivor.put_message(first)

    async def die(*args):
        raise Killed()

    dying._apply = die
    second = message(user, T0 + 1, "second", {"INBOX", "UNREAD"})
    with pytest.raises(Killed):
        await dying.put_message(second)
    with pytest.raises(Killed):
        await dying.modify_labels(user, ["first"], add=set(), remove={"UNREAD"})
    # Claimed but not applied: the change log is where the change lives now.
    # A watcher starts from what is applied, and reading the log applies the
    # last claim, so what it shows is what is stored.
    assert await survivor.last_change(user) == 1
    changes = await survivor.list_changes(user, 0, 10)
    assert [(c.seq, c.kind, c.message_id) for c in changes] == [
        (1, CHANGE_ADDED, "first"), (2, CHANGE_ADDED, "second")]
    assert await survivor.get_message(user, "second") == second
    assert await survivor.count_messages(user, "INBOX", unread_only=True) == 2
    # The modify_labels claim failed before it was made: seq 2 had to be applied
    # first, and the dying store could not. Replayed, it applies once.
    await survivor.modify_labels(user, ["first"], add=set(), remove={"UNREAD"})

    # A replayed delivery settles a dead writer's claim too, and is no new message.
    third = message(user, T0 + 2, "third", {"INBOX"})
    with pytest.raises(Killed):
        await dying.put_message(third)
    assert not await survivor.put_message(third)
    assert [r.message_id for r in await survivor.list_messages(user, "INBOX", 10)] == [
        "third", "second", "first"]
    assert await survivor.count_messages(user, "INBOX", unread_only=True) == 1
    assert [c.seq for c in await survivor.list_changes(user, 0, 10)] == [1, 2, 3, 4]


async def test_two_stores_changing_one_message_lose_nothing(open_store):
    a, b = await open_store(), await open_store()
    user = new_user()
    await a.put_message(message(user, T0, "m", {"INBOX", "UNREAD"}))
    for i in range(8):
        await asyncio.gather(a.modify_labels(user, ["m"], add={f"A{i}"}, remove=set()),
                             b.modify_labels(user, ["m"], add={f"B{i}"}, remove=set()))
    final = await b.get_message(user, "m")
    assert final.labels == {"INBOX", "UNREAD"} | {f"{s}{i}" for s in "AB" for i in range(8)}
    changes = await a.list_changes(user, 0, 100)
    assert [c.seq for c in changes] == list(range(1, 18))
    assert set(changes[-1].labels) == final.labels  # the log ends where the record is
    for label in final.labels:
        assert await a.count_messages(user, label) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_cassandra_is_a_storage_error_naming_it(config):
    port = free_port()
    store = CassandraMetadataStore(CassandraConfig(contact_points=["127.0.0.1"], port=port,
                                                   keyspace=KEYSPACE, request_timeout=2))
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        await store.start()
    with pytest.raises(StorageError, match="not started"):
        await store.get_message("a@example.test", "m")


async def test_missing_tables_name_the_command_that_creates_them(config):
    absent = CassandraConfig(contact_points=config.contact_points, port=config.port,
                             keyspace="mailyard_never_applied")
    store = CassandraMetadataStore(absent)
    with pytest.raises(StorageError, match="mailyard schema apply"):
        await store.start()


def test_schema_apply_command_is_idempotent(tmp_path: Path):
    host, _, port = cluster_address("MAILYARD_CASSANDRA").rpartition(":")
    config = tmp_path / "mailyard.toml"
    config.write_text(to_toml({"storage": {"metadata": "cassandra"}, "cassandra": {
        "contact_points": [host], "port": int(port), "keyspace": "mailyard_cli_test"}}))

    def apply() -> list[str]:
        done = subprocess.run([sys.executable, "-m", "mailyard", "--config", str(config),
                               "--data-dir", str(tmp_path / "data"), "schema", "apply"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    first, again = apply(), apply()
    names = ["keyspace mailyard_cli_test"] + [f"table mailyard_cli_test.{t}" for t in TABLES]
    assert [line.rpartition(":")[0] for line in first] == names
    assert again == [f"{name}: exists" for name in names]
