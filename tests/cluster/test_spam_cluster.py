"""The spam classifier trained through ModifyLabels with its weights as
Cassandra counters, the blocklist filter in Redis and mail through Kafka and S3."""
from __future__ import annotations

import uuid

import pytest

from tests.cluster.conftest import cluster_settings
from tests.e2e.harness import Client, Mailyard
from tests.e2e.test_spam import train_and_compare


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tag = uuid.uuid4().hex[:10]
    settings = cluster_settings(f"mailyard_spam_{tag}")
    settings |= {"services": ["mx", "delivery", "mailbox"],
                 "mailbox": {"quota_units": 1_000_000}}
    mailyard = Mailyard(tmp_path_factory.mktemp("cluster-spam"), settings=settings)
    mailyard.cli("schema", "apply")
    users = [f"{name}.{tag}@cluster.test" for name in ("alice", "bob")]
    mailyard.add_users(*users)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox", timeout=120)
    clients = [Client(service.addresses["mailbox"], mailyard.token(u)) for u in users]
    yield service.addresses["mx"], users, clients
    for client in clients:
        client.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def test_classifier_learns_per_user_on_cassandra(cluster):
    mx, (alice, bob), (alice_client, bob_client) = cluster
    precision, recall = train_and_compare(mx, alice_client, bob_client, alice, bob)
    assert precision >= 0.9 and recall >= 0.7
