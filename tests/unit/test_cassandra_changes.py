"""The Cassandra adapter's change entries, without a server: the counts they
carry and the writes that apply them (the cluster suite runs them for real)."""
from __future__ import annotations

from mailyard.store.metadata.base import CHANGE_ADDED, CHANGE_DELETED, MessageRecord
from mailyard.store.metadata.cassandra_changes import (APPLY_CQL, Planner, apply_writes,
                                                       bucket_of, record_from_row, record_row)
from mailyard.store.metadata.cassandra_schema import ALL_MAIL, TIME_BUCKET_MS

T0 = 1_700_000_000_000


def record(message_id: str, labels: set[str], received_at_ms: int = T0, **fields) -> MessageRecord:
    return MessageRecord(user_id="u@example.test", message_id=message_id, thread_id="t",
                         received_at_ms=received_at_ms, skeleton_key="sha256/k", size=1,
                         labels=labels, **fields)


def test_counts_follow_every_change_including_unread():
    planner = Planner({}, {})
    a = planner.added(record("a", {"INBOX", "UNREAD"}), T0, thread_known=False,
                      subject_last_at=None)
    assert a.effects["counts"] == {"INBOX": [1, 1], "UNREAD": [1, 1]}
    planner.added(record("b", {"INBOX"}), T0, thread_known=False, subject_last_at=None)
    read = planner.relabeled(record("a", {"INBOX", "UNREAD"}), {"INBOX", "Work"}, T0, 0, 0)
    # Marking read moves INBOX's unread count, drops UNREAD, adds Work.
    assert read.effects["counts"] == {"INBOX": [2, 0], "UNREAD": [0, 0], "Work": [1, 0]}
    gone = planner.deleted(record("b", {"INBOX"}), T0, 0, 0)
    assert (gone.kind, gone.labels, gone.effects["counts"]) == (CHANGE_DELETED, [],
                                                                 {"INBOX": [1, 0]})


def test_a_bucket_opens_a_new_shard_after_its_shard_rows():
    planner = Planner({}, {bucket_of(T0): 4}, shard_rows=3)
    shards = [planner.added(record(f"m{i}", set()), T0, thread_known=False,
                            subject_last_at=None).effects["record"]["shard"] for i in range(4)]
    assert shards == [1, 1, 2, 2]  # arrivals 5..8 of the bucket
    other = planner.added(record("x", set(), T0 + TIME_BUCKET_MS), T0, thread_known=False,
                          subject_last_at=None)
    assert other.effects["record"]["shard"] == 0


def test_threading_is_written_by_the_first_message_and_the_latest_subject():
    planner = Planner({}, {})
    first = planner.added(record("a", set(), rfc822_message_id="<a@x>", subject="Plan"), T0,
                          thread_known=False, subject_last_at=None)
    copy = planner.added(record("b", set(), T0 - 5, rfc822_message_id="<a@x>", subject="Re: plan"),
                         T0, thread_known=True, subject_last_at=T0)
    assert (first.effects["thread_key"], first.effects["subject_key"]) == ("<a@x>", "plan")
    assert "thread_key" not in copy.effects and "subject_key" not in copy.effects


def test_every_write_of_an_entry_carries_its_seq_as_timestamp():
    planner = Planner({}, {})
    entry = planner.added(record("a", {"INBOX", "Work"}, attachments=[]), T0,
                          thread_known=False, subject_last_at=None)
    assert entry.kind == CHANGE_ADDED
    writes = apply_writes("u@example.test", 42, entry)
    for name, values in writes:
        cql = APPLY_CQL[name]
        assert cql.count("?") == len(values), name
        # INSERT ... USING TIMESTAMP ? ends with it; UPDATE and DELETE name it first.
        assert values[-1 if cql.startswith("INSERT") else 0] == 42, name
    listed = sorted(values[1] for name, values in writes if name == "list")
    assert listed == sorted(["INBOX", "Work", ALL_MAIL])


def test_a_record_round_trips_through_its_row():
    r = record("a", {"INBOX"}, references=["<r@x>"], to=["t@x"], subject="s")
    row = record_row(r, bucket_of(r.received_at_ms), 0)
    assert record_from_row(row) == r
    # Cassandra returns empty collections as null.
    empty = record("b", set())
    row = {**record_row(empty, 0, 0), "labels": None, "refs": None, "to_addrs": None,
           "cc_addrs": None}
    assert record_from_row(row) == empty
