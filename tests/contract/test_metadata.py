"""MetadataStore contract: every adapter must pass these (fixtures `metadata`
and `metadata_factory`, which opens more stores on the same backend).

Every test works on fresh uuid users and domains, so it holds on a shared
server where other tests' data is present.
"""
from __future__ import annotations

import asyncio
import sqlite3
import sys
import uuid
from pathlib import Path

import pytest

from mailyard.store.errors import AlreadyExists, NotFound, StorageError, VersionConflict
from mailyard.store.metadata.base import (CHANGE_ADDED, CHANGE_DELETED, CHANGE_LABELS,
                                          OUTBOUND_DEFERRED, OUTBOUND_HELD, OUTBOUND_QUEUED,
                                          AttachmentRef, Draft, MessageRecord, MetadataStore,
                                          OutboundEntry, User)
from mailyard.store.metadata.sqlite import SqliteMetadataStore

from .conftest_ports import MetadataFactory

T0 = 1_700_000_000_000


def new_user() -> str:
    return f"u{uuid.uuid4().hex[:16]}@example.test"


def message(user_id: str, received_at_ms: int = T0, message_id: str | None = None,
            labels: set[str] | None = None, **fields) -> MessageRecord:
    message_id = message_id or uuid.uuid4().hex
    return MessageRecord(
        user_id=user_id, message_id=message_id, thread_id=fields.pop("thread_id", message_id),
        received_at_ms=received_at_ms, skeleton_key="sha256/" + "0" * 64, size=100,
        labels={"INBOX", "UNREAD"} if labels is None else labels, **fields)


def ids(records: list[MessageRecord]) -> list[str]:
    return [r.message_id for r in records]


def newest_first(records: list[MessageRecord]) -> list[str]:
    return ids(sorted(records, key=lambda r: (r.received_at_ms, r.message_id), reverse=True))


async def put_all(store: MetadataStore, records: list[MessageRecord]) -> None:
    for r in records:
        assert await store.put_message(r)


# --- domains and users -------------------------------------------------

async def test_domains_are_idempotent_and_case_insensitive(metadata: MetadataStore):
    domain = f"D{uuid.uuid4().hex[:8]}.Example.TEST"
    assert not await metadata.has_domain(domain)
    await metadata.add_domain(domain)
    await metadata.add_domain(domain.lower())
    await metadata.add_domain(domain.upper())
    assert await metadata.has_domain(domain.upper())
    assert await metadata.has_domain(domain.lower())
    assert [d for d in await metadata.list_domains() if d.lower() == domain.lower()] == [
        domain.lower()]


async def test_users_put_get_list(metadata: MetadataStore):
    address = new_user()
    assert await metadata.get_user(address) is None
    await metadata.put_user(User(address.upper(), "$argon2id$hash", 1234))
    expected = User(address, "$argon2id$hash", 1234)
    assert await metadata.get_user(address) == expected
    assert await metadata.get_user(address.upper()) == expected
    assert [u for u in await metadata.list_users() if u.address == address] == [expected]


async def test_put_user_replaces(metadata: MetadataStore):
    address = new_user()
    await metadata.put_user(User(address, "old", 1))
    await metadata.put_user(User(address, "new", 2))
    assert await metadata.get_user(address) == User(address, "new", 2)
    assert len([u for u in await metadata.list_users() if u.address == address]) == 1


# --- messages ----------------------------------------------------------

async def test_get_returns_every_field_as_put(metadata: MetadataStore):
    user = new_user()
    record = MessageRecord(
        user_id=user, message_id="m-" + uuid.uuid4().hex, thread_id="t-1",
        received_at_ms=T0 + 123, skeleton_key="sha256/" + "a" * 64, size=123_456,
        rfc822_message_id="<abc.123@mail.example>",
        references=["<root@example>", "<parent@example>"],
        sender="Zoë <zoe@example.org>", to=[user, "other@example.org"], cc=["cc@example.org"],
        subject="Réunion — «ordre du jour» 📅", snippet="Bonjour,\r\nvoici…",
        labels={"INBOX", "UNREAD", "IMPORTANT", "Work/2024"}, has_attachments=True,
        attachments=[
            AttachmentRef("1", "plan.pdf", "application/pdf", 52_000, "b" * 64,
                          "sha256/" + "c" * 64, "base64"),
            AttachmentRef("2", "", "text/plain", 0, "d" * 64, "sha256/" + "e" * 64, "7bit"),
        ],
        malformed=True, queue_id="Q123")
    assert await metadata.put_message(record)
    assert await metadata.get_message(user, record.message_id) == record


async def test_defaults_round_trip(metadata: MetadataStore):
    record = message(new_user(), labels=set())
    assert await metadata.put_message(record)
    assert await metadata.get_message(record.user_id, record.message_id) == record


async def test_user_id_is_case_insensitive(metadata: MetadataStore):
    user = new_user()
    record = message(user.upper())
    await metadata.put_message(record)
    got = await metadata.get_message(user, record.message_id)
    assert got is not None and got.user_id == user
    assert ids(await metadata.list_messages(user.upper(), "INBOX", 10)) == [record.message_id]


async def test_get_missing_is_none(metadata: MetadataStore):
    assert await metadata.get_message(new_user(), "nope") is None


async def test_replayed_put_changes_nothing(metadata: MetadataStore):
    user = new_user()
    record = message(user, rfc822_message_id=f"<{uuid.uuid4().hex}@x>")
    assert await metadata.put_message(record)
    await metadata.modify_labels(user, [record.message_id], add={"STARRED"}, remove={"UNREAD"})

    replay = message(user, message_id=record.message_id, subject="changed", thread_id="other",
                     rfc822_message_id=record.rfc822_message_id)
    assert not await metadata.put_message(replay)

    got = await metadata.get_message(user, record.message_id)
    assert got is not None
    assert got.labels == {"INBOX", "STARRED"}
    assert (got.subject, got.thread_id) == ("", record.thread_id)
    assert ids(await metadata.list_messages(user, "INBOX", 10)) == [record.message_id]
    assert await metadata.list_messages(user, "UNREAD", 10) == []
    assert await metadata.count_messages(user, "INBOX", unread_only=True) == 0
    assert await metadata.find_thread(user, [record.rfc822_message_id]) == record.thread_id


async def test_listing_is_newest_first_with_ties_by_id_descending(metadata: MetadataStore):
    user = new_user()
    records = [message(user, T0 + 5, "m2"), message(user, T0 + 9, "m1"),
               message(user, T0 + 5, "m3"), message(user, T0 + 1, "m9"),
               message(user, T0 + 5, "m0"), message(user, T0 + 9, "m5")]
    await put_all(metadata, records)
    listed = await metadata.list_messages(user, "INBOX", 100)
    assert [(r.received_at_ms - T0, r.message_id) for r in listed] == [
        (9, "m5"), (9, "m1"), (5, "m3"), (5, "m2"), (5, "m0"), (1, "m9")]
    assert listed[0] == records[5]


async def test_limit(metadata: MetadataStore):
    user = new_user()
    records = [message(user, T0 + i) for i in range(5)]
    await put_all(metadata, records)
    assert ids(await metadata.list_messages(user, "INBOX", 2)) == newest_first(records)[:2]
    assert await metadata.list_messages(user, "INBOX", 0) == []


async def test_cursor_starts_strictly_after(metadata: MetadataStore):
    user = new_user()
    records = [message(user, T0 + 5, "a"), message(user, T0 + 5, "b"), message(user, T0 + 4, "c")]
    await put_all(metadata, records)
    assert ids(await metadata.list_messages(user, "INBOX", 10, after=(T0 + 5, "b"))) == ["a", "c"]
    assert ids(await metadata.list_messages(user, "INBOX", 10, after=(T0 + 5, "a"))) == ["c"]
    assert ids(await metadata.list_messages(user, "INBOX", 10, after=(T0 + 4, "c"))) == []
    # A cursor need not name a stored message.
    assert ids(await metadata.list_messages(user, "INBOX", 10, after=(T0 + 6, ""))) == [
        "b", "a", "c"]


async def test_paging_sees_every_message_once_while_mail_arrives(metadata: MetadataStore):
    user = new_user()
    # Many ties on received_at, so page boundaries fall inside a millisecond.
    first = [message(user, T0 + i // 4, f"m{i:03}") for i in range(30)]
    await put_all(metadata, first)

    seen: list[MessageRecord] = []
    after = None
    arriving = 0
    while page := await metadata.list_messages(user, "INBOX", 7, after=after):
        seen += page
        after = (page[-1].received_at_ms, page[-1].message_id)
        arriving += 1
        await metadata.put_message(message(user, T0 + 1000 + arriving))  # newer than any page

    assert ids(seen) == newest_first(first)
    assert await metadata.count_messages(user, "INBOX") == 30 + arriving


async def test_label_filters(metadata: MetadataStore):
    user = new_user()
    inbox = message(user, T0 + 1, labels={"INBOX", "UNREAD"})
    sent = message(user, T0 + 2, labels={"SENT"})
    work = message(user, T0 + 3, labels={"INBOX", "Work"})
    await put_all(metadata, [inbox, sent, work])

    assert ids(await metadata.list_messages(user, "INBOX", 10)) == [work.message_id,
                                                                    inbox.message_id]
    assert ids(await metadata.list_messages(user, "SENT", 10)) == [sent.message_id]
    assert ids(await metadata.list_messages(user, "Work", 10)) == [work.message_id]
    assert await metadata.list_messages(user, "work", 10) == []  # labels are case-sensitive
    assert await metadata.list_messages(user, "TRASH", 10) == []


async def test_list_all_messages_ignores_labels_and_pages(metadata: MetadataStore):
    user, other = new_user(), new_user()
    records = [message(user, T0 + 3, "a", labels=set()), message(user, T0 + 3, "b"),
               message(user, T0 + 1, "c", labels={"SENT"}), message(user, T0 + 7, "d",
                                                               labels={"TRASH"})]
    await put_all(metadata, records + [message(other, T0 + 5, "x")])
    assert ids(await metadata.list_all_messages(user, 10)) == ["d", "b", "a", "c"]
    assert ids(await metadata.list_all_messages(user, 2, after=(T0 + 3, "b"))) == ["a", "c"]
    assert await metadata.list_all_messages(user, 0) == []
    assert ids(await metadata.list_all_messages(other.upper(), 10)) == ["x"]


async def test_modify_labels_moves_messages_between_listings(metadata: MetadataStore):
    user = new_user()
    a, b = message(user, T0 + 1), message(user, T0 + 2)
    await put_all(metadata, [a, b])

    changed = await metadata.modify_labels(user, [a.message_id], add={"TRASH", "Work"},
                                           remove={"INBOX"})
    assert [(r.message_id, r.labels) for r in changed] == [(a.message_id,
                                                            {"TRASH", "Work", "UNREAD"})]
    assert ids(await metadata.list_messages(user, "INBOX", 10)) == [b.message_id]
    assert ids(await metadata.list_messages(user, "TRASH", 10)) == [a.message_id]
    assert ids(await metadata.list_messages(user, "Work", 10)) == [a.message_id]
    got = await metadata.get_message(user, a.message_id)
    assert got is not None and got.labels == {"TRASH", "Work", "UNREAD"}


async def test_modify_labels_returns_the_users_messages_once_each(metadata: MetadataStore):
    user = new_user()
    a, b = message(user, T0 + 1), message(user, T0 + 2)
    await put_all(metadata, [a, b])
    changed = await metadata.modify_labels(user, [b.message_id, "missing", b.message_id,
                                                  a.message_id], add={"STARRED"}, remove=set())
    assert ids(changed) == [b.message_id, a.message_id]
    assert all(r.labels == {"INBOX", "UNREAD", "STARRED"} for r in changed)
    # Adding a label a message has and removing one it lacks change nothing.
    again = await metadata.modify_labels(user, [a.message_id], add={"INBOX"}, remove={"SPAM"})
    assert again[0].labels == {"INBOX", "UNREAD", "STARRED"}
    assert await metadata.count_messages(user, "INBOX") == 2
    assert await metadata.count_messages(user, "STARRED") == 2


async def test_modify_labels_remove_wins_over_add(metadata: MetadataStore):
    user = new_user()
    record = message(user)
    await metadata.put_message(record)
    changed = await metadata.modify_labels(user, [record.message_id], add={"SPAM", "INBOX"},
                                           remove={"INBOX"})
    assert changed[0].labels == {"SPAM", "UNREAD"}
    assert await metadata.list_messages(user, "INBOX", 10) == []
    assert ids(await metadata.list_messages(user, "SPAM", 10)) == [record.message_id]


async def test_counts_and_unread_counts(metadata: MetadataStore):
    user = new_user()
    records = [message(user, T0 + i) for i in range(5)] + [message(user, T0 + 9, labels={"SENT"})]
    await put_all(metadata, records)
    assert await metadata.count_messages(user, "INBOX") == 5
    assert await metadata.count_messages(user, "INBOX", unread_only=True) == 5

    await metadata.modify_labels(user, ids(records[:2]), add=set(), remove={"UNREAD"})
    assert await metadata.count_messages(user, "INBOX") == 5
    assert await metadata.count_messages(user, "INBOX", unread_only=True) == 3
    assert await metadata.count_messages(user, "UNREAD") == 3
    assert await metadata.count_messages(user, "SENT") == 1
    assert await metadata.count_messages(user, "SENT", unread_only=True) == 0
    assert await metadata.count_messages(user, "TRASH") == 0
    assert await metadata.count_messages(new_user(), "INBOX") == 0


# --- isolation ---------------------------------------------------------

async def test_users_are_isolated(metadata: MetadataStore):
    alice, bob = new_user(), new_user()
    mine = message(alice, T0 + 1, rfc822_message_id="<shared@x>")
    theirs = message(bob, T0 + 2, rfc822_message_id="<bobs-own@x>")
    await put_all(metadata, [mine, theirs])

    assert await metadata.get_message(alice, theirs.message_id) is None
    assert await metadata.modify_labels(alice, [theirs.message_id], add={"TRASH"},
                                        remove={"INBOX", "UNREAD"}) == []
    assert await metadata.get_message(bob, theirs.message_id) == theirs
    assert ids(await metadata.list_messages(alice, "INBOX", 10)) == [mine.message_id]
    assert ids(await metadata.list_messages(bob, "INBOX", 10)) == [theirs.message_id]
    assert await metadata.list_messages(alice, "TRASH", 10) == []
    assert await metadata.list_messages(bob, "TRASH", 10) == []
    assert await metadata.count_messages(alice, "INBOX") == 1
    assert await metadata.find_thread(alice, ["<bobs-own@x>"]) is None


async def test_same_message_id_for_two_users_are_two_messages(metadata: MetadataStore):
    alice, bob = new_user(), new_user()
    assert await metadata.put_message(message(alice, message_id="same", subject="for alice"))
    assert await metadata.put_message(message(bob, message_id="same", subject="for bob"))
    await metadata.modify_labels(bob, ["same"], add=set(), remove={"UNREAD"})
    a, b = await metadata.get_message(alice, "same"), await metadata.get_message(bob, "same")
    assert a is not None and b is not None
    assert (a.subject, a.labels) == ("for alice", {"INBOX", "UNREAD"})
    assert (b.subject, b.labels) == ("for bob", {"INBOX"})


# --- threads -----------------------------------------------------------

async def test_find_thread_by_any_message_id(metadata: MetadataStore):
    user = new_user()
    root = message(user, T0 + 1, thread_id="t-root", rfc822_message_id="<root@x>")
    reply = message(user, T0 + 2, thread_id="t-root", rfc822_message_id="<reply@x>",
                    references=["<root@x>"])
    other = message(user, T0 + 3, thread_id="t-other", rfc822_message_id="<other@x>")
    no_id = message(user, T0 + 4, thread_id="t-none")
    await put_all(metadata, [root, reply, other, no_id])

    assert await metadata.find_thread(user, ["<root@x>"]) == "t-root"
    assert await metadata.find_thread(user, ["<unknown@x>", "<reply@x>"]) == "t-root"
    assert await metadata.find_thread(user, ["<other@x>"]) == "t-other"
    # Several threads match: the first id in the caller's order wins.
    assert await metadata.find_thread(user, ["<other@x>", "<root@x>"]) == "t-other"
    assert await metadata.find_thread(user, ["<reply@x>", "<other@x>"]) == "t-root"
    assert await metadata.find_thread(user, ["<unknown@x>"]) is None
    assert await metadata.find_thread(user, [""]) is None
    # A second copy of a Message-ID (e.g. mail to oneself) does not move it.
    await metadata.put_message(message(user, T0 + 5, thread_id="t-copy",
                                       rfc822_message_id="<root@x>"))
    assert await metadata.find_thread(user, ["<root@x>"]) == "t-root"
    assert await metadata.find_thread(user, []) is None


async def test_find_thread_never_crosses_users(metadata: MetadataStore):
    alice, bob, carol = new_user(), new_user(), new_user()
    await put_all(metadata, [
        message(alice, thread_id="t-alice", rfc822_message_id="<list-post@x>"),
        message(bob, thread_id="t-bob", rfc822_message_id="<list-post@x>"),
    ])
    assert await metadata.find_thread(alice, ["<list-post@x>"]) == "t-alice"
    assert await metadata.find_thread(bob, ["<list-post@x>"]) == "t-bob"
    assert await metadata.find_thread(carol, ["<list-post@x>"]) is None


# --- blob links --------------------------------------------------------

async def test_blob_links_are_idempotent(metadata: MetadataStore):
    k1, k2 = ("sha256/" + uuid.uuid4().hex * 2 for _ in range(2))
    owner1, owner2 = f"{new_user()}/m1", f"{new_user()}/m2"
    await metadata.link_blobs(owner1, [k1, k2])
    await metadata.link_blobs(owner1, [k1, k2])
    await metadata.link_blobs(owner2, [k1])
    await metadata.link_blobs(owner2, [])
    assert await metadata.blob_owners(k1) == sorted([owner1, owner2])
    assert await metadata.blob_owners(k2) == [owner1]
    assert await metadata.blob_owners("sha256/" + uuid.uuid4().hex * 2) == []


# --- durability and sharing --------------------------------------------

async def test_data_survives_close_and_reopen(metadata_factory: MetadataFactory):
    user = new_user()
    first = await metadata_factory()
    record = message(user, rfc822_message_id="<durable@x>")
    await first.put_message(record)
    await first.modify_labels(user, [record.message_id], add=set(), remove={"UNREAD"})
    await first.put_user(User(user, "h", 1))
    await first.link_blobs(f"{user}/m", [record.skeleton_key])
    await first.close()

    second = await metadata_factory()
    record.labels = {"INBOX"}
    assert await second.get_message(user, record.message_id) == record
    assert ids(await second.list_messages(user, "INBOX", 10)) == [record.message_id]
    assert await second.find_thread(user, ["<durable@x>"]) == record.thread_id
    assert await second.get_user(user) == User(user, "h", 1)
    assert f"{user}/m" in await second.blob_owners(record.skeleton_key)
    assert not await second.put_message(record)


async def test_two_stores_on_one_backend_see_each_others_writes(metadata_factory: MetadataFactory):
    user = new_user()
    a, b = await metadata_factory(), await metadata_factory()
    record = message(user, T0)
    assert await a.put_message(record)
    assert await b.get_message(user, record.message_id) == record
    assert not await b.put_message(record)

    await b.modify_labels(user, [record.message_id], add={"STARRED"}, remove=set())
    got = await a.get_message(user, record.message_id)
    assert got is not None and got.labels == {"INBOX", "UNREAD", "STARRED"}

    # Writers in both at once: none fails, none is lost.
    batch = [message(user, T0 + 1 + i) for i in range(40)]
    results = await asyncio.gather(*(
        (a if i % 2 else b).put_message(r) for i, r in enumerate(batch)))
    assert all(results)
    assert await a.count_messages(user, "INBOX") == 41
    assert ids(await b.list_messages(user, "INBOX", 100)) == newest_first(batch + [record])


# --- sqlite only -------------------------------------------------------

async def test_sqlite_uses_wal_so_other_processes_can_read(tmp_path: Path):
    store = SqliteMetadataStore(tmp_path / "deep" / "metadata.db")
    await store.start()
    await store.close()
    await store.close()  # closing twice is harmless
    with sqlite3.connect(tmp_path / "deep" / "metadata.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_errors_become_storage_errors(tmp_path: Path):
    store = SqliteMetadataStore(tmp_path)  # a directory is no database
    with pytest.raises(StorageError):
        await store.start()
    await store.close()
    with pytest.raises(StorageError):
        await store.get_message("a@example.test", "m")


_WRITER = """
import asyncio, sys
from mailyard.store.metadata.base import MessageRecord
from mailyard.store.metadata.sqlite import SqliteMetadataStore

async def main(path, user, n):
    store = SqliteMetadataStore(path)
    await store.start()
    for i in range(n):
        assert await store.put_message(MessageRecord(
            user_id=user, message_id=f"child-{i}", thread_id="t", received_at_ms=i,
            skeleton_key="k", size=1, labels={"INBOX"}))
        if i == 0:
            print("writing", flush=True)
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_sqlite_two_processes_write_at_once(tmp_path: Path):
    path, user = tmp_path / "metadata.db", new_user()
    store = SqliteMetadataStore(path)
    await store.start()
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WRITER, str(path), user, "300",
            stdout=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        assert await child.stdout.readline() == b"writing\n"
        written = 0
        while child.returncode is None or written < 50:
            assert await store.put_message(message(user, T0 + written, f"parent-{written:04}",
                                                   labels={"INBOX"}))
            written += 1
        assert await child.wait() == 0
        assert await store.count_messages(user, "INBOX") == 300 + written
        newest = await store.list_messages(user, "INBOX", 1)
        assert ids(newest) == [f"parent-{written - 1:04}"]
    finally:
        await store.close()


# --- delete ------------------------------------------------------------

async def test_delete_messages_removes_record_listings_and_blob_links(metadata: MetadataStore):
    user, other = new_user(), new_user()
    keep, gone = message(user, T0), message(user, T0 + 1, labels={"INBOX", "UNREAD", "STARRED"})
    foreign = message(other, T0 + 2)
    await put_all(metadata, [keep, gone, foreign])
    key = "sha256/" + uuid.uuid4().hex * 2
    await metadata.link_blobs(f"{user}/{gone.message_id}", [key])
    await metadata.link_blobs(f"{user}/{keep.message_id}", [key])
    deleted = await metadata.delete_messages(
        user, [gone.message_id, foreign.message_id, "missing", gone.message_id])
    assert ids(deleted) == [gone.message_id]
    assert await metadata.get_message(user, gone.message_id) is None
    assert ids(await metadata.list_messages(user, "INBOX", 10)) == [keep.message_id]
    assert await metadata.list_messages(user, "STARRED", 10) == []
    assert await metadata.count_messages(user, "UNREAD") == 1
    assert await metadata.blob_owners(key) == [f"{user}/{keep.message_id}"]
    assert await metadata.get_message(other, foreign.message_id) is not None
    assert await metadata.delete_messages(user, [gone.message_id]) == []


# --- threads -----------------------------------------------------------

async def test_list_thread_is_oldest_first_and_per_user(metadata: MetadataStore):
    user, other = new_user(), new_user()
    thread = uuid.uuid4().hex
    records = [message(user, T0 + i, thread_id=thread) for i in (2, 0, 1)]
    await put_all(metadata, records + [message(user, T0 + 5), message(other, T0, thread_id=thread)])
    assert ids(await metadata.list_thread(user, thread)) == ids(
        sorted(records, key=lambda r: r.received_at_ms))
    assert await metadata.list_thread(new_user(), thread) == []


async def test_find_thread_by_subject_normalizes_and_respects_the_window(metadata: MetadataStore):
    user, other = new_user(), new_user()
    first = message(user, T0, subject="Quarterly   Plan")
    later = message(user, T0 + 100, subject="RE: Fwd: quarterly plan")
    await put_all(metadata, [first, message(other, T0 + 200, subject="quarterly plan",
                                            thread_id="other-thread")])
    assert await metadata.find_thread_by_subject(user, "Re: Quarterly Plan", T0) == first.thread_id
    assert await metadata.find_thread_by_subject(user, "Re: quarterly plan", T0 + 1) is None
    assert await metadata.find_thread_by_subject(user, "Re: something else", 0) is None
    assert await metadata.find_thread_by_subject(user, "Re: ", 0) is None
    assert await metadata.put_message(later)
    assert await metadata.find_thread_by_subject(user, "quarterly plan", T0 + 50) == later.thread_id


# --- user labels -------------------------------------------------------

async def test_labels_create_list_and_isolation(metadata: MetadataStore):
    user, other = new_user(), new_user()
    assert await metadata.list_labels(user) == []
    assert await metadata.create_label(user, "Work")
    assert await metadata.create_label(user, "Travel/2024")
    assert not await metadata.create_label(user, "Work")
    assert await metadata.create_label(user, "work")  # case-sensitive, like every label
    assert await metadata.list_labels(user) == ["Travel/2024", "Work", "work"]
    assert await metadata.list_labels(other) == []


async def test_rename_label_moves_messages_and_refuses_clashes(metadata: MetadataStore):
    user = new_user()
    await metadata.create_label(user, "Work")
    await metadata.create_label(user, "Home")
    tagged = message(user, T0, labels={"INBOX", "Work"})
    plain_one = message(user, T0 + 1)
    await put_all(metadata, [tagged, plain_one])
    assert await metadata.rename_label(user, "Work", "Office") == [tagged.message_id]
    assert await metadata.list_labels(user) == ["Home", "Office"]
    assert (await metadata.get_message(user, tagged.message_id)).labels == {"INBOX", "Office"}
    assert ids(await metadata.list_messages(user, "Office", 10)) == [tagged.message_id]
    assert await metadata.list_messages(user, "Work", 10) == []
    with pytest.raises(AlreadyExists):
        await metadata.rename_label(user, "Office", "Home")
    with pytest.raises(NotFound):
        await metadata.rename_label(user, "Work", "Other")
    with pytest.raises(NotFound):
        await metadata.rename_label(new_user(), "Office", "Other")
    assert await metadata.list_labels(user) == ["Home", "Office"]


async def test_delete_label_removes_it_from_messages(metadata: MetadataStore):
    user = new_user()
    await metadata.create_label(user, "Work")
    tagged = message(user, T0, labels={"INBOX", "Work"})
    await put_all(metadata, [tagged])
    assert await metadata.delete_label(user, "Work") == [tagged.message_id]
    assert await metadata.list_labels(user) == []
    assert (await metadata.get_message(user, tagged.message_id)).labels == {"INBOX"}
    assert await metadata.count_messages(user, "Work") == 0
    with pytest.raises(NotFound):
        await metadata.delete_label(user, "Work")


# --- drafts ------------------------------------------------------------

def draft(user_id: str, draft_id: str | None = None, at: int = T0, **fields) -> Draft:
    return Draft(user_id=user_id, draft_id=draft_id or uuid.uuid4().hex, updated_at_ms=at,
                 **fields)


async def test_draft_versions_refuse_stale_writes(metadata_factory: MetadataFactory):
    device_a, device_b = await metadata_factory(), await metadata_factory()
    user = new_user()
    created = await device_a.put_draft(draft(user, to=["x@example.test"], subject="hi"), 0)
    assert created.version == 1
    # The write is readable at once, from another store on the same backend too.
    assert await device_b.get_draft(user, created.draft_id) == created
    edit = draft(user, created.draft_id, T0 + 1, subject="hi there", body="text", bcc=["b@x.t"])
    updated = await device_a.put_draft(edit, 1)
    assert (updated.version, updated.subject, updated.body, updated.bcc) == (
        2, "hi there", "text", ["b@x.t"])
    with pytest.raises(VersionConflict):
        await device_b.put_draft(draft(user, created.draft_id, T0 + 2, subject="stale"), 1)
    assert (await device_b.get_draft(user, created.draft_id)).subject == "hi there"
    with pytest.raises(AlreadyExists):
        await device_a.put_draft(draft(user, created.draft_id), 0)
    with pytest.raises(NotFound):
        await device_a.put_draft(draft(user, "missing"), 3)


async def test_drafts_list_newest_first_delete_and_isolation(metadata: MetadataStore):
    user, other = new_user(), new_user()
    made = [await metadata.put_draft(draft(user, at=T0 + i), 0) for i in range(5)]
    await metadata.put_draft(draft(other, at=T0 + 10), 0)
    listed = await metadata.list_drafts(user, 3)
    assert [d.draft_id for d in listed] == [d.draft_id for d in reversed(made)][:3]
    rest = await metadata.list_drafts(user, 10, (listed[-1].updated_at_ms, listed[-1].draft_id))
    assert [d.draft_id for d in rest] == [made[1].draft_id, made[0].draft_id]
    assert await metadata.get_draft(other, made[0].draft_id) is None
    assert not await metadata.delete_draft(other, made[0].draft_id)
    with pytest.raises(VersionConflict):
        await metadata.delete_draft(user, made[0].draft_id, expected_version=2)
    assert await metadata.delete_draft(user, made[0].draft_id, expected_version=1)
    assert not await metadata.delete_draft(user, made[0].draft_id)
    assert await metadata.get_draft(user, made[0].draft_id) is None


# --- change log --------------------------------------------------------

async def test_change_log_records_every_change_in_order(metadata: MetadataStore):
    user, other = new_user(), new_user()
    assert await metadata.last_change(user) == 0
    first, second = message(user, T0), message(user, T0 + 1)
    await put_all(metadata, [first, second, message(other, T0)])
    assert not await metadata.put_message(first)  # a replay is no change
    await metadata.modify_labels(user, [first.message_id], {"STARRED"}, {"UNREAD"})
    await metadata.modify_labels(user, [first.message_id], {"STARRED"}, set())  # no-op
    await metadata.create_label(user, "Work")
    await metadata.modify_labels(user, [second.message_id], {"Work"}, set())
    await metadata.rename_label(user, "Work", "Office")
    await metadata.delete_messages(user, [second.message_id])
    changes = await metadata.list_changes(user, 0, 100)
    assert [(c.seq, c.kind, c.message_id) for c in changes] == [
        (1, CHANGE_ADDED, first.message_id), (2, CHANGE_ADDED, second.message_id),
        (3, CHANGE_LABELS, first.message_id), (4, CHANGE_LABELS, second.message_id),
        (5, CHANGE_LABELS, second.message_id), (6, CHANGE_DELETED, second.message_id)]
    assert changes[2].labels == ["INBOX", "STARRED"]
    assert changes[4].labels == ["INBOX", "Office", "UNREAD"]
    assert await metadata.last_change(user) == 6
    assert [c.seq for c in await metadata.list_changes(user, 4, 1)] == [5]
    assert await metadata.list_changes(user, 6, 10) == []
    assert [c.seq for c in await metadata.list_changes(other, 0, 10)] == [1]


async def test_change_signal_wakes_a_watcher_after_the_write(metadata: MetadataStore):
    user = new_user()
    event = metadata.changes.subscribe(user)
    try:
        assert not event.is_set()
        await metadata.put_message(message(user, T0))
        await asyncio.wait_for(event.wait(), 1)
    finally:
        metadata.changes.unsubscribe(user, event)


async def test_change_log_seq_is_gapless_across_stores(metadata_factory: MetadataFactory):
    stores = [await metadata_factory() for _ in range(3)]
    user = new_user()
    await asyncio.gather(*(s.put_message(message(user, T0 + i)) for i, s in
                           enumerate(stores * 10)))
    assert [c.seq for c in await stores[0].list_changes(user, 0, 100)] == list(range(1, 31))


# --- outbound queue ----------------------------------------------------

def outbound(queue_id: str, generation: int = 1, state: str = OUTBOUND_QUEUED,
             **fields) -> OutboundEntry:
    return OutboundEntry(queue_id=queue_id, generation=generation, state=state,
                         envelope=fields.pop("envelope", b"\x00env\xff" + queue_id.encode()),
                         next_attempt_ms=fields.pop("next_attempt_ms", T0),
                         updated_at_ms=fields.pop("updated_at_ms", T0), **fields)


async def test_outbound_entries_round_trip_and_upsert(metadata_factory: MetadataFactory):
    first, second = await metadata_factory(), await metadata_factory()
    queue_id = uuid.uuid4().hex
    assert await second.get_outbound(queue_id) is None
    entry = outbound(queue_id, last_error="451 4.7.1 try later")
    assert await first.put_outbound(entry)
    assert await second.get_outbound(queue_id) == entry  # bytes kept exactly, any store
    replaced = outbound(queue_id, generation=7, state=OUTBOUND_HELD, next_attempt_ms=T0 + 5)
    assert await first.put_outbound(replaced)
    assert await second.get_outbound(queue_id) == replaced


async def test_outbound_compare_and_set_on_generation(metadata_factory: MetadataFactory):
    worker, admin = await metadata_factory(), await metadata_factory()
    queue_id = uuid.uuid4().hex
    assert not await worker.put_outbound(outbound(queue_id, 2), expected_generation=1)
    assert await worker.get_outbound(queue_id) is None  # no entry: nothing created
    await admin.put_outbound(outbound(queue_id, 1))
    # The admin reschedules (generation 2); the worker's write for generation 1 loses.
    assert await admin.put_outbound(outbound(queue_id, 2, OUTBOUND_HELD), expected_generation=1)
    assert not await worker.put_outbound(outbound(queue_id, 2, OUTBOUND_DEFERRED),
                                         expected_generation=1)
    assert (await worker.get_outbound(queue_id)).state == OUTBOUND_HELD
    assert not await worker.delete_outbound(queue_id, expected_generation=1)
    assert await worker.get_outbound(queue_id) is not None
    assert await worker.delete_outbound(queue_id, expected_generation=2)
    assert await admin.get_outbound(queue_id) is None
    assert not await admin.delete_outbound(queue_id)


async def test_outbound_list_in_queue_id_order_with_paging(metadata: MetadataStore):
    prefix = "t" + uuid.uuid4().hex
    queue_ids = [f"{prefix}-{i:03d}" for i in range(25)]
    for queue_id in reversed(queue_ids):
        await metadata.put_outbound(outbound(queue_id))

    async def page(after: str, limit: int) -> list[str]:
        return [e.queue_id for e in await metadata.list_outbound(limit, after)
                if e.queue_id.startswith(prefix)]

    first = await page(prefix, 10)
    assert first == queue_ids[:10]
    assert await page(first[-1], 10) == queue_ids[10:20]
    assert await page(queue_ids[19], 100) == queue_ids[20:]
    assert await metadata.list_outbound(0, prefix) == []
    await metadata.delete_outbound(queue_ids[0])
    assert (await page(prefix, 1)) == [queue_ids[1]]


# --- spam filtering ----------------------------------------------------------

async def test_spam_weights_add_up_atomically_per_scope(metadata_factory: MetadataFactory):
    first, second = await metadata_factory(), await metadata_factory()
    scope, other = "t" + uuid.uuid4().hex, "t" + uuid.uuid4().hex
    features = list(range(1000, 1250))  # more than one IN (...) chunk
    assert await first.spam_weights(scope, features) == {}
    await first.add_spam_weights(scope, {f: 0.25 for f in features})
    await first.add_spam_weights(scope, {})
    # Concurrent learners in two processes: no step is lost.
    await asyncio.gather(*(store.add_spam_weights(scope, {7: 0.125, 1000: -0.5})
                           for _ in range(10) for store in (first, second)))
    weights = await second.spam_weights(scope, [7, 1000, 1001, 1249, 5])
    assert weights.keys() == {7, 1000, 1001, 1249}
    assert weights[7] == pytest.approx(2.5, abs=1e-5)
    assert weights[1000] == pytest.approx(0.25 - 10.0, abs=1e-5)
    assert weights[1249] == pytest.approx(0.25, abs=1e-6)
    assert await first.spam_weights(other, features) == {}  # scopes never mix


async def test_spam_verdicts_round_trip_per_user(metadata_factory: MetadataFactory):
    from mailyard.store.metadata.base import SpamVerdict
    first, second = await metadata_factory(), await metadata_factory()
    user, stranger, message_id = new_user(), new_user(), uuid.uuid4().hex
    assert await second.get_spam_verdict(user, message_id) is None
    verdict = SpamVerdict(user_id=user, message_id=message_id, score=7.25, spam=True,
                          tests=["GTUBE=1000.0", "MISSING_DATE=1.0"],
                          features=[3, 2 ** 21 - 1, 0], trained_as="")
    await first.put_spam_verdict(verdict)
    assert await second.get_spam_verdict(user.upper(), message_id) == verdict
    assert await second.get_spam_verdict(stranger, message_id) is None
    trained = SpamVerdict(user_id=user, message_id=message_id, score=7.25, spam=True,
                          tests=verdict.tests, features=verdict.features, trained_as="ham")
    await second.put_spam_verdict(trained)
    assert (await first.get_spam_verdict(user, message_id)).trained_as == "ham"


async def test_sender_blocklist_exact_lookup_and_listing(metadata_factory: MetadataFactory):
    first, second = await metadata_factory(), await metadata_factory()
    prefix = "t" + uuid.uuid4().hex
    entries = [f"{prefix}-{i:02d}@spam.example" for i in range(30)] + [f"{prefix}.example"]
    for entry in reversed(entries):
        assert await first.set_sender_blocked(entry.upper() if entry.endswith("7@spam.example")
                                              else entry, True)
    assert not await second.set_sender_blocked(entries[0], True)  # already there
    candidates = [f"{prefix}-99@spam.example", entries[3].upper(), f"{prefix}.example"]
    assert await second.blocked_senders(candidates) == [entries[3], f"{prefix}.example"]
    assert await second.blocked_senders([]) == []

    async def page(after: str, limit: int) -> list[str]:
        return [e for e in await second.list_blocked_senders(limit, after)
                if e.startswith(prefix)]

    assert await page(prefix, 10) == sorted(entries)[:10]
    assert await page(sorted(entries)[9], 100) == sorted(entries)[10:]
    assert await second.set_sender_blocked(entries[3], False)
    assert not await second.set_sender_blocked(entries[3], False)
    assert await first.blocked_senders([entries[3], entries[4]]) == [entries[4]]
