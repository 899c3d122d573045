"""The tier mover on the embedded stores, opened as `mailyard up` opens them:
old mail's blobs go cold, blobs shared with newer mail stay hot, and the
scheduled service does it by itself."""
from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage

from mailyard.policy.config import Config
from mailyard.store.messages import store_content
from mailyard.store.metadata.base import MessageRecord, User
from mailyard.store.raw import load_raw
from mailyard.store.stores import Stores
from mailyard.store.tiering import Tierer, serve, tiers_of

DAY_MS = 86400 * 1000
USER = "alice@example.test"
SHARED = bytes(range(256)) * 40


def message(subject: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "bob@remote.test", USER, subject
    msg.set_content(body * 60)
    msg.add_attachment(SHARED, maintype="application", subtype="octet-stream", filename="a.bin")
    return msg.as_bytes()


async def deliver(stores: Stores, raw: bytes, message_id: str, received_at_ms: int) -> str:
    blobs, metadata = await stores.blobs(), await stores.metadata()
    stored = await store_content(blobs, raw, 1024)
    await metadata.link_blobs(f"{USER}/{message_id}", stored.blob_keys)
    await metadata.put_message(MessageRecord(
        user_id=USER, message_id=message_id, thread_id=message_id,
        received_at_ms=received_at_ms, skeleton_key=stored.skeleton_key, size=len(raw),
        attachments=stored.attachments, labels={"INBOX"}))
    return stored.skeleton_key


def config_for(tmp_path, **tiering) -> Config:
    config = Config(data_dir=str(tmp_path / "data"))
    for name, value in tiering.items():
        setattr(config.tiering, name, value)
    return config


async def test_old_mail_goes_cold_and_shared_blobs_stay_hot(tmp_path):
    stores = Stores(config_for(tmp_path))
    try:
        await (await stores.metadata()).put_user(User(USER))
        now = int(time.time() * 1000)
        old_raw, new_raw = message("old", "an old line\n"), message("new", "a new line\n")
        old = await deliver(stores, old_raw, "old", now - 800 * DAY_MS)
        new = await deliver(stores, new_raw, "new", now - DAY_MS)
        blobs = await stores.blobs()
        tiers = tiers_of(blobs)
        report = await Tierer(stores.config, await stores.metadata(), blobs).run()
        assert report.messages == 1 and report.moved_blobs >= 1 and report.kept_hot >= 1
        assert not await tiers.is_hot(old) and await tiers.cold.exists(old)
        assert await tiers.is_hot(new)
        shared = [a.blob_key for a in (await (await stores.metadata()).get_message(
            USER, "old")).attachments]
        assert shared and all([await tiers.is_hot(k) for k in shared])  # the new mail has it
        assert await load_raw(blobs, old) == old_raw
        assert await load_raw(blobs, new) == new_raw
    finally:
        await stores.close()


async def test_the_service_moves_on_its_own(tmp_path):
    stores = Stores(config_for(tmp_path, after_days=0.5 / 86400, interval=0.2))
    stop = asyncio.Event()
    try:
        await (await stores.metadata()).put_user(User(USER))
        raw = message("soon old", "a line\n")
        skeleton = await deliver(stores, raw, "m1", int(time.time() * 1000))
        tiers = tiers_of(await stores.blobs())
        record = await (await stores.metadata()).get_message(USER, "m1")
        keys = [skeleton, *(a.blob_key for a in record.attachments)]
        assert len(keys) == 2
        task = asyncio.create_task(serve(stores.config, stores, stop))
        deadline = time.monotonic() + 20
        while any([await tiers.is_hot(k) for k in keys]):
            assert time.monotonic() < deadline, "the tiering service never moved the mail"
            await asyncio.sleep(0.1)
        assert all([await tiers.cold.exists(k) for k in keys])
        assert await load_raw(await stores.blobs(), skeleton) == raw
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        stop.set()
        await stores.close()
