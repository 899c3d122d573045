"""What the outbound tests share: queueing a message for remote delivery
through the real interface (store/outbox.queue_outbound, from this process on
the instance's stores), reading the queue's state, and DSNs as a user sees
them over gRPC."""
from __future__ import annotations

import asyncio
import email
import email.policy
import time
from email.message import EmailMessage

from mailyard.mta.ids import new_queue_id
from mailyard.policy import config as config_module
from mailyard.proto import events_pb2, mailbox_pb2
from mailyard.store.outbox import queue_outbound
from mailyard.store.stores import Stores
from tests.e2e.harness import Client, Mailyard


def message(sender: str, to: str, subject: str, body: str = "Hello.\n") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@mailyard.test>"
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


def stores_of(mailyard: Mailyard) -> Stores:
    return Stores(config_module.load(str(mailyard.config), str(mailyard.data_dir)))


def queue(mailyard: Mailyard, *messages: tuple[str, list[str], bytes],
          user_id: str | None = None) -> list[str]:
    """Queues (mail_from, rcpts, raw) messages; returns their queue ids."""
    async def run() -> list[str]:
        stores = stores_of(mailyard)
        try:
            blobs, metadata, log = (await stores.blobs(), await stores.metadata(),
                                    await stores.queue())
            ids = []
            for mail_from, rcpts, raw in messages:
                envelope = events_pb2.OutboundEnvelope(
                    queue_id=new_queue_id(), mail_from=mail_from, rcpt_to=rcpts,
                    user_id=mail_from if user_id is None else user_id)
                await queue_outbound(blobs, metadata, log, raw, envelope)
                ids.append(envelope.queue_id)
            return ids
        finally:
            await stores.close()
    return asyncio.run(run())


def entry(mailyard: Mailyard, queue_id: str):
    async def run():
        stores = stores_of(mailyard)
        try:
            return await (await stores.metadata()).get_outbound(queue_id)
        finally:
            await stores.close()
    return asyncio.run(run())


def queued_ids(mailyard: Mailyard) -> set[str]:
    async def run():
        stores = stores_of(mailyard)
        try:
            return {e.queue_id for e in await (await stores.metadata()).list_outbound(10_000)}
        finally:
            await stores.close()
    return asyncio.run(run())


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def reports(client: Client) -> list[email.message.EmailMessage]:
    """The DSNs in the user's INBOX, parsed from their raw bytes."""
    found = []
    for summary in client.list_all("INBOX"):
        raw = client.get(summary.id, mailbox_pb2.RAW).raw
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        if parsed.get_content_type() == "multipart/report":
            found.append(parsed)
    return found


def delivery_status(report: email.message.EmailMessage) -> list[dict[str, str]]:
    """The per-recipient field groups of a report's message/delivery-status part
    (the first group, per message, comes first)."""
    assert report.get_param("report-type") == "delivery-status"
    parts = report.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    groups = []
    for block in parts[1].get_payload():  # the email package splits the field groups
        groups.append({k.lower(): str(v) for k, v in block.items()})
    return groups


def wait_ready(service, timeout: float = 30) -> None:
    """Until the outbound service has joined its consumer groups (it listens
    on no port, so the harness cannot tell)."""
    wait_until(lambda: "service=outbound" in service.log_path.read_text()
               and "event=ready" in service.log_path.read_text(), timeout, "outbound ready")
