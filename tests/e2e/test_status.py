"""`mailyard status` against a running `mailyard up` and after it stops: the
services it probes, the lag of each group, the outbound queue by state and the
account counts, read from another process."""
from __future__ import annotations

import json

from tests.e2e.harness import Client, Mailyard, send
from tests.e2e.outbound_support import message, queue, wait_until
from tests.e2e.receivers import Receiver, free_port

ALICE, CAROL = "alice@example.test", "carol@other.test"
REMOTE_PORT = free_port("127.0.0.4")
ZONE = """
retry.test.     IN MX 10 mx.retry.test.
mx.retry.test.  IN A  127.0.0.4
"""
LISTENERS = ("mx", "mailbox", "gateway", "submission", "submissions")


def status(mailyard: Mailyard) -> dict:
    return json.loads(mailyard.cli("status", "--json"))


def lags(report: dict) -> dict[str, int]:
    return {row["topic"]: row["lag"] for row in report["lag"]}


def test_status_of_a_running_and_a_stopped_installation(tmp_path):
    # Fixed ports: status probes the configured addresses, so port 0 would not do.
    ports = [free_port("127.0.0.1") for _ in LISTENERS]
    mailyard = Mailyard(tmp_path, zone=ZONE, settings={
        "mx": {"listen": f"127.0.0.1:{ports[0]}"},
        "mailbox": {"listen": f"127.0.0.1:{ports[1]}"},
        "gateway": {"listen": f"127.0.0.1:{ports[2]}"},
        "submission": {"listen": f"127.0.0.1:{ports[3]}", "tls_listen": f"127.0.0.1:{ports[4]}"},
        # One long step: a refused message waits in the 1h tier.
        "outbound": {"remote_port": REMOTE_PORT, "retry_schedule": ["1h"],
                     "connection_idle": 0.2}})
    mailyard.add_users(ALICE, CAROL)
    refusing = lambda rcpt, tries: "451 4.3.2 Come back later"
    with Receiver("127.0.0.4", REMOTE_PORT, rcpt=refusing):
        service = mailyard.start("up")
        try:
            service.wait_listening(*LISTENERS)
            for rcpt in (ALICE, CAROL, ALICE):
                send(service.addresses["mx"], "sender@remote.test", [rcpt],
                     message("sender@remote.test", rcpt, f"hello {rcpt}"))
            client = Client(service.addresses["mailbox"], mailyard.token(ALICE))
            assert len(client.wait_for(2, "INBOX")) == 2
            client.close()
            [deferred] = queue(mailyard, (ALICE, ["bob@retry.test"],
                                          message(ALICE, "bob@retry.test", "deferred")))

            def settled() -> bool:
                report = status(mailyard)
                return (report["outbound_queue"]["deferred"] == 1
                        and lags(report)["mail.inbound"] == 0
                        and lags(report)["mail.index"] == 0)
            wait_until(settled, 30, "delivery, indexing and one deferral")

            running = status(mailyard)
            states = {s["name"]: s for s in running["services"]}
            assert set(states) == {*LISTENERS, "delivery", "indexer", "outbound", "tiering", "gc"}
            for name, port in zip(LISTENERS, ports):
                assert states[name]["listen"] == f"127.0.0.1:{port}"
                assert states[name]["state"] == "up", states[name]
            assert states["mailbox"]["detail"] == "gRPC health: SERVING"
            assert states["gateway"]["detail"] == "/healthz: 200"

            lag = lags(running)
            assert all(isinstance(n, int) and n >= 0 for n in lag.values())
            assert lag["mail.outbound"] == 0
            assert lag["mail.outbound.delay.3600s"] == 1  # the deferred message waits there
            assert lag["mail.dlq"] == 0
            assert {r["topic"]: r["group"] for r in running["lag"]}["mail.inbound"] == "delivery"
            assert running["outbound_queue"] == {"queued": 0, "deferred": 1, "held": 0}
            assert running["accounts"] == {"users": 2, "domains": 2}
            storage = running["storage"]
            assert storage["queue"]["adapter"] == "sqlite" and storage["queue"]["bytes"] > 0
            assert storage["metadata"]["bytes"] > 0
            assert storage["blobs"]["files"] > 0 and storage["search"]["bytes"] > 0
            assert "mail.outbound.delay.3600s" in mailyard.cli("status")
        finally:
            assert service.stop() == 0

    stopped = status(mailyard)  # cli() raises unless it exits 0
    for entry in stopped["services"]:
        if entry["name"] in LISTENERS:
            assert entry["state"] == "down", entry
    assert stopped["outbound_queue"]["deferred"] == 1
    assert stopped["accounts"] == {"users": 2, "domains": 2}
    assert lags(stopped)["mail.outbound.delay.3600s"] == 1
    text = mailyard.cli("status")
    assert "Users: 2  Domains: 2" in text and "down (connection refused)" in text
