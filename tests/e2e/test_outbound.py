"""Outbound delivery over real sockets: `mailyard` processes deliver to SMTP
receivers on other loopback addresses (127.0.0.2, ...), every DNS answer
from the instance's zone file. Messages enter through store/outbox.py's
queue_outbound, the interface submission and the API use."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from mailyard.mta.tls import self_signed_pair
from tests.e2e.harness import Client, Mailyard
from tests.e2e.outbound_support import (delivery_status, entry, message, queue, queued_ids,
                                        reports, wait_ready, wait_until)
from tests.e2e.receivers import Receiver, free_port

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
PORT = free_port()

ZONE = """
remote.test.        IN MX 10 mx.remote.test.
mx.remote.test.     IN A  127.0.0.2
other.test.         IN MX 10 mx.other.test.
mx.other.test.      IN A  127.0.0.3
; the preferred MX is down: the next one takes the mail
backup.test.        IN MX 10 down.backup.test.
backup.test.        IN MX 20 mx.remote.test.
down.backup.test.   IN A  127.0.0.9
; no MX: the domain's own address (RFC 5321 5.1)
implicit.test.      IN A  127.0.0.2
retry.test.         IN MX 10 mx.retry.test.
mx.retry.test.      IN A  127.0.0.4
bounce.test.        IN MX 10 mx.bounce.test.
mx.bounce.test.     IN A  127.0.0.5
; RFC 7505: accepts no mail
nomail.test.        IN MX 0 .
sink.test.          IN MX 10 mx.sink.test.
mx.sink.test.       IN A  127.0.0.6
"""


def settings(**outbound) -> dict:
    return {"services": ["delivery", "mailbox", "outbound"],
            "outbound": {"remote_port": PORT, "retry_schedule": ["1s", "1s", "2s"],
                         "connect_timeout": 5.0, "command_timeout": 10.0,
                         "connection_idle": 0.5, **outbound}}


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("outbound"), zone=ZONE, settings=settings())
    mailyard.add_users(ALICE, BOB, CAROL)
    service = mailyard.start("up")
    service.wait_listening("mailbox")
    wait_ready(service)
    yield mailyard, service.addresses["mailbox"]
    assert service.stop() == 0


def client(instance, user: str) -> Client:
    mailyard, address = instance
    return Client(address, mailyard.token(user))


TRICKY = (b"From: alice@example.test\r\nTo: x@remote.test\r\nSubject: byte for byte\r\n"
          b"Message-ID: <tricky@mailyard.test>\r\n\r\n"
          b".a line starting with a dot\r\n..two dots\r\n.\r\n"
          b"8-bit: \xc3\xa9t\xc3\xa9\r\n" + b"x" * 990 + b"\r\nthe end\r\n")


def test_a_message_reaches_the_remote_byte_for_byte_over_starttls(instance, tmp_path):
    mailyard, _ = instance
    cert = self_signed_pair(tmp_path, "mx.remote.test")
    with Receiver("127.0.0.2", PORT, tls_cert=cert) as remote:
        (queue_id,) = queue(mailyard, (ALICE, ["x@remote.test"], TRICKY))
        (received,) = remote.wait_for(1)
        assert received.data == TRICKY
        assert received.mail_from == ALICE and received.rcpts == ["x@remote.test"]
        assert received.tls, "STARTTLS was offered, so the message must go encrypted"
        wait_until(lambda: queue_id not in queued_ids(mailyard), 10, "the entry to go")


def test_recipients_are_grouped_per_domain_and_routed_by_mx(instance):
    mailyard, _ = instance
    rcpts = ["a@remote.test", "b@remote.test", "c@other.test", "d@backup.test",
             "e@implicit.test"]
    with Receiver("127.0.0.2", PORT) as two, Receiver("127.0.0.3", PORT) as three:
        raw = message(ALICE, ", ".join(rcpts), "grouped")
        (queue_id,) = queue(mailyard, (ALICE, rcpts, raw))
        two.wait_for(3)
        three.wait_for(1)
        wait_until(lambda: queue_id not in queued_ids(mailyard), 10, "the entry to go")
        assert sorted(tuple(m.rcpts) for m in two.messages) == [
            ("a@remote.test", "b@remote.test"), ("d@backup.test",), ("e@implicit.test",)]
        assert [m.rcpts for m in three.messages] == [["c@other.test"]]
        assert all(m.data == raw for m in two.messages + three.messages)


def test_a_deferring_receiver_gets_the_message_on_a_later_retry(instance):
    mailyard, _ = instance
    answers = lambda rcpt, tries: "451 4.7.1 Greylisted, try later" if tries <= 2 else None
    with Receiver("127.0.0.4", PORT, rcpt=answers) as remote:
        raw = message(ALICE, "x@retry.test", "retried")
        started = time.monotonic()
        (queue_id,) = queue(mailyard, (ALICE, ["x@retry.test"], raw))
        wait_until(lambda: (entry(mailyard, queue_id) or 0) and
                   entry(mailyard, queue_id).state == "deferred", 10, "a deferral")
        deferred = entry(mailyard, queue_id)
        assert "451 4.7.1 Greylisted" in deferred.last_error
        (received,) = remote.wait_for(1, timeout=30)
        assert time.monotonic() - started >= 2.0, "the schedule waits 1 s, then 1 s"
        assert received.data == raw and remote.rcpt_tries["x@retry.test"] == 3
        wait_until(lambda: queue_id not in queued_ids(mailyard), 10, "the entry to go")
        time.sleep(1.5)
        assert len(remote.messages) == 1


def test_a_refusing_receiver_produces_exactly_one_dsn(instance):
    mailyard, _ = instance
    answers = lambda rcpt, tries: "550 5.1.1 <nobody@bounce.test>: no such user" \
        if rcpt.startswith("nobody@") else None
    alice = client(instance, ALICE)
    with Receiver("127.0.0.5", PORT, rcpt=answers) as remote:
        raw = message(ALICE, "nobody@bounce.test, ok@bounce.test", "refused")
        (queue_id,) = queue(mailyard, (ALICE, ["nobody@bounce.test", "ok@bounce.test"], raw))
        (received,) = remote.wait_for(1)
        assert received.rcpts == ["ok@bounce.test"] and received.data == raw
        wait_until(lambda: reports(alice), 30, "the DSN in alice's INBOX")
        wait_until(lambda: queue_id not in queued_ids(mailyard), 10, "the entry to go")
        time.sleep(2)  # a second report would have shown up by now
        (report,) = reports(alice)
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert report["In-Reply-To"] == "<refused@mailyard.test>"
    (message_fields, recipient) = delivery_status(report)
    assert message_fields["reporting-mta"] == "dns; mx.mailyard.test"
    assert recipient["final-recipient"] == "rfc822; nobody@bounce.test"
    assert recipient["action"] == "failed" and recipient["status"] == "5.1.1"
    assert recipient["remote-mta"] == "dns; mx.bounce.test"
    assert recipient["diagnostic-code"] == "smtp; 550 5.1.1 <nobody@bounce.test>: no such user"
    headers = report.get_payload()[2].get_payload()
    assert "Subject: refused" in str(headers)
    assert "ok@bounce.test" not in report.get_payload()[0].get_content()
    assert remote.rcpt_tries["nobody@bounce.test"] == 1, "a 5xx is never retried"
    alice.close()


def test_domains_that_accept_no_mail_bounce_without_a_connection(instance):
    mailyard, _ = instance
    bob = client(instance, BOB)
    raw = message(BOB, "x@nomail.test, y@nowhere.test", "undeliverable")
    queue(mailyard, (BOB, ["x@nomail.test", "y@nowhere.test"], raw))
    wait_until(lambda: reports(bob), 30, "the DSN in bob's INBOX")
    (report,) = reports(bob)
    statuses = {g["final-recipient"]: (g["action"], g["status"])
                for g in delivery_status(report)[1:]}
    assert statuses == {"rfc822; x@nomail.test": ("failed", "5.1.10"),
                        "rfc822; y@nowhere.test": ("failed", "5.1.2")}
    bob.close()


def test_a_bounce_is_never_bounced(instance):
    mailyard, _ = instance
    answers = lambda rcpt, tries: "550 5.1.1 no such user"
    carol = client(instance, CAROL)
    with Receiver("127.0.0.5", PORT, rcpt=answers) as remote:
        raw = message("", "gone@bounce.test", "a bounce of our own")
        (queue_id,) = queue(mailyard, ("", ["gone@bounce.test"], raw), user_id=CAROL)
        wait_until(lambda: remote.rcpt_tries["gone@bounce.test"] == 1, 30, "the attempt")
        wait_until(lambda: queue_id not in queued_ids(mailyard), 10, "the entry to go")
        time.sleep(2)
    assert carol.list_all("INBOX") == [], "the null sender's failure must not make a DSN"
    carol.close()


def test_smtp_sink_receives_the_message_intact(instance):
    """Postfix's smtp-sink as an independent receiver (it writes LF line ends)."""
    if not shutil.which("smtp-sink"):
        pytest.skip("smtp-sink (Debian package postfix) is not installed")
    mailyard, _ = instance
    # smtp-sink writes as the postfix user, who cannot enter pytest's tmp_path.
    dump = Path(tempfile.mkdtemp(prefix="mailyard-sink-"))
    dump.chmod(0o777)
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-d", f"{dump}/%M.",
                             f"127.0.0.6:{PORT}", "10"])
    try:
        time.sleep(0.5)
        raw = message(ALICE, "x@sink.test", "to the sink", "Line one.\n.Line two.\n")
        (queue_id,) = queue(mailyard, (ALICE, ["x@sink.test"], raw))
        wait_until(lambda: queue_id not in queued_ids(mailyard), 30, "the delivery")
        wait_until(lambda: list(dump.iterdir()), 5, "the dump")
        (dumped,) = dump.iterdir()
        text = dumped.read_bytes()
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(dump, ignore_errors=True)
    # smtp-sink prepends its X-* fields and a Received: field, and ends with an empty line.
    body = text[text.index(b"\n\tby smtp-sink"):]
    body = body[body.index(b"\n", body.index(b"(UTC)")) + 1:]
    assert body == raw.replace(b"\r\n", b"\n") + b"\n"
    assert b"X-Mail-Args: <alice@example.test>" in text


def test_messages_to_one_destination_share_connections(tmp_path):
    mailyard = Mailyard(tmp_path, zone=ZONE, settings=settings(
        destination_concurrency=1, messages_per_connection=3, connection_idle=3.0))
    with Receiver("127.0.0.2", PORT, data_delay=0.05) as remote:
        service = mailyard.start("run", "outbound")
        try:
            wait_ready(service)
            queue(mailyard, *[(ALICE, ["x@remote.test"], message(ALICE, "x@remote.test",
                                                                f"reuse {n}"))
                              for n in range(7)])
            remote.wait_for(7)
        finally:
            service.stop()
    assert remote.max_open == 1, "destination_concurrency = 1"
    assert remote.connections == 3, "7 messages, 3 per connection"
    assert [m.connection for m in remote.messages] == [1, 1, 1, 2, 2, 2, 3]


def test_an_undeliverable_message_warns_once_then_expires_into_one_dsn(tmp_path):
    mailyard = Mailyard(tmp_path, zone=ZONE, settings=settings(
        retry_schedule=["1s"], expire_after=5.0, delay_warning_after=2.0))
    mailyard.add_users(ALICE)
    service = mailyard.start("up")
    service.wait_listening("mailbox")
    wait_ready(service)
    alice = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    answers = lambda rcpt, tries: "451 4.3.2 System not accepting network messages"
    try:
        with Receiver("127.0.0.4", PORT, rcpt=answers) as remote:
            started = time.monotonic()
            (queue_id,) = queue(mailyard, (ALICE, ["x@retry.test"],
                                           message(ALICE, "x@retry.test", "too late")))
            wait_until(lambda: len(reports(alice)) == 2, 40, "a warning and a bounce")
            elapsed = time.monotonic() - started
            wait_until(lambda: queue_id not in queued_ids(mailyard), 10, "the entry to go")
            tries = remote.rcpt_tries["x@retry.test"]
            time.sleep(2.5)
            assert remote.rcpt_tries["x@retry.test"] == tries, "retried after expiry"
            found = {r["Subject"]: r for r in reports(alice)}
    finally:
        alice.close()
        service.stop()
    assert elapsed >= 5.0 and tries >= 4, (elapsed, tries)
    assert set(found) == {"Delayed Mail (still being retried)",
                          "Undelivered Mail Returned to Sender"}
    (_, delayed) = delivery_status(found["Delayed Mail (still being retried)"])
    assert (delayed["action"], delayed["status"]) == ("delayed", "4.3.2")
    assert "will-retry-until" in delayed
    (_, failed) = delivery_status(found["Undelivered Mail Returned to Sender"])
    assert (failed["action"], failed["status"]) == ("failed", "4.3.2")
    assert failed["diagnostic-code"] == \
        "smtp; 451 4.3.2 System not accepting network messages"
