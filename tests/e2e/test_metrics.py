"""Prometheus metrics after real traffic: scraped over HTTP, parsed with
prometheus_client's own parser, and each counter checked to have moved by
exactly what the test did. One `mailyard up` process serves them all on the
gateway port; `mailyard run` processes and extra MX processes each serve
their own on `metrics.listen` plus their offset. Also: the JSON log lines."""
from __future__ import annotations

import json
import smtplib

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import Client, Mailyard, send
from tests.e2e.outbound_support import message, queue, wait_until
from tests.e2e.receivers import Receiver, free_port

ALICE, CAROL = "alice@example.test", "carol@other.test"
REMOTE_PORT = free_port("127.0.0.4")
ZONE = """
retry.test.     IN MX 10 mx.retry.test.
mx.retry.test.  IN A  127.0.0.4
"""


def scrape(address: tuple[str, int]) -> dict[tuple[str, frozenset], float]:
    reply = httpx.get(f"http://{address[0]}:{address[1]}/metrics", timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(reply.text)
            for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def refuse_rcpt(address: tuple[str, int], rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP(*address, timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        smtp.mail("sender@remote.test")
        return smtp.rcpt(rcpt)


def test_counters_move_by_the_traffic_of_one_mailyard_up(tmp_path):
    mailyard = Mailyard(tmp_path, zone=ZONE, settings={
        "log": {"format": "json"},
        "metrics": {"sample_interval": 0.3},
        "outbound": {"remote_port": REMOTE_PORT, "retry_schedule": ["1h"],
                     "connection_idle": 0.2}})
    mailyard.add_users(ALICE, CAROL)
    refusing = lambda rcpt, tries: "451 4.3.2 Come back later"
    with Receiver("127.0.0.4", REMOTE_PORT, rcpt=refusing):
        service = mailyard.start("up")
        try:
            service.wait_listening("mx", "mailbox", "gateway")
            mx, gateway = service.addresses["mx"], service.addresses["gateway"]
            before = scrape(gateway)

            for rcpt in (ALICE, CAROL, ALICE):
                send(mx, "sender@remote.test", [rcpt], message("sender@remote.test", rcpt,
                                                               f"hello {rcpt}"))
            assert refuse_rcpt(mx, "nobody@example.test")[0] == 550
            assert refuse_rcpt(mx, "someone@elsewhere.test")[0] == 550
            alice = Client(service.addresses["mailbox"], mailyard.token(ALICE))
            inbox = alice.wait_for(2, "INBOX")
            assert len(inbox) == 2
            listed = 0
            for _ in range(3):
                alice.list("INBOX")
                listed += 1
            try:
                alice.get("no-such-message")
                raise AssertionError("a missing message was found")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
            queue(mailyard, (ALICE, ["bob@retry.test"], message(ALICE, "bob@retry.test", "later")))

            def settled() -> bool:
                now = scrape(gateway)
                return (value(now, "mailyard_outbound_queue_messages", state="deferred") == 1
                        and value(now, "mailyard_delivery_seconds_count")
                        - value(before, "mailyard_delivery_seconds_count") == 3
                        and value(now, "mailyard_queue_lag", topic="mail.index") == 0
                        and value(now, "mailyard_queue_lag", topic="mail.inbound") == 0)
            wait_until(settled, 30, "delivery, indexing and the deferral sampled")
            after = scrape(gateway)
            alice.close()
        finally:
            assert service.stop() == 0

    def moved(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # SMTP: five sessions, their replies by code and enhanced code.
    assert moved("mailyard_smtp_sessions_total", service="mx") == 5
    assert moved("mailyard_smtp_replies_total", service="mx", code="220") == 5
    assert moved("mailyard_smtp_replies_total", service="mx", code="550", reason="5.1.1") == 1
    assert moved("mailyard_smtp_replies_total", service="mx", code="550", reason="5.7.1") == 1
    assert moved("mailyard_smtp_replies_total", service="mx", code="250", reason="2.1.5") == 3
    assert value(after, "mailyard_smtp_sessions_open", service="mx") == 0
    assert moved("mailyard_messages_accepted_total", service="mx") == 3
    assert moved("mailyard_messages_rejected_total", service="mx", stage="rcpt",
                 reason="unknown_user") == 1
    assert moved("mailyard_messages_rejected_total", service="mx", stage="rcpt",
                 reason="relay_denied") == 1
    assert moved("mailyard_messages_rejected_total") == 2
    # Delivery and indexing latency: one observation per message, per indexed copy.
    assert moved("mailyard_delivery_seconds_count") == 3
    assert moved("mailyard_delivery_seconds_bucket", le="+Inf") == 3
    assert moved("mailyard_delivery_seconds_sum") > 0
    assert moved("mailyard_index_seconds_count") == 3
    # The API, per method and status.
    calls = moved("mailyard_api_requests_total", method="ListMessages")
    assert calls == moved("mailyard_api_request_seconds_count", method="ListMessages")
    assert calls >= listed + 1  # wait_for's listings, then ours
    assert moved("mailyard_api_requests_total", method="ListMessages", code="OK") == calls
    assert moved("mailyard_api_requests_total", method="GetMessage", code="NOT_FOUND") == 1
    assert moved("mailyard_api_requests_total", method="GetMessage") == 1
    # Our default-size INBOX listings read the inbox head the delivery wrote
    # (wait_for's pages of 100 are larger than the head, so they skip it).
    assert moved("mailyard_cache_requests_total", cache="inbox") == listed
    assert moved("mailyard_cache_requests_total", cache="inbox", result="hit") == listed
    # Outbound: one attempt, deferred; the message waits in the 1h tier.
    assert moved("mailyard_outbound_attempts_total", result="deferred") == 1
    assert moved("mailyard_outbound_attempts_total") == 1
    assert value(after, "mailyard_queue_lag", topic="mail.outbound.delay.3600s",
                 group="outbound") == 1
    assert value(after, "mailyard_outbound_queue_messages", state="queued") == 0
    # The gateway's own and the client library's process metrics are there too.
    assert value(after, "mailyard_gateway_requests_total", route="/metrics") >= 1
    assert value(after, "process_cpu_seconds_total") > 0

    # log.format = "json": every line an object; addresses masked by default.
    events = [json.loads(line) for line in service.log_path.read_text().splitlines()
              if line.startswith("{")]
    accepted = [e for e in events if e["event"] == "accepted"]
    assert len(accepted) == 3
    assert {e["from"] for e in accepted} == {"s***@remote.test"}
    refused = [e for e in events if e["event"] == "rcpt_refused"]
    assert {e["rcpt"] for e in refused} == {"n***@example.test", "s***@elsewhere.test"}
    assert all(e["service"] and e["ts"].endswith("Z") and e["pid"] for e in events)
    assert not any(line.startswith("ts=") for line in service.log_path.read_text().splitlines())


def test_each_process_serves_its_own_metrics(tmp_path):
    base = free_port("127.0.0.1")  # and base+1, base+100: free as well, most likely
    mailyard = Mailyard(tmp_path, settings={
        "mx": {"processes": 2},
        "metrics": {"listen": f"127.0.0.1:{base}", "sample_interval": 0.3}})
    mailyard.add_users(ALICE)
    mx = mailyard.start("run", "mx")
    delivery = mailyard.start("run", "delivery")
    try:
        mx.wait_listening("mx", "metrics")
        delivery.wait_listening("metrics")
        # One service per process: metrics.listen plus its place (mx +0, delivery +1);
        # the extra MX process on +100.
        assert mx.addresses["metrics"] == ("127.0.0.1", base)
        assert delivery.addresses["metrics"] == ("127.0.0.1", base + 1)
        worker = ("127.0.0.1", base + 100)
        wait_until(lambda: _answers(worker), 30, "the extra MX process's /metrics")

        sessions = 12
        for number in range(sessions):
            send(mx.addresses["mx"], "sender@remote.test", [ALICE],
                 message("sender@remote.test", ALICE, f"message {number}"))

        def delivered() -> bool:
            found = scrape(delivery.addresses["metrics"])
            return (value(found, "mailyard_delivery_seconds_count") == sessions
                    and value(found, "mailyard_queue_lag", topic="mail.inbound") == 0)
        wait_until(delivered, 30, "the delivery process's metrics")
        by_process = [scrape(mx.addresses["metrics"]), scrape(worker)]
        # The kernel spreads the connections: each process counts its own.
        counts = [value(p, "mailyard_smtp_sessions_total", service="mx") for p in by_process]
        assert sum(counts) == sessions
        assert sum(value(p, "mailyard_messages_accepted_total", service="mx")
                   for p in by_process) == sessions
        # A lone delivery process samples its own group's lag, nobody else's.
        lagging = scrape(delivery.addresses["metrics"])
        assert {dict(labels)["group"] for (name, labels) in lagging
                if name == "mailyard_queue_lag"} == {"delivery"}
        assert value(lagging, "mailyard_smtp_sessions_total") == 0
    finally:
        assert mx.stop() == 0
        assert delivery.stop() == 0


def _answers(address: tuple[str, int]) -> bool:
    try:
        return httpx.get(f"http://{address[0]}:{address[1]}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
