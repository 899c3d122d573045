"""The spine's end-to-end path with every port on its distributed adapter:
SMTP in through Kafka, bodies in S3, metadata in Cassandra, the inbox cache in
Redis, search in OpenSearch, gRPC out."""
from __future__ import annotations

import hashlib
import time
import uuid

import pytest

from mailyard.proto import mailbox_pb2
from tests.cluster.conftest import cluster_settings
from tests.e2e.harness import Client, Mailyard, send, wire_form
from tests.e2e.test_spine import (ATTACHMENT, MALFORMED, SENDER, assert_raw_exact, plain,
                                  with_attachment)
from tests.testdata import cpython_messages


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-pipeline")
    tag = uuid.uuid4().hex[:10]
    mailyard = Mailyard(root, settings=cluster_settings(f"mailyard_e2e_{tag}"))
    mailyard.cli("schema", "apply")
    # Fresh users: Kafka, S3, Redis and OpenSearch are shared with other tests.
    users = {name: f"{name}.{tag}@cluster.test" for name in ("alice", "bob", "carol")}
    mailyard.add_users(*users.values())
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox", timeout=120)
    clients = {name: Client(service.addresses["mailbox"], mailyard.token(address))
               for name, address in users.items()}
    yield mailyard, service, users, clients
    for client in clients.values():
        client.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def queue_id_of(raw: bytes) -> str:
    return raw.split(b" id ", 1)[1].split(b";", 1)[0].split()[0].decode()


def test_mail_flows_through_every_distributed_adapter(cluster):
    mailyard, service, users, clients = cluster
    mx = service.addresses["mx"]
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    sent = {"alice": [], "bob": [], "carol": []}
    for i in range(3):
        message = plain(f"cluster hello {i}", f"plain body number {i}\n", to=alice)
        sent["alice"].append((send(mx, SENDER, [alice], message), message))
    shared = with_attachment("cluster report for both", f"{alice}, {bob}")
    queue_id = send(mx, SENDER, [alice, bob], shared)
    sent["alice"].append((queue_id, shared))
    sent["bob"].append((queue_id, shared))
    sent["alice"].append((send(mx, SENDER, [alice], MALFORMED), MALFORMED))
    for path in cpython_messages()[:20]:
        message = path.read_bytes()
        sent["carol"].append((send(mx, SENDER, [carol], message), message))

    for name, client in clients.items():
        listed = client.wait_for(len(sent[name]), timeout=120)
        assert len(listed) == len(sent[name])
        stored = {}
        for summary in client.list_all():
            raw = client.get(summary.id, mailbox_pb2.RAW).raw
            stored[queue_id_of(raw)] = raw
        assert sorted(stored) == sorted(q for q, _ in sent[name])
        for queue_id, message in sent[name]:
            assert_raw_exact(stored[queue_id], message, queue_id)

    a = clients["alice"]
    summary = next(m for m in a.list().messages if m.subject == "cluster report for both")
    (attachment,) = a.get(summary.id).attachments
    assert attachment.sha256 == hashlib.sha256(ATTACHMENT).hexdigest()
    assert a.attachment(summary.id, attachment.id) == ATTACHMENT
    malformed = [m for m in a.list_all() if m.subject.startswith("malformed")]
    assert len(malformed) == 1

    # Labels written through Cassandra and read back through the Redis inbox cache.
    hello = next(m for m in a.list().messages if m.subject == "cluster hello 1")
    a.modify([hello.id], add=["STARRED"], remove=["UNREAD"])
    again = next(m for m in a.list().messages if m.id == hello.id)
    assert "STARRED" in again.labels and not again.unread
    assert a.list().unread_count == len(sent["alice"]) - 1

    # The indexer fed OpenSearch; search is per user.
    deadline = time.monotonic() + 60
    while True:
        found = [m.subject for m in a.search("subject:(cluster hello)").messages]
        if len(found) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(found) == [f"cluster hello {i}" for i in range(3)]
    # The malformed message's x.pdf part counts as an attachment too.
    with_parts = sorted(m.subject for m in a.search("has:attachment").messages)
    assert len(with_parts) == 2 and with_parts[0] == "cluster report for both"
    assert with_parts[1].startswith("malformed")
    assert clients["bob"].search("subject:hello").messages == []
