"""Quotas, retention and the collector on running services: over quota the
MX answers 452 4.2.2 over real SMTP and the API reports usage and limit;
deleting mail lets mail in again; `mailyard gc run` frees what was deleted."""
from __future__ import annotations

import asyncio
import base64
import smtplib
import time

import pytest

from mailyard.delivery import worker as delivery
from mailyard.mta import inbound
from mailyard.policy.config import Config
from mailyard.store.gc.service import run_once
from mailyard.store.metadata.base import User
from mailyard.store.stores import Stores
from mailyard.proto import mailbox_pb2
from tests.e2e.harness import Client, Mailyard, Rest

ALICE, BOB = "alice@example.test", "bob@example.test"
ATTACHMENT = bytes(range(256)) * 64           # 16 KiB


def message(subject: str) -> bytes:
    body = base64.encodebytes(ATTACHMENT).decode().replace("\n", "\r\n")
    return (f"From: x@example.net\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
            f"--XX\r\nContent-Type: text/plain\r\n\r\n{subject}\r\n"
            "--XX\r\nContent-Type: application/octet-stream\r\n"
            "Content-Disposition: attachment; filename=a.bin\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{body}--XX--\r\n").encode()


def rcpt_reply(address, rcpt: str, data: bytes | None = None) -> tuple[int, bytes]:
    with smtplib.SMTP(*address, timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        smtp.mail("x@example.net")
        code, reply = smtp.rcpt(rcpt)
        if code == 250 and data is not None:
            assert smtp.data(data)[0] == 250
        return code, reply


@pytest.fixture
async def mail(tmp_path):
    config = Config(data_dir=str(tmp_path), hostname="mx.example.test")
    config.mx.listen = "127.0.0.1:0"
    (tmp_path / "zone.db").write_text("")
    config.dns.zone_file = str(tmp_path / "zone.db")
    config.quota.default = 10 * 1024 * 1024
    config.spam.enabled = False   # not what this tests
    config.quota.users = {ALICE: 20 * 1024}   # one message with its attachment fills it
    stores = Stores(config)
    metadata = await stores.metadata()
    await metadata.add_domain("example.test")
    for user in (ALICE, BOB):
        await metadata.put_user(User(user))
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    tasks = [asyncio.create_task(inbound.serve(config, stores, stop, ready.set_result)),
             asyncio.create_task(delivery.serve(config, stores, stop))]
    address = await ready
    yield config, address, stores
    stop.set()
    await asyncio.gather(*tasks)
    await stores.close()


async def wait_for(metadata, user: str, label: str, count: int) -> list:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = await metadata.list_messages(user, label, 100)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{user} has fewer than {count} messages in {label}")


async def test_gc_run_purges_old_trash_and_frees_its_blobs(mail):
    config, address, stores = mail
    metadata, blobs = await stores.metadata(), await stores.blobs()
    assert (await asyncio.to_thread(rcpt_reply, address, BOB, message("old")))[0] == 250
    (record,) = await wait_for(metadata, BOB, "INBOX", 1)
    await metadata.modify_labels(BOB, [record.message_id], {"TRASH"}, {"INBOX"})

    purged, report = await run_once(config, stores)
    assert purged == {"TRASH": 0, "SPAM": 0}          # trashed just now: kept
    assert await blobs.exists(record.skeleton_key)

    config.gc.trash_days = 0.5 / 86400               # half a second
    await asyncio.sleep(0.6)
    # The message was received now too, so it is the trash time that counts.
    purged, report = await run_once(config, stores, dry_run=True)
    assert purged["TRASH"] == 1 and await metadata.get_message(BOB, record.message_id)
    purged, report = await run_once(config, stores)
    assert purged["TRASH"] == 1
    assert await metadata.get_message(BOB, record.message_id) is None
    assert record.skeleton_key in report.freed_keys
    assert not await blobs.exists(record.skeleton_key)
    assert await metadata.storage_usage(BOB) == 0


def test_quota_refusal_and_recovery_over_smtp_and_the_api(tmp_path):
    mailyard = Mailyard(tmp_path, settings={"quota": {"users": {ALICE: 20 * 1024}},
                                            "spam": {"enabled": False}})
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    try:
        service.wait_listening("mx", "mailbox", "gateway")
        mx = service.addresses["mx"]
        alice = Client(service.addresses["mailbox"], mailyard.token(ALICE))
        rest = Rest(service.addresses["gateway"], mailyard.token(ALICE))
        assert rcpt_reply(mx, ALICE, message("one"))[0] == 250
        (first,) = alice.wait_for(1)
        usage = alice.call("GetUsage", mailbox_pb2.GetUsageRequest())
        assert usage.limit_bytes == 20 * 1024 and usage.used_bytes >= len(ATTACHMENT)
        assert rest.get("/v1/usage").json() == {"used_bytes": str(usage.used_bytes),
                                                "limit_bytes": str(20 * 1024)}

        code, reply = rcpt_reply(mx, ALICE)
        assert (code, reply[:5]) == (452, b"4.2.2"), reply
        assert rcpt_reply(mx, BOB)[0] == 250                  # the default quota: room

        alice.call("DeleteMessages", mailbox_pb2.MessageIdsRequest(ids=[first.id]))
        assert alice.call("GetUsage", mailbox_pb2.GetUsageRequest()).used_bytes == 0
        assert rcpt_reply(mx, ALICE, message("two"))[0] == 250
        (second,) = alice.wait_for(1)
        assert second.subject == "two"

        # The deleted message's skeleton is unlinked; its attachment is the
        # second message's too, so it stays.
        dry = mailyard.cli("gc", "run", "--dry-run")
        assert "would free 0 " not in dry, dry
        freed = mailyard.cli("gc", "run")
        assert " freed " in freed and "freed 0 " not in freed, freed
        assert "freed 0 " in mailyard.cli("gc", "run")
        (attachment,) = alice.get(second.id).attachments
        assert alice.attachment(second.id, attachment.id) == ATTACHMENT
        alice.close()
        rest.close()
    finally:
        assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


async def test_the_gc_service_collects_on_its_schedule(tmp_path):
    from mailyard.store.gc import service as gc_service
    config = Config(data_dir=str(tmp_path))
    config.gc.interval = 0.2
    stores = Stores(config)
    blobs, metadata = await stores.blobs(), await stores.metadata()
    orphan = await blobs.put(b"nobody links this")
    kept = await blobs.put(b"a spool waiting for delivery")
    await metadata.link_blobs("spool/q1", [kept])
    stop = asyncio.Event()
    task = asyncio.create_task(gc_service.serve(config, stores, stop))
    deadline = time.monotonic() + 10
    while await blobs.exists(orphan) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert not await blobs.exists(orphan) and await blobs.exists(kept)
    await stores.close()
