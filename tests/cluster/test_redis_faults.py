"""Redis going away costs the mailbox API speed only: while it is stopped,
ListMessages is served from the MetadataStore (new mail included), and once
it is back the inbox head is written to and read from Redis again.

Runs `mailyard up` on the embedded stores with storage.cache = "redis", and
stops the real Redis of tests/cluster/ with its own script.
"""
from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailyard.policy.config import RedisConfig
from mailyard.proto import mailbox_pb2
from mailyard.store.cache.redis import RedisCache
from mailyard.store.mailbox.inbox_cache import InboxCache
from tests.cluster.conftest import cluster_address
from tests.e2e.harness import Client, Mailyard, send

REDIS_SH = Path(__file__).parent / "servers" / "redis.sh"
SENDER = "sender@remote.example"


def redis_server(command: str) -> None:
    subprocess.run(["bash", str(REDIS_SH), command], check=True, timeout=120)


def mail(to: str, subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, to, subject
    msg.set_content(f"{subject}\n")
    return msg.as_bytes()


def subjects(client: Client) -> list[str]:
    return [m.subject for m in client.list().messages]


def wait_for_subjects(client: Client, expected: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while subjects(client) != expected:
        assert time.monotonic() < deadline, f"inbox is {subjects(client)}, not {expected}"
        time.sleep(0.1)


class CachedHead:
    """The user's inbox head, read and written straight in Redis."""

    def __init__(self, url: str, user: str):
        self.url, self.key = url, InboxCache.key(user)

    def _run(self, operation):
        async def go():
            cache = RedisCache(RedisConfig(url=self.url))
            try:
                return await operation(cache)
            finally:
                await cache.close()
        return asyncio.run(go())

    def get(self) -> mailbox_pb2.ListMessagesResponse | None:
        value = self._run(lambda cache: cache.get(self.key))
        return None if value is None else mailbox_pb2.ListMessagesResponse.FromString(value)

    def put(self, head: mailbox_pb2.ListMessagesResponse) -> None:
        self._run(lambda cache: cache.set(self.key, head.SerializeToString(), ttl=60))


@pytest.fixture
def system(tmp_path):
    url = cluster_address("MAILYARD_REDIS")
    user = f"alice@{uuid.uuid4().hex[:12]}.test"  # fresh keys on the shared Redis
    mailyard = Mailyard(tmp_path, settings={"services": ["mx", "delivery", "mailbox"],
                                            "storage": {"cache": "redis"},
                                            "redis": {"url": url, "request_timeout": 0.5}})
    mailyard.add_users(user)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    client = Client(service.addresses["mailbox"], mailyard.token(user))
    yield service, client, CachedHead(url, user), user
    client.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def test_list_messages_survives_a_redis_outage_and_uses_redis_again(system):
    service, client, head, user = system
    mx = service.addresses["mx"]

    send(mx, SENDER, [user], mail(user, "before the outage"))
    wait_for_subjects(client, ["before the outage"])
    assert [m.subject for m in head.get().messages] == ["before the outage"]

    redis_server("stop")
    try:
        send(mx, SENDER, [user], mail(user, "during the outage"))
        # Only the MetadataStore knows this one: the cache write failed.
        wait_for_subjects(client, ["during the outage", "before the outage"])
        listing = client.list()
        assert listing.unread_count == 2
    finally:
        redis_server("start")
    log = service.log_path.read_text()
    assert "cache_read_failed" in log and "cache_write_failed" in log

    # Redis came back empty (no persistence); the next delivery refills it.
    assert head.get() is None
    send(mx, SENDER, [user], mail(user, "after the outage"))
    expected = ["after the outage", "during the outage", "before the outage"]
    wait_for_subjects(client, expected)
    cached = head.get()
    assert [m.subject for m in cached.messages] == expected

    # ListMessages reads the head from Redis again: a head planted there is served.
    cached.messages[0].subject = "planted in redis"
    head.put(cached)
    assert subjects(client) == ["planted in redis", *expected[1:]]
