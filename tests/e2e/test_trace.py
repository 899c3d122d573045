"""`mailyard trace ID`: every step of a message, with times, from the
records the services leave as they act. Real processes, real sockets: mail
comes in over SMTP or the API and goes out to receivers on other loopback
addresses (tests/e2e/receivers.py), every DNS answer from the zone file."""
from __future__ import annotations

import json
import time

import pytest

from mailyard.proto import mailbox_pb2 as pb
from tests.e2e.harness import Client, Mailyard, send
from tests.e2e.outbound_support import wait_ready, wait_until
from tests.e2e.receivers import Receiver, free_port

ALICE, BOB = "alice@example.test", "bob@example.test"
PORT = free_port()
ZONE = """
sent.test.          IN MX 10 mx.sent.test.
mx.sent.test.       IN A  127.0.0.2
bounce.test.        IN MX 10 mx.bounce.test.
mx.bounce.test.     IN A  127.0.0.5
later.test.         IN MX 10 mx.later.test.
mx.later.test.      IN A  127.0.0.4
"""


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("trace"), zone=ZONE, settings={
        "outbound": {"remote_port": PORT, "retry_schedule": ["1h"], "connect_timeout": 5.0,
                     "command_timeout": 10.0, "connection_idle": 0.5}})
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    wait_ready(service)
    yield mailyard, service
    assert service.stop() == 0


def trace(mailyard: Mailyard, ref: str) -> list[dict]:
    return [json.loads(line) for line in mailyard.cli("trace", ref, "--json").splitlines()]


def steps_of(events: list[dict], queue_id: str | None = None) -> list[str]:
    return [e["step"] for e in events if queue_id is None or e["queue_id"] == queue_id]


def outbound_steps(events: list[dict]) -> list[str]:
    """Without the SENT copy's indexing, which runs beside the outbound attempt."""
    indexed = [e for e in events if e["step"] == "indexed"]
    assert all(e["user"] == ALICE for e in indexed), indexed
    return [e["step"] for e in events if e["step"] != "indexed"]


def wait_for_step(mailyard: Mailyard, ref: str, step: str, count: int = 1) -> list[dict]:
    found: list[dict] = []

    def seen() -> bool:
        nonlocal found
        try:
            found = trace(mailyard, ref)
        except RuntimeError:  # nothing recorded yet
            return False
        return steps_of(found).count(step) >= count
    wait_until(seen, 30, f"{step} in the trace of {ref}")
    return found


def api_send(instance, to: str, subject: str) -> pb.SendResponse:
    mailyard, service = instance
    client = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    try:
        raw = (f"From: {ALICE}\r\nTo: {to}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{subject.replace(' ', '.')}@mailyard.test>\r\n\r\nHello.\r\n")
        return client.call("SendMessage", pb.SendMessageRequest(raw=raw.encode()))
    finally:
        client.close()


def test_a_message_delivered_over_smtp_shows_every_step_in_order(instance):
    mailyard, service = instance
    message = (b"From: someone@example.net\r\nTo: alice@example.test\r\nSubject: traced\r\n"
               b"Message-ID: <traced.1@example.net>\r\n\r\nHello.\r\n")
    queue_id = send(service.addresses["mx"], "someone@example.net", [ALICE, BOB], message)
    events = wait_for_step(mailyard, queue_id, "indexed", count=2)
    assert steps_of(events)[:3] == ["accepted", "authenticated", "queued"]
    for user in (ALICE, BOB):  # the users' steps may interleave: the indexer runs apart
        assert [e["step"] for e in events if e.get("user") == user] == ["delivered", "indexed"]
    assert len(events) == 7
    accepted = events[0]
    assert accepted["from"] == "someone@example.net" and accepted["client_ip"] == "127.0.0.1"
    assert accepted["tls"] == "none" and accepted["helo"] == "client.example.net"
    assert events[1]["spf"] and events[1]["dmarc"] and events[1]["action"] == "accept"
    delivered = [e for e in events if e["step"] == "delivered"]
    assert sorted(e["user"] for e in delivered) == [ALICE, BOB]
    assert all("INBOX" in e["labels"] for e in delivered)
    times = [e["at"] for e in events]
    assert times == sorted(times)
    # The same steps by Message-ID (with or without <>) and by API message id.
    assert trace(mailyard, "<traced.1@example.net>") == events
    assert trace(mailyard, "traced.1@example.net") == events
    assert trace(mailyard, delivered[0]["message_id"]) == events
    text = mailyard.cli("trace", queue_id)
    assert text.startswith(queue_id) and "accepted" in text and "client_ip=127.0.0.1" in text


def test_a_message_sent_out_shows_the_attempt_and_the_remote_reply(instance):
    mailyard, _ = instance
    with Receiver("127.0.0.2", PORT) as remote:
        sent = api_send(instance, "x@sent.test", "went out")
        remote.wait_for(1)
        events = wait_for_step(mailyard, sent.queue_id, "attempt")
    assert outbound_steps(events) == ["submitted", "queued", "attempt"]
    assert events[0]["user"] == ALICE and events[0]["via"] == "api"
    attempt = events[-1]
    assert attempt["result"] == "sent" and attempt["to"] == "x@sent.test"
    assert attempt["reply"].startswith("250") and attempt["attempt"] == "1"
    assert trace(mailyard, "<went.out@mailyard.test>") == events


def test_a_bounced_message_shows_the_refusal_and_the_bounce_delivered_to_the_sender(instance):
    mailyard, _ = instance
    refuse = lambda rcpt, tries: "550 5.1.1 <nobody@bounce.test>: no such user"
    with Receiver("127.0.0.5", PORT, rcpt=refuse):
        sent = api_send(instance, "nobody@bounce.test", "bounced here")
        events = wait_for_step(mailyard, sent.queue_id, "bounced")
    attempt = next(e for e in events if e["step"] == "attempt")
    assert attempt["result"] == "bounced" and attempt["status"] == "5.1.1"
    assert attempt["reply"] == "550 5.1.1 <nobody@bounce.test>: no such user"
    bounced = next(e for e in events if e["step"] == "bounced")
    assert bounced["action"] == "failed" and bounced["to"] == ALICE
    # The report itself is traced too, up to alice's INBOX.
    report_id = bounced["report_queue_id"]
    events = wait_for_step(mailyard, sent.queue_id, "delivered")
    assert [(e["step"], e["user"]) for e in events if e["queue_id"] == report_id
            and e["step"] == "delivered"] == [("delivered", ALICE)]


def test_a_deferred_message_shows_the_temporary_failure_and_the_next_attempt(instance):
    mailyard, _ = instance
    later = lambda rcpt, tries: "451 4.7.1 Greylisted, try later"
    with Receiver("127.0.0.4", PORT, rcpt=later):
        started = time.time()
        sent = api_send(instance, "x@later.test", "deferred here")
        events = wait_for_step(mailyard, sent.queue_id, "rescheduled")
    assert outbound_steps(events) == ["submitted", "queued", "attempt", "rescheduled"]
    attempt, rescheduled = [e for e in events if e["step"] in ("attempt", "rescheduled")]
    assert attempt["result"] == "deferred" and attempt["status"] == "4.7.1"
    assert attempt["reply"] == "451 4.7.1 Greylisted, try later"
    assert rescheduled["rcpt_to"] == "x@later.test"
    next_attempt = time.mktime(time.strptime(rescheduled["next_attempt"], "%Y-%m-%dT%H:%M:%SZ"))
    assert next_attempt - time.timezone >= started + 3000  # the 1h step, not now
    assert "Greylisted" in rescheduled["last_error"]


def test_an_unknown_id_says_so(instance):
    mailyard, _ = instance
    with pytest.raises(RuntimeError, match="no message known as"):
        mailyard.cli("trace", "NOSUCHID")
