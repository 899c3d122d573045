"""The one submit path, for SMTP submission and the API's SendMessage/SendDraft.

Checks (each returns a SubmitRefused or None, so SMTP can ask at MAIL, RCPT
and DATA and the API all at once): the sender owns the address it sends
from, the recipients exist where they are ours, the per-user sending limits.
Then `deliver`: Date and Message-ID added when missing, Bcc removed, DKIM
signed, the sender's SENT copy stored, local recipients queued on
mail.inbound as the MX does and remote ones on mail.outbound, and only then
the caller says 250 (or returns). A failure undoes what it can (the SENT
copy, the outbound entry) and raises SubmitUnavailable: 451 4.3.0 /
UNAVAILABLE, and the client retries.

The local and the outbound copy each get a Received: field naming their own
queue id (ID-L and ID), so their bytes, and with them their content-addressed
spool blobs, differ: the delivery worker deletes the inbound spool after
delivering, and must never take the outbound one with it.
"""
from __future__ import annotations

import asyncio
import email.utils
import re
import time
from dataclasses import dataclass

from mailyard.mta.dkim_sign import Signer, author_domain, open_signer
from mailyard.mta.ids import new_queue_id
from mailyard.mta.inbound import received_header
from mailyard.mta.recipients import resolve
from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.proto import events_pb2
from mailyard.store.blobs.base import BlobStore
from mailyard.store.cache.base import Cache
from mailyard.store.mailbox.index_events import ADDED, announce
from mailyard.store.metadata.base import MetadataStore
from mailyard.store.outbox import queue_outbound
from mailyard.store.queue.base import Queue
from mailyard.store.sent import store_sent_copy
from mailyard.store import trace as tracing
from mailyard.store.outbox import OUTBOUND_TOPIC
from mailyard.store.spool import INBOUND_TOPIC, spool_and_queue
from mailyard.store.submitter import (BAD_MESSAGE, DAILY_LIMIT, NOT_YOUR_ADDRESS, RATE_LIMITED,
                                      UNKNOWN_RECIPIENT, SubmitRefused, Submitted,
                                      SubmitUnavailable)

LOCAL_SUFFIX = "-L"  # the local copy's queue id: ID-L beside the outbound ID
_NOT_IN_ADDRESS = re.compile(r"[\s<>()\[\],;:\"\\]")


@dataclass
class Trace:
    """Where a message came from, for its Received: field (None for the API)."""
    helo: str
    client_ip: str
    protocol: str               # ESMTPSA, UTF8SMTPSA (RFC 3848, RFC 6531)
    tls_info: str | None = None


def is_address(address: str) -> bool:
    """user@domain, as a client gives it in RCPT TO or a header (no route, no quotes)."""
    local, _, domain = address.rpartition("@")
    return bool(local and domain) and not _NOT_IN_ADDRESS.search(address) and "@" not in local


def unique(recipients) -> list[str]:
    """Each recipient once, whatever the case it was given in, first spelling kept."""
    once: dict[str, str] = {}
    for rcpt in recipients:
        once.setdefault(rcpt.lower(), rcpt)
    return list(once.values())


# --- the message ----------------------------------------------------------------

def _split(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines and CRLF) and the rest."""
    end = message.find(b"\r\n\r\n")
    head, rest = (message, b"") if end < 0 else (message[:end + 2], message[end + 2:])
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, rest


def _name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("latin-1").lower()


def from_addresses(message: bytes) -> list[str] | None:
    """The addresses of the one From: field, None without exactly one."""
    fields = [f for f in _split(message)[0] if _name(f) == "from"]
    if len(fields) != 1:
        return None
    value = fields[0].split(b":", 1)[1].decode("utf-8", "surrogateescape")
    addresses = [a for _, a in email.utils.getaddresses([" ".join(value.split())])]
    return addresses if addresses and all(is_address(a) for a in addresses) else None


def complete(message: bytes, hostname: str, now: float) -> bytes:
    """Bcc: removed (its recipients must not see each other, nor the others
    them); Date: and Message-ID: added when missing (RFC 6409 8.2, 8.3)."""
    fields, rest = _split(message)
    names = {_name(f) for f in fields}
    kept = [f for f in fields if _name(f) != "bcc"]
    if "date" not in names:
        kept.append(f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n".encode())
    if "message-id" not in names:
        kept.append(f"Message-ID: {email.utils.make_msgid(domain=hostname)}\r\n".encode())
    return b"".join(kept) + rest


def api_trace_header(hostname: str, queue_id: str, when: float) -> bytes:
    date = email.utils.formatdate(when, usegmt=True)
    return f"Received: by {hostname} (mailyard) with HTTP id {queue_id};\r\n\t{date}\r\n".encode()


# --- sending limits ---------------------------------------------------------------

class SendingLimits:
    """Per user, fixed windows (the UTC hour, the UTC day) in the Cache, so
    several submission and API processes share them once it is Redis. Attempts
    count, refused ones too. A cache outage lets mail through: limits protect
    the system and must not stop it."""

    def __init__(self, cache: Cache, messages_per_hour: int, recipients_per_day: int,
                 log: EventLog, clock=time.time):
        self.cache, self.log, self.clock = cache, log, clock
        self.messages_per_hour, self.recipients_per_day = messages_per_hour, recipients_per_day

    async def _count(self, key: str, amount: int, ttl: float) -> int | None:
        try:
            return await self.cache.incr(key, amount, ttl=ttl)
        except Exception as exc:
            self.log.error("limit_cache_failed", key=key, error=repr(exc))
            return None

    async def take_message(self, user: str) -> SubmitRefused | None:
        now = self.clock()
        hour = int(now // 3600)
        count = await self._count(f"submission:messages:{user}:{hour}", 1, 7200)
        if count is not None and count > self.messages_per_hour:
            # 450 4.7.1: temporary, so the client keeps the message and its
            # retry goes through once the hour turns (the MX's per-IP limit
            # answers the same way).
            return SubmitRefused(RATE_LIMITED, f"450 4.7.1 Sending rate limit of "
                                               f"{self.messages_per_hour} messages per hour "
                                               f"reached, try again later",
                                 retry_after=(hour + 1) * 3600 - now)
        return None

    async def take_recipients(self, user: str, amount: int) -> SubmitRefused | None:
        now = self.clock()
        day = int(now // 86400)
        count = await self._count(f"submission:recipients:{user}:{day}", amount, 2 * 86400)
        if count is not None and count > self.recipients_per_day:
            # 550 5.7.1: permanent, as Gmail answers its daily limit (550 5.4.5):
            # retrying for the rest of the day would only fill the client's
            # queue; the user should hear now that today's sending is used up.
            return SubmitRefused(DAILY_LIMIT, f"550 5.7.1 Daily limit of "
                                              f"{self.recipients_per_day} recipients reached",
                                 retry_after=(day + 1) * 86400 - now)
        return None


# --- the submit path --------------------------------------------------------------

class Submission:
    def __init__(self, config: Config, metadata: MetadataStore, blobs: BlobStore, queue: Queue,
                 cache: Cache, signer: Signer, log: EventLog | None = None):
        self.config, self.metadata, self.blobs, self.queue = config, metadata, blobs, queue
        self.signer = signer
        self.log = log or EventLog("submission")
        self.limits = SendingLimits(cache, config.submission.messages_per_hour,
                                    config.submission.recipients_per_day, self.log)
        self.aliases = {a.lower(): o.lower() for a, o in config.submission.aliases.items()}

    # --- checks ---------------------------------------------------------
    def owns(self, user: str, address: str) -> bool:
        address = address.strip().lower()
        return address == user or self.aliases.get(address) == user

    def sender_refusal(self, user: str, mail_from: str) -> SubmitRefused | None:
        if not self.owns(user, mail_from):
            return SubmitRefused(NOT_YOUR_ADDRESS, f"553 5.7.1 <{mail_from}>: Sender address "
                                                   f"rejected: not owned by user {user}")
        return None

    def header_refusal(self, user: str, message: bytes) -> SubmitRefused | None:
        authors = from_addresses(message)
        if authors is None:
            return SubmitRefused(BAD_MESSAGE, "550 5.6.0 The message needs exactly one From: "
                                              "field with valid addresses")
        for author in authors:
            if not self.owns(user, author):
                return SubmitRefused(NOT_YOUR_ADDRESS, f"553 5.7.1 From: <{author}> rejected: "
                                                       f"not owned by user {user}")
        return None

    async def recipient_refusal(self, address: str) -> SubmitRefused | None:
        """Raises what the MetadataStore raises (the caller answers 451)."""
        if not is_address(address):
            return SubmitRefused(BAD_MESSAGE, f"501 5.1.3 <{address}>: bad recipient address")
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if await self.metadata.has_domain(domain) and \
                not await resolve(self.config, self.metadata, address):
            return SubmitRefused(UNKNOWN_RECIPIENT,
                                 f"550 5.1.1 <{address}>: no such user here")
        return None

    # --- the API: every check at once, then deliver --------------------
    async def send(self, user: str, message: bytes, recipients: list[str]) -> Submitted:
        user = user.lower()
        recipients = unique(r.strip() for r in recipients if r.strip())
        if not recipients:
            raise SubmitRefused(BAD_MESSAGE, "554 5.5.1 No valid recipients")
        if len(recipients) > self.config.submission.max_recipients:
            raise SubmitRefused(BAD_MESSAGE, f"452 4.5.3 At most "
                                             f"{self.config.submission.max_recipients} recipients")
        message = _crlf(message)
        refusal = self.header_refusal(user, message)
        try:
            for rcpt in recipients:
                refusal = refusal or await self.recipient_refusal(rcpt)
        except Exception as exc:
            self.log.error("rcpt_check_failed", user=user, error=repr(exc))
            raise SubmitUnavailable(f"cannot check the recipients: {exc}") from exc
        refusal = (refusal or await self.limits.take_message(user)
                   or await self.limits.take_recipients(user, len(recipients)))
        if refusal:
            self.log.info("send_refused", user=user, reply=refusal.reply)
            raise refusal
        return await self.deliver(user, user, recipients, message, None)

    # --- delivery -------------------------------------------------------
    async def _route(self, recipients: list[str]) -> tuple[list[str], list[str]]:
        """Local recipients as the users they reach (aliases, lists, user+tag)."""
        local, remote = [], []
        for rcpt in recipients:
            domain = rcpt.rpartition("@")[2].lower().rstrip(".")
            if await self.metadata.has_domain(domain):
                local += await resolve(self.config, self.metadata, rcpt)
            else:
                remote.append(rcpt)
        return unique(local), remote

    def _trace(self, trace: Trace | None, queue_id: str, rcpts: list[str], when: float) -> bytes:
        if trace is None:
            return api_trace_header(self.config.hostname, queue_id, when)
        return received_header(helo=trace.helo, client_ip=trace.client_ip,
                               hostname=self.config.hostname, queue_id=queue_id,
                               protocol=trace.protocol, rcpts=rcpts, when=when,
                               tls_info=trace.tls_info)

    async def deliver(self, user: str, mail_from: str, recipients: list[str], message: bytes,
                      trace: Trace | None, smtputf8: bool = False) -> Submitted:
        """Sends a checked message; returns once every copy is durable."""
        queue_id = new_queue_id()
        now = time.time()
        now_ms = int(now * 1000)
        recipients = unique(recipients)
        smtputf8 = smtputf8 or not all(a.isascii() for a in (mail_from, *recipients))
        message = complete(message, self.config.hostname, now)
        domain = author_domain((from_addresses(message) or [mail_from])[0])
        try:
            signatures = await asyncio.to_thread(self.signer.signatures, message, domain, queue_id)
        except Exception as exc:  # a key dkimpy refuses: a configuration problem, say so
            self.log.error("dkim_sign_failed", queue_id=queue_id, domain=domain, error=repr(exc))
            raise SubmitUnavailable(f"DKIM signing failed: {exc}") from exc
        signed = signatures + message
        try:
            local, remote = await self._route(recipients)
            sent = await store_sent_copy(self.metadata, self.blobs, user, signed, queue_id, now_ms,
                                         self.config.delivery.min_part_size,
                                         self.config.delivery.thread_subject_window)
        except Exception as exc:
            self.log.error("sent_copy_failed", queue_id=queue_id, user=user, error=repr(exc))
            raise SubmitUnavailable(f"cannot store the SENT copy: {exc}") from exc
        try:
            await self._queue(user, mail_from, local, remote, signed, trace, queue_id, now,
                              smtputf8)
        except Exception as exc:
            self.log.error("queue_failed", queue_id=queue_id, user=user, error=repr(exc))
            try:
                await self.metadata.delete_messages(user, [sent.message_id])
            except Exception as undo:
                self.log.error("sent_copy_undo_failed", queue_id=queue_id, error=repr(undo))
            raise SubmitUnavailable(f"cannot queue the message: {exc}") from exc
        try:
            await announce(self.queue, ADDED, user, [sent.message_id])
        except Exception as exc:  # sent all the same; `mailyard search reindex` catches up
            self.log.error("index_event_failed", queue_id=queue_id, error=repr(exc))
        self.log.info("submitted", queue_id=queue_id, user=user, from_=mail_from,
                      local=len(local), remote=len(remote), size=len(signed),
                      dkim=signatures.count(b"DKIM-Signature:"))
        steps = [tracing.step(queue_id, tracing.SUBMITTED, at_ms=now_ms, user=user,
                              from_=mail_from, client_ip=trace.client_ip if trace else "",
                              via=trace.protocol if trace else "api",
                              tls=trace.tls_info if trace else "", sent_copy=sent.message_id)]
        if remote:
            steps.append(tracing.step(queue_id, tracing.QUEUED, "outbound", at_ms=now_ms,
                                      topic=OUTBOUND_TOPIC, rcpt_to=",".join(remote)))
        if local:
            steps.append(tracing.step(queue_id + LOCAL_SUFFIX, tracing.QUEUED, at_ms=now_ms,
                                      topic=INBOUND_TOPIC, for_=",".join(local)))
        # The queue id finds the local copy (ID-L) too; the SENT copy's id finds both.
        await tracing.record(self.metadata, self.log, steps,
                             [queue_id, sent.message_id, tracing.message_id_of(signed)])
        return Submitted(queue_id, sent, local, remote)

    async def _queue(self, user: str, mail_from: str, local: list[str], remote: list[str],
                     signed: bytes, trace: Trace | None, queue_id: str, now: float,
                     smtputf8: bool) -> None:
        """Outbound first: an outbound entry can be taken back (a record whose
        entry is gone is stale to the workers), a published inbound one cannot."""
        if remote:
            await queue_outbound(self.blobs, self.metadata, self.queue,
                                 self._trace(trace, queue_id, remote, now) + signed,
                                 events_pb2.OutboundEnvelope(
                                     queue_id=queue_id, mail_from=mail_from, rcpt_to=remote,
                                     user_id=user, smtputf8=smtputf8))
        if not local:
            return
        local_id = queue_id + LOCAL_SUFFIX
        try:
            await spool_and_queue(self.blobs, self.metadata, self.queue,
                                  self._trace(trace, local_id, local, now) + signed,
                                  gc=self.config.gc, envelope=events_pb2.InboundEnvelope(
                                      queue_id=local_id, mail_from=mail_from, rcpt_to=local,
                                      received_at_ms=int(now * 1000),
                                      client_ip=trace.client_ip if trace else "",
                                      helo=trace.helo if trace else "mailbox-api",
                                      smtputf8=smtputf8))
        except BaseException:
            if remote:
                await self.metadata.delete_outbound(queue_id)
            raise


def _crlf(message: bytes) -> bytes:
    """An API client's message in wire form: CRLF line ends, a final CRLF."""
    fixed = re.sub(rb"\r\n|\n|\r", b"\r\n", message)
    return fixed if fixed.endswith(b"\r\n") else fixed + b"\r\n"


async def open_submitter(config: Config, stores) -> Submission:
    """The launcher's factory: the mailbox and gateway services' Submitter."""
    log = EventLog("submission")
    return Submission(config, await stores.metadata(), await stores.blobs(),
                      await stores.queue(), await stores.cache(), open_signer(config, log), log)
