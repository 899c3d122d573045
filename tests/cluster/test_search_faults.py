"""OpenSearch going away costs search only: while it is stopped, Search answers
UNAVAILABLE at once, mail is still accepted and listed, and mailyard even
restarts; once it is back, the indexer catches up and the mail received
during the outage is found.

Runs `mailyard up` on the embedded stores with storage.search = "opensearch",
and stops the real OpenSearch of tests/cluster/ with its own script.
"""
from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from email.message import EmailMessage
from pathlib import Path

import grpc
import pytest

from tests.cluster.conftest import cluster_address
from tests.e2e.harness import Client, Mailyard, send

OPENSEARCH_SH = Path(__file__).parent / "servers" / "opensearch.sh"
ALICE = "alice@example.test"
SENDER = "sender@remote.example"


def opensearch(command: str) -> None:
    subprocess.run(["bash", str(OPENSEARCH_SH), command], check=True, timeout=300)


def mail(subject: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, ALICE, subject
    msg.set_content(body)
    return msg.as_bytes()


def search_code(client: Client, query: str) -> tuple[grpc.StatusCode, float]:
    """The status Search answers with, and how long it took."""
    started = time.monotonic()
    try:
        client.search(query)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
    return code, time.monotonic() - started


def wait_found(client: Client, query: str, count: int, timeout: float) -> list[str]:
    """The subjects found once there are `count`; UNAVAILABLE meanwhile is retried."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            subjects = [m.subject for m in client.search(query).messages]
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            subjects = []
        if len(subjects) >= count or time.monotonic() > deadline:
            return subjects
        time.sleep(0.2)


@pytest.fixture
def system(tmp_path):
    url = cluster_address("MAILYARD_OPENSEARCH")
    prefix = f"faults-{uuid.uuid4().hex[:12]}"  # an index of its own on the shared server
    mailyard = Mailyard(tmp_path, settings={
        "services": ["mx", "delivery", "mailbox", "indexer"],
        "storage": {"search": "opensearch"},
        "opensearch": {"hosts": [url], "index_prefix": prefix, "replicas": 0,
                       "request_timeout": 2.0},
        # The breaker lets a trial through 2 s after it opened, not 10.
        "search": {"breaker_reset": 2.0}})
    mailyard.add_users(ALICE)
    yield mailyard
    mailyard.stop_all()
    request = urllib.request.Request(f"{url}/{prefix}-messages-*", method="DELETE")
    urllib.request.urlopen(request, timeout=30).read()


def start(mailyard: Mailyard) -> tuple[tuple[str, int], Client]:
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    return service.addresses["mx"], Client(service.addresses["mailbox"], mailyard.token(ALICE))


def test_search_fails_fast_while_opensearch_is_down_and_catches_up(system: Mailyard):
    mx, alice = start(system)
    send(mx, SENDER, [ALICE], mail("before the outage", "the quasar figures"))
    assert wait_found(alice, "quasar", 1, timeout=30) == ["before the outage"]

    opensearch("stop")
    try:
        failures = []
        for _ in range(5):  # the failures that open the breaker, then the open breaker
            code, took = search_code(alice, "quasar")
            assert code == grpc.StatusCode.UNAVAILABLE
            failures.append(took)
        print(f"\nSearch failed in {', '.join(f'{t * 1000:.0f} ms' for t in failures)}")
        assert max(failures) < 2.0
        send(mx, SENDER, [ALICE], mail("during the outage", "the nebula figures"))
        assert [m.subject for m in alice.wait_for(2, "INBOX", timeout=30)] == [
            "during the outage", "before the outage"]

        # A restart while the index is away: the services come up all the same.
        alice.close()
        system.stop_all()
        mx, alice = start(system)
        send(mx, SENDER, [ALICE], mail("after a restart", "the pulsar figures"))
        assert len(alice.wait_for(3, "INBOX", timeout=30)) == 3
        assert search_code(alice, "nebula")[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        opensearch("start")

    back = time.monotonic()
    assert wait_found(alice, "nebula", 1, timeout=60) == ["during the outage"]
    print(f"outage mail searchable {time.monotonic() - back:.1f} s after OpenSearch served again")
    assert wait_found(alice, "pulsar", 1, timeout=30) == ["after a restart"]
    assert [m.subject for m in alice.search("figures").messages] == [
        "after a restart", "during the outage", "before the outage"]
    alice.close()
