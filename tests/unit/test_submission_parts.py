"""The submit path's parts without a socket: SASL parsing, message completion,
sender ownership, sending limits; and the path itself on real embedded stores,
including what a failure leaves behind (nothing that matters)."""
from __future__ import annotations

import pytest

from mailyard.mta.dkim_sign import Signer
from mailyard.mta.submission_auth import (Authenticator, parse_oauthbearer, parse_plain,
                                          parse_xoauth2)
from mailyard.mta.submit import (LOCAL_SUFFIX, SendingLimits, Submission, complete,
                                 from_addresses)
from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.proto import events_pb2
from mailyard.store.cache.memory import MemoryCache
from mailyard.store.errors import StorageError
from mailyard.store.metadata.base import User
from mailyard.store.outbox import OUTBOUND_TOPIC
from mailyard.store.spool import INBOUND_TOPIC
from mailyard.store.stores import Stores
from mailyard.store.submitter import DAILY_LIMIT, NOT_YOUR_ADDRESS, RATE_LIMITED, SubmitRefused, \
    SubmitUnavailable

ALICE, BOB = "alice@example.test", "bob@example.test"
REMOTE = "carol@remote.example"


def test_sasl_responses():
    assert parse_plain(b"\x00alice@example.test\x00secret") == (ALICE, "secret")
    assert parse_plain(b"alice@example.test\x00alice@example.test\x00pw") == (ALICE, "pw")
    assert parse_plain(b"bob@example.test\x00alice@example.test\x00pw") is None  # acting as another
    assert parse_plain(b"alice\x00pw") is None
    assert parse_xoauth2(b"user=alice@example.test\x01auth=Bearer tok.en\x01\x01") == (ALICE,
                                                                                       "tok.en")
    assert parse_xoauth2(b"user=alice@example.test\x01auth=Basic x\x01\x01") is None
    assert parse_oauthbearer(b"n,a=alice@example.test,\x01host=mx\x01port=587\x01"
                             b"auth=Bearer tok\x01\x01") == (ALICE, "tok")
    assert parse_oauthbearer(b"n,,\x01auth=Bearer tok\x01\x01") == ("", "tok")
    assert parse_oauthbearer(b"p=tls-unique,,\x01auth=Bearer tok\x01\x01") is None


def test_complete_removes_bcc_and_adds_date_and_message_id_only_when_missing():
    bare = b"From: a@x.test\r\nBcc: hidden@y.test,\r\n\tother@y.test\r\nTo: b@y.test\r\n\r\nhi\r\n"
    done = complete(bare, "mx.example.test", 0)
    assert b"Bcc" not in done and b"hidden" not in done and b"other@" not in done
    assert b"\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n" in done
    assert b"@mx.example.test>\r\n" in done and done.endswith(b"\r\n\r\nhi\r\n")
    dated = b"From: a@x.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <m@x>\r\n\r\nhi\r\n"
    assert complete(dated, "mx.example.test", 0) == dated


def test_from_addresses():
    assert from_addresses(b"From: Alice <alice@example.test>\r\n\r\n") == [ALICE]
    assert from_addresses(b"From: =?utf-8?q?A?= <a@x.test>, b@x.test\r\n\r\n") == ["a@x.test",
                                                                                   "b@x.test"]
    assert from_addresses(b"From: a@x.test\r\nFrom: b@x.test\r\n\r\n") is None
    assert from_addresses(b"To: a@x.test\r\n\r\n") is None
    assert from_addresses(b"From: undisclosed\r\n\r\n") is None


async def test_sending_limits_per_user_and_window():
    now = [7200.0]
    limits = SendingLimits(MemoryCache(), 3, 5, EventLog("test"), clock=lambda: now[0])
    assert [await limits.take_message(ALICE) for _ in range(3)] == [None] * 3
    refused = await limits.take_message(ALICE)
    assert refused.kind == RATE_LIMITED and refused.reply.startswith("450 4.7.1")
    assert refused.retry_after == 3600
    assert await limits.take_message(BOB) is None  # per user
    now[0] += 3600  # the next hour
    assert await limits.take_message(ALICE) is None
    assert await limits.take_recipients(ALICE, 5) is None
    refused = await limits.take_recipients(ALICE, 1)
    assert refused.kind == DAILY_LIMIT and refused.reply.startswith("550 5.7.1")


async def test_sending_limits_let_mail_through_when_the_cache_fails():
    class Down(MemoryCache):
        async def incr(self, *args, **kwargs):
            raise StorageError("cache down (injected)")

    limits = SendingLimits(Down(), 1, 1, EventLog("test"))
    assert [await limits.take_message(ALICE) for _ in range(3)] == [None] * 3


class FailingQueue:
    """The real queue, failing publishes to one topic: a backend outage."""

    def __init__(self, queue, topic: str):
        self.queue, self.topic, self.failing = queue, topic, False

    async def publish(self, topic, key, value):
        if self.failing and topic == self.topic:
            raise StorageError(f"{topic} unreachable (injected)")
        return await self.queue.publish(topic, key, value)

    def __getattr__(self, name):
        return getattr(self.queue, name)


@pytest.fixture
async def path(tmp_path):
    config = Config(data_dir=str(tmp_path), hostname="mx.example.test")
    config.submission.aliases = {"postmaster@example.test": ALICE}
    stores = Stores(config)
    metadata = await stores.metadata()
    await metadata.add_domain("example.test")
    for user in (ALICE, BOB):
        await metadata.put_user(User(user))
    queue = FailingQueue(await stores.queue(), INBOUND_TOPIC)
    submission = Submission(config, metadata, await stores.blobs(), queue, await stores.cache(),
                            Signer([]))
    yield submission, stores, queue
    await stores.close()


def mail(author: str = ALICE, extra: str = "") -> bytes:
    return (f"From: {author}\nTo: {BOB}, {REMOTE}\n{extra}Subject: s\n\nbody\n").encode()


async def test_send_checks_the_author_and_aliases(path):
    submission, stores, _ = path
    with pytest.raises(SubmitRefused) as err:
        await submission.send(ALICE, mail(BOB), [REMOTE])
    assert err.value.kind == NOT_YOUR_ADDRESS and err.value.reply.startswith("553 5.7.1")
    sent = await submission.send(ALICE, mail("Postmaster <postmaster@example.test>"), [REMOTE])
    assert sent.remote == [REMOTE] and sent.local == []
    with pytest.raises(SubmitRefused) as err:
        await submission.send(ALICE, mail(), ["nobody@example.test"])
    assert err.value.reply.startswith("550 5.1.1")
    assert await (await stores.metadata()).list_outbound(10) != []


async def test_local_and_remote_copies_are_different_blobs(path):
    submission, stores, _ = path
    sent = await submission.send(ALICE, mail(extra=f"Bcc: {ALICE}\n"), [BOB, REMOTE, ALICE])
    assert sorted(sent.local) == [ALICE, BOB] and sent.remote == [REMOTE]
    queue, blobs = await stores.queue(), await stores.blobs()
    inbound = await queue.consumer(INBOUND_TOPIC, "test")
    outbound = await queue.consumer(OUTBOUND_TOPIC, "test")
    (local,) = [events_pb2.InboundEnvelope.FromString(r.value) for r in await inbound.fetch(10, 1)]
    (remote,) = [events_pb2.OutboundEnvelope.FromString(r.value)
                 for r in await outbound.fetch(10, 1)]
    assert local.queue_id == sent.queue_id + LOCAL_SUFFIX and remote.queue_id == sent.queue_id
    assert local.spool_key != remote.spool_key
    # The delivery worker drops its spool after delivering: the outbound one stays.
    await blobs.delete(local.spool_key)
    raw = await blobs.get(remote.spool_key)
    assert f"id {sent.queue_id};".encode() in raw and b"Bcc" not in raw
    assert remote.user_id == ALICE and remote.mail_from == ALICE
    await inbound.close()
    await outbound.close()


async def test_a_failed_publish_leaves_no_sent_copy_and_no_outbound_entry(path):
    submission, stores, queue = path
    metadata = await stores.metadata()
    queue.failing = True
    with pytest.raises(SubmitUnavailable):
        await submission.send(ALICE, mail(), [BOB, REMOTE])
    assert await metadata.list_messages(ALICE, "SENT", 10) == []
    assert await metadata.list_outbound(10) == []
    queue.failing = False  # the client retries once the queue is back
    sent = await submission.send(ALICE, mail(), [BOB, REMOTE])
    assert [m.message_id for m in await metadata.list_messages(ALICE, "SENT", 10)] == [
        sent.sent.message_id]
    assert [e.queue_id for e in await metadata.list_outbound(10)] == [sent.queue_id]


async def test_wrong_and_unknown_logins_are_refused(tmp_path):
    from argon2 import PasswordHasher

    config = Config(data_dir=str(tmp_path))
    stores = Stores(config)
    metadata = await stores.metadata()
    await metadata.put_user(User(ALICE, PasswordHasher().hash("right")))
    await metadata.put_user(User(BOB))  # no password: token logins only
    auth = Authenticator(config, metadata, await stores.cache())
    assert await auth.password_user("Alice@Example.test", "right") == ALICE
    assert await auth.password_user(ALICE, "wrong") is None
    assert await auth.password_user("nobody@example.test", "right") is None
    assert await auth.password_user(BOB, "") is None
    assert await auth.password_user(BOB, "mailyard-decoy-password") is None
    await stores.close()

