"""MetadataStore contract, message trace (`mailyard trace`): the steps of a
message by queue id, oldest first, and the other ids it is found by."""
from __future__ import annotations

import time
import uuid

import pytest

from mailyard.store.metadata.base import TRACE_RETENTION_MS, MetadataStore, TraceEvent
from mailyard.store.metadata.sqlite import SqliteMetadataStore

from .conftest_ports import MetadataFactory

T0 = int(time.time() * 1000) - 60_000  # recent: older steps are swept


def new_queue_id() -> str:
    return uuid.uuid4().hex[:12].upper()


async def test_steps_come_back_oldest_first_with_their_details(metadata: MetadataStore):
    queue_id = new_queue_id()
    delivered = TraceEvent(queue_id, T0 + 20, "delivered", "bob@example.test",
                           {"message_id": "m1", "user": "bob@example.test"})
    accepted = TraceEvent(queue_id, T0, "accepted", "",
                          {"from": "a@example.net", "client_ip": "192.0.2.1", "tls": "TLSv1.3"})
    await metadata.add_trace([delivered])
    await metadata.add_trace([accepted, TraceEvent(queue_id, T0 + 5, "queued")])
    assert await metadata.get_trace(queue_id) == [
        accepted, TraceEvent(queue_id, T0 + 5, "queued", "", {}), delivered]


async def test_equal_times_are_ordered_by_step_then_key(metadata: MetadataStore):
    queue_id = new_queue_id()
    events = [TraceEvent(queue_id, T0, "delivered", "b"),
              TraceEvent(queue_id, T0, "delivered", "a"), TraceEvent(queue_id, T0, "accepted")]
    await metadata.add_trace(events)
    assert [(e.step, e.key) for e in await metadata.get_trace(queue_id)] == [
        ("accepted", ""), ("delivered", "a"), ("delivered", "b")]


async def test_a_replayed_step_replaces_its_first_record(metadata: MetadataStore):
    queue_id = new_queue_id()
    await metadata.add_trace([TraceEvent(queue_id, T0, "delivered", "bob", {"replay": "no"})])
    await metadata.add_trace([TraceEvent(queue_id, T0 + 9, "delivered", "bob", {"replay": "yes"})])
    await metadata.add_trace([TraceEvent(queue_id, T0 + 5, "attempt", "1"),
                              TraceEvent(queue_id, T0 + 6, "attempt", "2")])
    trace = await metadata.get_trace(queue_id)
    assert [(e.step, e.key, e.detail) for e in trace] == [
        ("attempt", "1", {}), ("attempt", "2", {}), ("delivered", "bob", {"replay": "yes"})]


async def test_messages_are_found_by_their_refs_only(metadata: MetadataStore):
    first, second = new_queue_id(), new_queue_id()
    message_id, api_id = f"<{uuid.uuid4().hex}@example.test>", uuid.uuid4().hex[:20]
    await metadata.add_trace([TraceEvent(first, T0, "accepted")], refs=[message_id, api_id])
    await metadata.add_trace([TraceEvent(second, T0, "accepted")], refs=[message_id, ""])
    await metadata.add_trace([TraceEvent(second, T0 + 1, "queued")], refs=[message_id])
    assert await metadata.find_trace(message_id) == sorted([first, second])
    assert await metadata.find_trace(api_id) == [first]
    assert await metadata.find_trace(f"<{uuid.uuid4().hex}@example.test>") == []
    assert await metadata.get_trace(new_queue_id()) == []


async def test_unicode_details_survive_and_other_stores_see_them(
        metadata_factory: MetadataFactory):
    writer, reader = await metadata_factory(), await metadata_factory()
    queue_id = new_queue_id()
    detail = {"reply": "550 5.1.1 <jörg@example.test>: no such user", "empty": ""}
    await writer.add_trace([TraceEvent(queue_id, T0, "attempt", "1", detail)])
    assert (await reader.get_trace(queue_id))[0].detail == detail


async def test_steps_older_than_the_retention_are_swept(metadata: MetadataStore):
    if not isinstance(metadata, SqliteMetadataStore):
        pytest.skip("Cassandra expires them itself (the tables' default_time_to_live)")
    old, new = new_queue_id(), new_queue_id()
    now = int(time.time() * 1000)
    await metadata.add_trace([TraceEvent(old, now - TRACE_RETENTION_MS - 1000, "accepted")])
    metadata._trace_swept_ms = 0  # as if the last sweep was an hour ago
    await metadata.add_trace([TraceEvent(new, now, "accepted")])
    assert await metadata.get_trace(old) == []
    assert [e.queue_id for e in await metadata.get_trace(new)] == [new]
