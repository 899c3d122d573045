"""The inbound MX over real SMTP: what it accepts, refuses, and how it says so."""
from __future__ import annotations

import asyncio
import smtplib
import socket

import pytest

from mailyard.mta import inbound
from mailyard.policy.config import Config
from mailyard.proto import events_pb2
from mailyard.store.errors import StorageError
from mailyard.store.metadata.base import User
from mailyard.store.stores import Stores

ALICE = "alice@example.test"


class FailingQueue:
    """The real queue, made to fail its next publishes: a backend outage."""

    def __init__(self, queue):
        self.queue, self.failures = queue, 0

    async def publish(self, topic, key, value):
        if self.failures:
            self.failures -= 1
            raise StorageError("queue unreachable (injected)")
        return await self.queue.publish(topic, key, value)

    def __getattr__(self, name):
        return getattr(self.queue, name)


@pytest.fixture
async def mx(tmp_path):
    config = Config(data_dir=str(tmp_path), hostname="mx.example.test")
    config.mx.listen = "127.0.0.1:0"
    config.mx.max_message_size = 64 * 1024
    config.mx.max_recipients = 3
    (tmp_path / "zone.db").write_text("")  # no real DNS in tests: an empty local zone
    config.dns.zone_file = str(tmp_path / "zone.db")
    stores = Stores(config)
    metadata = await stores.metadata()
    await metadata.add_domain("example.test")
    for user in (ALICE, "bob@example.test", "carol@example.test", "dave@example.test"):
        await metadata.put_user(User(user))
    queue = FailingQueue(await stores.queue())
    stores._open["queue"] = queue
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(inbound.serve(config, stores, stop, ready.set_result))
    address = await ready
    yield address, stores, queue
    stop.set()
    await task
    await stores.close()


def smtp_session(address):
    client = smtplib.SMTP(*address, timeout=10)
    client.ehlo("client.example.net")
    return client


async def in_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


async def test_ehlo_advertises_the_extensions(mx):
    address, _, _ = mx

    def ehlo():
        with smtp_session(address) as client:
            return client.esmtp_features

    features = await in_thread(ehlo)
    for extension in ("size", "pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes"):
        assert extension in features
    assert features["size"] == str(64 * 1024)


async def test_accepted_mail_is_spooled_and_queued_before_250(mx):
    address, stores, _ = mx

    def deliver():
        with smtp_session(address) as client:
            client.mail("sender@remote.example")
            client.rcpt(ALICE)
            return client.data(b"Subject: hi\r\n\r\nhello\r\n")

    code, reply = await in_thread(deliver)
    assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as ")
    queue_id = reply.decode().rsplit(" ", 1)[-1]
    consumer = await (await stores.queue()).consumer(inbound.INBOUND_TOPIC, "test")
    (record,) = await consumer.fetch(10, timeout=1)
    envelope = events_pb2.InboundEnvelope.FromString(record.value)
    assert envelope.queue_id == queue_id and list(envelope.rcpt_to) == [ALICE]
    raw = await (await stores.blobs()).get(envelope.spool_key)
    assert raw.startswith(b"Received: from client.example.net ([127.0.0.1])\r\n")
    assert f"id {queue_id}".encode() in raw and raw.endswith(b"Subject: hi\r\n\r\nhello\r\n")
    await consumer.close()


@pytest.mark.parametrize("rcpt, code, enhanced", [
    ("nobody@example.test", 550, b"5.1.1"),
    ("someone@elsewhere.example", 550, b"5.7.1"),
    ("ALICE@EXAMPLE.TEST", 250, b"2.1.5"),
])
async def test_recipients_are_checked(mx, rcpt, code, enhanced):
    address, _, _ = mx

    def rcpt_reply():
        with smtp_session(address) as client:
            client.mail("sender@remote.example")
            return client.rcpt(rcpt)

    got_code, reply = await in_thread(rcpt_reply)
    assert got_code == code and reply.startswith(enhanced)


async def test_too_many_recipients(mx):
    address, _, _ = mx

    def replies():
        with smtp_session(address) as client:
            client.mail("sender@remote.example")
            return [client.rcpt(r)[0] for r in
                    (ALICE, "bob@example.test", "carol@example.test", "dave@example.test")]

    assert await in_thread(replies) == [250, 250, 250, 452]


async def test_oversize_mail_is_refused_with_5_3_4(mx):
    address, _, _ = mx

    def send_big():
        with smtp_session(address) as client:
            client.mail("sender@remote.example")
            client.rcpt(ALICE)
            return client.data(b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 80)

    def declared_big():
        with smtp_session(address) as client:
            return client.mail("sender@remote.example", ["SIZE=10000000"])

    code, reply = await in_thread(send_big)
    assert code == 552 and reply.startswith(b"5.3.4")
    code, reply = await in_thread(declared_big)
    assert code == 552 and reply.startswith(b"5.3.4")


async def test_storage_failure_answers_451_and_stores_nothing(mx):
    address, stores, queue = mx
    queue.failures = 1

    def deliver():
        with smtp_session(address) as client:
            client.mail("sender@remote.example")
            client.rcpt(ALICE)
            return client.data(b"Subject: retry me\r\n\r\nplease\r\n")

    code, reply = await in_thread(deliver)
    assert code == 451 and reply.startswith(b"4.3.0")
    spooled = [p for p in (stores.config.data_path / "blobs").rglob("*") if p.is_file()]
    assert spooled == [], "a refused message left its spool copy behind"
    code, _ = await in_thread(deliver)  # the sender retries once the queue is back
    assert code == 250


async def test_pipelined_transaction(mx):
    address, _, _ = mx

    def pipelined() -> bytes:
        with socket.create_connection(address, timeout=10) as sock:
            sock.recv(1024)
            sock.sendall(b"EHLO client.example.net\r\n")
            buffer = b""
            while not buffer.endswith(b"250 HELP\r\n"):
                buffer += sock.recv(4096)
            sock.sendall(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.test>\r\n"
                         b"RCPT TO:<nobody@example.test>\r\nDATA\r\n")
            replies = b""
            while replies.count(b"\r\n") < 4:
                replies += sock.recv(4096)
            sock.sendall(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            while not replies.endswith(b"221 2.0.0 Bye\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                replies += chunk
            return replies

    replies = (await in_thread(pipelined)).decode()
    lines = replies.splitlines()
    assert lines[0].startswith("250 2.1.0") and lines[1].startswith("250 2.1.5")
    assert lines[2].startswith("550 5.1.1") and lines[3].startswith("354")
    assert lines[4].startswith("250 2.0.0 Ok: queued as")
