"""The distributed adapters over TLS against the TLS servers of tests/cluster/
(redis_tls.sh: Redis asking for client certificates; s3_tls.sh: versitygw
over HTTPS; kafka_tls.sh: a broker with an SSL listener), all with
certificates of the cluster's test CA.

Verification is on unless turned off: without the CA the adapters refuse the
servers; a Redis that wants a client certificate refuses us without one; and
`mailyard up` configured from TOML carries mail through both over TLS.
"""
from __future__ import annotations

import logging
import uuid
from email.message import EmailMessage

import pytest

from mailyard.policy.config import BackendTlsConfig, KafkaConfig, RedisConfig, S3Config
from mailyard.store.blobs.s3 import S3BlobStore
from mailyard.store.cache.redis import RedisCache
from mailyard.store.errors import StorageError
from mailyard.store.queue.kafka import KafkaQueue
from tests.cluster.conftest import cluster_address
from tests.e2e.harness import Client, Mailyard, send


@pytest.fixture
def redis_url() -> str:
    return cluster_address("MAILYARD_REDIS_TLS")


@pytest.fixture
def tls_files() -> dict[str, str]:
    return {"ca_file": cluster_address("MAILYARD_TLS_CA"),
            "cert_file": cluster_address("MAILYARD_TLS_CLIENT_CERT"),
            "key_file": cluster_address("MAILYARD_TLS_CLIENT_KEY")}


async def _get(url: str, tls: BackendTlsConfig) -> bytes | None:
    cache = RedisCache(RedisConfig(url=url, request_timeout=5.0, tls=tls))
    try:
        await cache.set("tls-test:probe", b"yes")
        return await cache.get("tls-test:probe")
    finally:
        await cache.close()


async def test_redis_refuses_a_certificate_no_configured_ca_signed(redis_url, tls_files):
    """No ca_file: the system's CAs, which did not sign the test CA's certificate."""
    tls = BackendTlsConfig(cert_file=tls_files["cert_file"], key_file=tls_files["key_file"])
    with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED") as err:
        await _get(redis_url, tls)
    assert redis_url.split("/")[2] in str(err.value)


async def test_redis_server_refuses_a_client_without_a_certificate(redis_url, tls_files):
    with pytest.raises(StorageError):
        await _get(redis_url, BackendTlsConfig(ca_file=tls_files["ca_file"]))


async def test_redis_with_verification_turned_off_connects_and_warns(redis_url, tls_files, caplog):
    tls = BackendTlsConfig(verify=False, cert_file=tls_files["cert_file"],
                           key_file=tls_files["key_file"])
    with caplog.at_level(logging.WARNING, logger="mailyard.tls"):
        assert await _get(redis_url, tls) == b"yes"
    assert "event=certificate_not_verified" in caplog.text


async def test_s3_refuses_a_certificate_no_configured_ca_signed():
    store = S3BlobStore(S3Config(
        endpoint_url=cluster_address("MAILYARD_S3_TLS"), bucket="mailyard-tls-test",
        access_key_id=cluster_address("MAILYARD_S3_ACCESS_KEY"),
        secret_access_key=cluster_address("MAILYARD_S3_SECRET_KEY"), max_attempts=1))
    with pytest.raises(StorageError, match="(?i)certificate verify failed"):
        await store.start()
    await store.close()


@pytest.mark.parametrize("tls", [BackendTlsConfig(enabled=True), BackendTlsConfig()],
                         ids=["tls without the CA", "plaintext"])
async def test_kafka_tls_listener_refuses_unverified_and_plaintext_clients(tls, caplog):
    address = cluster_address("MAILYARD_KAFKA_TLS")
    queue = KafkaQueue(KafkaConfig(bootstrap_servers=[address], request_timeout=3.0, tls=tls))
    with pytest.raises(StorageError, match=f"kafka {address}: connect"):
        await queue.start()
    await queue.close()
    if tls.enabled:  # aiokafka logs the reason; its error says only "unable to bootstrap"
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_mail_flows_through_kafka_redis_and_s3_over_tls(tmp_path, redis_url, tls_files):
    """`mailyard up` on Kafka, Redis and S3 over TLS, set up in TOML as a
    postmaster would: a message in over SMTP is stored and read back over the API."""
    alice = f"alice-{uuid.uuid4().hex[:8]}@tls.test"
    mailyard = Mailyard(tmp_path, settings={
        "services": ["mx", "delivery", "mailbox"],
        "storage": {"queue": "kafka", "cache": "redis", "blobs": "s3"},
        "kafka": {"bootstrap_servers": [cluster_address("MAILYARD_KAFKA_TLS")],
                  "tls": {"enabled": True, "ca_file": tls_files["ca_file"]}},
        "redis": {"url": redis_url, "request_timeout": 5.0, "tls": tls_files},
        "s3": {"endpoint_url": cluster_address("MAILYARD_S3_TLS"), "bucket": "mailyard-tls-e2e",
               "access_key_id": cluster_address("MAILYARD_S3_ACCESS_KEY"),
               "secret_access_key": cluster_address("MAILYARD_S3_SECRET_KEY"),
               "tls": {"ca_file": tls_files["ca_file"]}}})
    mailyard.add_users(alice)
    service = mailyard.start("up")
    try:
        service.wait_listening("mx", "mailbox", timeout=60)
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "bob@remote.test", alice, "over tls"
        message.set_content("stored behind TLS\n")
        send(service.addresses["mx"], "bob@remote.test", [alice], message.as_bytes())
        client = Client(service.addresses["mailbox"], mailyard.token(alice))
        (summary,) = client.wait_for(1, "INBOX")
        assert client.get(summary.id).text_body.strip() == "stored behind TLS"
        client.close()
    finally:
        assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"
    # The cache is optional: a failing Redis would only show up as warnings.
    # (aiokafka logs an error while a new topic's metadata spreads; harmless.)
    problems = [line for line in service.log_path.read_text().splitlines()
                if ("level=warning" in line or "level=error" in line)
                and any(word in line.lower() for word in ("redis", "s3", "ssl", "certificate"))]
    assert not problems
