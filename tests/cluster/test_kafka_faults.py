"""Kafka going away: the MX answers 451 while it cannot queue, takes mail
again once Kafka is back, and nothing accepted is lost; a publish that failed
is never appended later behind the sender's back."""
from __future__ import annotations

import asyncio
import smtplib
import subprocess
import time
import uuid
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailyard.policy.config import KafkaConfig
from mailyard.store.errors import StorageError
from mailyard.store.queue.kafka import KafkaQueue
from tests.cluster.conftest import cluster_address
from tests.e2e.harness import Client, Mailyard, send, wire_form

KAFKA_SCRIPT = Path(__file__).parent / "servers" / "kafka.sh"
REQUEST_TIMEOUT = 3.0
ALICE = "alice@kafka-faults.test"
SENDER = "sender@remote.example"


@contextmanager
def kafka_stopped():
    """Stops the cluster suite's Kafka, and starts it again whatever happens."""
    subprocess.run(["bash", str(KAFKA_SCRIPT), "stop"], check=True)
    try:
        yield
    finally:
        subprocess.run(["bash", str(KAFKA_SCRIPT), "start"], check=True)


def message(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, ALICE, subject
    msg.set_content(f"{subject}\n")
    return msg.as_bytes()


def try_send(address: tuple[str, int], subject: str) -> tuple[int, bytes]:
    with smtplib.SMTP(*address, timeout=60) as smtp:
        smtp.ehlo("client.example.net")
        smtp.mail(SENDER)
        assert smtp.rcpt(ALICE)[0] == 250
        return smtp.data(wire_form(message(subject)))


def retry_until(attempt, done, within: float = 60.0):
    """The first answer of `attempt` that is `done`, trying for `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        answer = attempt()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


async def publish_when_back(queue: KafkaQueue, topic: str, value: bytes, within: float = 60.0):
    deadline = time.monotonic() + within
    while True:
        try:
            return await queue.publish(topic, b"user1", value)
        except StorageError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def test_mx_answers_451_while_kafka_is_down_and_loses_nothing(tmp_path):
    kafka = cluster_address("MAILYARD_KAFKA")
    mailyard = Mailyard(tmp_path, settings={
        "storage": {"queue": "kafka"},
        "kafka": {"bootstrap_servers": [kafka], "request_timeout": REQUEST_TIMEOUT,
                  "client_id": f"faults-{uuid.uuid4().hex[:8]}"}})
    mailyard.add_users(ALICE)
    # One process per service, as under systemd: the MX publishes, the
    # delivery worker consumes, the mailbox service lists.
    mx, delivery, api = (mailyard.start("run", name) for name in ("mx", "delivery", "mailbox"))
    try:
        mx.wait_listening("mx", timeout=60)
        api.wait_listening("mailbox", timeout=60)
        alice = Client(api.addresses["mailbox"], mailyard.token(ALICE))
        send(mx.addresses["mx"], SENDER, [ALICE], message("before the outage"))
        assert len(alice.wait_for(1)) == 1

        with kafka_stopped():
            started = time.monotonic()
            code, reply = try_send(mx.addresses["mx"], "during the outage")
            refused_after = time.monotonic() - started
            assert (code, reply[:5]) == (451, b"4.3.0"), (code, reply)
            assert refused_after < 3 * REQUEST_TIMEOUT  # an answer, not a hang

        # Kafka serves again (once it has taken back the partitions' leadership,
        # which can take a few seconds after its restart): mail is accepted
        # and delivered by the same worker, which waited out the outage.
        accepted = retry_until(lambda: try_send(mx.addresses["mx"], "after the outage"),
                               lambda answer: answer[0] != 451)
        assert accepted[0] == 250, accepted
        delivered = alice.wait_for(2)
        assert sorted(m.subject for m in delivered) == ["after the outage", "before the outage"]
        time.sleep(2)  # a refused message appended late would show up now
        assert sorted(m.subject for m in alice.list_all()) == [
            "after the outage", "before the outage"]
        alice.close()
        for service in (mx, delivery, api):
            assert service.stop() == 0, f"not stopped cleanly; see {service.log_path}"
    finally:
        mailyard.stop_all()


async def test_publish_fails_within_the_request_timeout_and_is_not_appended_later():
    kafka = cluster_address("MAILYARD_KAFKA")
    queue = KafkaQueue(KafkaConfig(bootstrap_servers=[kafka], request_timeout=REQUEST_TIMEOUT))
    await queue.start()
    try:
        topic = f"test.faults.{uuid.uuid4().hex}"
        before = await queue.publish(topic, b"user1", b"before")
        with kafka_stopped():
            started = time.monotonic()
            with pytest.raises(StorageError, match=kafka):
                await queue.publish(topic, b"user1", b"refused")
            assert time.monotonic() - started < 2 * REQUEST_TIMEOUT
        after = await publish_when_back(queue, topic, b"after")
        assert after.offset == before.offset + 1  # nothing appended in between

        consumer = await queue.consumer(topic, f"test.group.{uuid.uuid4().hex}")
        got = []
        while batch := await consumer.fetch(timeout=2):
            got += batch
        assert [r.value for r in got] == [b"before", b"after"]
    finally:
        await queue.close()


async def test_an_unreachable_kafka_is_named_in_the_error():
    cluster_address("MAILYARD_KAFKA")  # runs with the cluster suite, where aiokafka is installed
    queue = KafkaQueue(KafkaConfig(bootstrap_servers=["127.0.0.1:9"], request_timeout=1.0))
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"kafka 127\.0\.0\.1:9: connect"):
        await queue.start()
    assert time.monotonic() - started < 3
    await queue.close()


async def test_a_batch_whose_commit_failed_in_an_outage_is_handed_out_again():
    """What consume() does when Kafka goes away mid-batch: the commit fails,
    the consumer rewinds and keeps fetching; nothing is lost once Kafka is back."""
    kafka = cluster_address("MAILYARD_KAFKA")
    queue = KafkaQueue(KafkaConfig(bootstrap_servers=[kafka], request_timeout=REQUEST_TIMEOUT))
    await queue.start()
    try:
        topic, group = f"test.faults.{uuid.uuid4().hex}", f"test.group.{uuid.uuid4().hex}"
        published = [await queue.publish(topic, b"user1", b"m%d" % i) for i in range(3)]
        consumer = await queue.consumer(topic, group)
        assert await consumer.fetch(timeout=5) == published
        with kafka_stopped():
            with pytest.raises(StorageError, match=kafka):
                await consumer.commit(published)
            await consumer.rewind()
            started = time.monotonic()
            assert await consumer.fetch(timeout=0.5) == []  # an empty batch, not an error
            assert time.monotonic() - started < 2 * REQUEST_TIMEOUT

        deadline = time.monotonic() + 60
        again = []
        while len(again) < len(published) and time.monotonic() < deadline:
            again += await consumer.fetch(timeout=1)
        assert again == published
        await consumer.commit(again)
        assert await queue.lag(topic, group) == 0
    finally:
        await queue.close()


async def test_a_topic_prefix_keeps_two_installations_on_one_kafka_apart():
    """Without it, one installation's delivery workers (group "delivery" on
    mail.inbound) take the other's records and find no spool for them."""
    kafka = cluster_address("MAILYARD_KAFKA")
    tag = uuid.uuid4().hex[:8]
    queues = {name: KafkaQueue(KafkaConfig(bootstrap_servers=[kafka],
                                           request_timeout=REQUEST_TIMEOUT,
                                           topic_prefix=f"test.{tag}.{name}."))
              for name in ("ours", "theirs")}
    try:
        for name, queue in queues.items():
            await queue.start()
            await queue.publish("mail.inbound", b"user1", name.encode())
        for name, queue in queues.items():
            consumer = await queue.consumer("mail.inbound", "delivery")
            got = []
            while batch := await consumer.fetch(timeout=2):
                got += batch
            assert [r.value for r in got] == [name.encode()]
            await consumer.commit(got)
            assert await queue.lag("mail.inbound", "delivery") == 0
    finally:
        for queue in queues.values():
            await queue.close()
