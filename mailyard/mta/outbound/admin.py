"""`mailyard queue`: the outbound queue for the postmaster, like Postfix's
postqueue and postsuper. It runs in its own process against the configured
stores, and changes an entry only by compare-and-set, so a worker acting on it
at the same moment finds its record stale instead of undoing the change."""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

from mailyard.mta.outbound.dsn import header_section
from mailyard.policy.config import Config
from mailyard.proto import events_pb2
from mailyard.store.errors import NotFound
from mailyard.store.metadata.base import (OUTBOUND_HELD, OUTBOUND_QUEUED, MetadataStore,
                                          OutboundEntry)
from mailyard.store.outbox import OUTBOUND_TOPIC
from mailyard.store.queue.base import Queue

PAGE = 500
CAS_TRIES = 20


class QueueError(Exception):
    """What the postmaster asked cannot be done (no such message, not held, ...)."""


@dataclass
class Item:
    entry: OutboundEntry
    envelope: events_pb2.OutboundEnvelope


class QueueAdmin:
    def __init__(self, metadata: MetadataStore, queue: Queue):
        self.metadata, self.queue = metadata, queue

    async def items(self) -> list[Item]:
        found, after = [], ""
        while True:
            page = await self.metadata.list_outbound(PAGE, after)
            found += [_item(entry) for entry in page]
            if len(page) < PAGE:
                return found
            after = page[-1].queue_id

    async def item(self, queue_id: str) -> Item:
        entry = await self.metadata.get_outbound(queue_id)
        if entry is None:
            raise QueueError(f"{queue_id}: no such message in the queue")
        return _item(entry)

    async def retry(self, queue_id: str) -> str:
        """Due now, on mail.outbound (postqueue -i)."""
        def change(item: Item) -> None:
            if item.entry.state == OUTBOUND_HELD:
                raise QueueError(f"{queue_id}: on hold; release it instead")
        await self._reschedule(queue_id, change, OUTBOUND_QUEUED, publish=True)
        return f"{queue_id}: scheduled for delivery now"

    async def retry_all(self) -> list[str]:
        done = []
        for item in await self.items():
            if item.entry.state != OUTBOUND_HELD:
                try:
                    done.append(await self.retry(item.entry.queue_id))
                except QueueError:
                    pass  # delivered, deleted or held since the listing
        return done

    async def hold(self, queue_id: str) -> str:
        """Not delivered until released (postsuper -h)."""
        def change(item: Item) -> None:
            if item.entry.state == OUTBOUND_HELD:
                raise QueueError(f"{queue_id}: already on hold")
        await self._reschedule(queue_id, change, OUTBOUND_HELD, publish=False)
        return f"{queue_id}: on hold"

    async def release(self, queue_id: str) -> str:
        """Back from hold, due now (postsuper -H)."""
        def change(item: Item) -> None:
            if item.entry.state != OUTBOUND_HELD:
                raise QueueError(f"{queue_id}: not on hold")
        await self._reschedule(queue_id, change, OUTBOUND_QUEUED, publish=True)
        return f"{queue_id}: released, scheduled for delivery now"

    async def delete(self, queue_id: str) -> str:
        """Gone without a DSN (postsuper -d)."""
        if not await self.metadata.delete_outbound(queue_id):
            raise QueueError(f"{queue_id}: no such message in the queue")
        return f"{queue_id}: deleted"

    async def _reschedule(self, queue_id: str, check, state: str, publish: bool) -> None:
        """Gives the entry a new generation in `state` (due now unless held),
        then, with `publish`, puts its envelope on mail.outbound. Records of
        older generations still in the queue become stale."""
        for _ in range(CAS_TRIES):
            item = await self.item(queue_id)
            check(item)
            now_ms = int(time.time() * 1000)
            envelope = item.envelope
            envelope.generation = item.entry.generation + 1
            next_attempt = item.entry.next_attempt_ms
            if state != OUTBOUND_HELD:
                envelope.not_before_ms = next_attempt = now_ms
            value = envelope.SerializeToString()
            entry = OutboundEntry(queue_id=queue_id, generation=envelope.generation,
                                  state=state, envelope=value, next_attempt_ms=next_attempt,
                                  last_error=item.entry.last_error, updated_at_ms=now_ms)
            if await self.metadata.put_outbound(entry, expected_generation=item.entry.generation):
                if publish:
                    await self.queue.publish(OUTBOUND_TOPIC, queue_id.encode(), value)
                return
        raise QueueError(f"{queue_id}: changing too fast to update; try again")


def _item(entry: OutboundEntry) -> Item:
    return Item(entry, events_pb2.OutboundEnvelope.FromString(entry.envelope))


def _time(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000)) if ms else "-"


def format_list(items: list[Item]) -> str:
    """Like `mailq`: a line per message, then its last error and recipients."""
    if not items:
        return "Mail queue is empty\n"
    lines = [f"{'Queue ID':<24} {'State':<9} {'Size':>9}  {'Next attempt':<21} Sender"]
    for item in items:
        entry, envelope = item.entry, item.envelope
        next_attempt = "on hold" if entry.state == OUTBOUND_HELD else _time(entry.next_attempt_ms)
        lines.append(f"{entry.queue_id:<24} {entry.state:<9} {envelope.size:>9}  "
                     f"{next_attempt:<21} {envelope.mail_from or '<>'}")
        if entry.last_error:
            lines.append(f"    ({entry.last_error})")
        lines += [f"    {rcpt}" for rcpt in envelope.rcpt_to]
    total = sum(item.envelope.size for item in items)
    count = len(items)
    lines.append(f"-- {total} bytes in {count} message{'s' if count != 1 else ''}")
    return "\n".join(lines) + "\n"


def format_item(item: Item, headers: bytes | None) -> str:
    """Everything about one message, then its header section (like postcat -q)."""
    entry, envelope = item.entry, item.envelope
    fields = [("queue id", entry.queue_id),
              ("state", f"{entry.state} (generation {entry.generation})"),
              ("sender", envelope.mail_from or "<>"),
              ("user", envelope.user_id or "-"),
              ("recipients", ", ".join(envelope.rcpt_to)),
              ("size", str(envelope.size)),
              ("submitted", _time(envelope.submitted_at_ms)),
              ("attempts", str(envelope.attempt)),
              ("next attempt", "on hold" if entry.state == OUTBOUND_HELD
               else _time(entry.next_attempt_ms)),
              ("last error", entry.last_error or "-"),
              ("delay warned", "yes" if envelope.delay_warned else "no"),
              ("smtputf8", "yes" if envelope.smtputf8 else "no"),
              ("spool key", envelope.spool_key)]
    text = "".join(f"{name + ':':<14}{value}\n" for name, value in fields)
    if headers is None:
        return text + "\n(the message content is missing from the spool)\n"
    return text + "\n" + headers.decode("utf-8", "replace").replace("\r\n", "\n")


def command(config: Config, action: str, ids: list[str], everything: bool = False) -> int:
    """Runs one `mailyard queue` action and prints its result; the exit status."""
    return asyncio.run(_command(config, action, ids, everything))


async def _command(config: Config, action: str, ids: list[str], everything: bool) -> int:
    from mailyard.store.stores import Stores

    stores = Stores(config)
    try:
        admin = QueueAdmin(await stores.metadata(), await stores.queue())
        if action == "list":
            print(format_list(await admin.items()), end="")
            return 0
        if action == "show":
            item = await admin.item(ids[0])
            try:
                headers = header_section(await (await stores.blobs()).get(
                    item.envelope.spool_key))
            except NotFound:
                headers = None
            print(format_item(item, headers), end="")
            return 0
        if action == "retry" and everything:
            done = await admin.retry_all()
            print("\n".join(done + [f"{len(done)} message{'s' if len(done) != 1 else ''} "
                                    f"scheduled for delivery now"]))
            return 0
        status = 0
        for queue_id in ids:
            try:
                print(await getattr(admin, action)(queue_id))
            except QueueError as exc:
                print(f"mailyard: {exc}", file=sys.stderr)
                status = 1
        return status
    except QueueError as exc:
        print(f"mailyard: {exc}", file=sys.stderr)
        return 1
    finally:
        await stores.close()
