"""Delivery status notifications (RFC 3464): a multipart/report with a human
part, the machine-readable message/delivery-status part and the original
headers (text/rfc822-headers), put in the sending user's INBOX through
mail.inbound like any other local delivery.

A report's queue id comes from the original's queue id and generation, and the
delivery worker derives message ids from queue ids, so a report written twice
(a crash replays the attempt) is stored once.
"""
from __future__ import annotations

import email.utils
import hashlib
import re
import time

from mailyard.mta.outbound.outcome import Outcome
from mailyard.proto import events_pb2
from mailyard.policy.config import GcConfig
from mailyard.store.blobs.base import BlobStore
from mailyard.store.metadata.base import MetadataStore
from mailyard.store.queue.base import Queue
from mailyard.store.spool import spool_and_queue

FAILED, DELAYED = "failed", "delayed"

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
_SUBJECT = re.compile(rb"^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def report_queue_id(envelope: events_pb2.OutboundEnvelope, action: str) -> str:
    """One failure report per generation (each names other recipients), one
    delay warning per message."""
    if action == DELAYED:
        return f"{envelope.queue_id}.delayed"
    return f"{envelope.queue_id}.failed.{envelope.generation}"


def header_section(raw: bytes) -> bytes:
    """The original's header fields, CRLF line ends, without the empty line."""
    end = re.search(rb"\r?\n\r?\n", raw)
    head = raw[:end.start()] if end else raw
    return re.sub(rb"\r?\n", b"\r\n", head).rstrip(b"\r\n") + b"\r\n"


def build(*, hostname: str, envelope: events_pb2.OutboundEnvelope, raw: bytes,
          outcomes: dict[str, Outcome], action: str, now_ms: int,
          retry_until_ms: int = 0) -> bytes:
    """The report as bytes (CRLF line ends)."""
    queue_id = report_queue_id(envelope, action)
    boundary = "=_" + hashlib.sha256(queue_id.encode()).hexdigest()[:24]
    headers = header_section(raw)
    found = _MESSAGE_ID.search(headers)
    original_id = found.group(1).decode("ascii", "replace") if found else ""
    subject = _SUBJECT.search(headers)
    original_subject = (" ".join(subject.group(1).decode("utf-8", "replace").split())
                        if subject else "")
    date = email.utils.formatdate(now_ms / 1000, usegmt=True)
    arrived = email.utils.formatdate(envelope.submitted_at_ms / 1000, usegmt=True)

    lines = [f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
             f"To: <{envelope.mail_from}>",
             "Subject: " + ("Undelivered Mail Returned to Sender" if action == FAILED
                            else "Delayed Mail (still being retried)"),
             f"Date: {date}",
             f"Message-ID: <{queue_id}@{hostname}>"]
    if original_id:  # so the report joins the original's thread
        lines += [f"In-Reply-To: {original_id}", f"References: {original_id}"]
    lines += ["Auto-Submitted: auto-replied",
              "MIME-Version: 1.0",
              f'Content-Type: multipart/report; report-type=delivery-status;\r\n'
              f'\tboundary="{boundary}"',
              "",
              "This is a MIME-encapsulated message.",
              "",
              f"--{boundary}",
              "Content-Type: text/plain; charset=utf-8",
              "Content-Transfer-Encoding: 8bit",
              "",
              *_human(hostname, envelope, outcomes, action, original_subject, retry_until_ms),
              "",
              f"--{boundary}",
              "Content-Type: message/delivery-status",
              "",
              f"Reporting-MTA: dns; {hostname}",
              f"X-Mailyard-Queue-ID: {envelope.queue_id}",
              f"Arrival-Date: {arrived}"]
    for rcpt, result in outcomes.items():
        lines += ["",
                  f"Final-Recipient: rfc822; {rcpt}",
                  f"Action: {action}",
                  f"Status: {result.status}"]
        if result.remote_mta:
            lines.append(f"Remote-MTA: dns; {result.remote_mta}")
        lines += [f"Diagnostic-Code: {result.diagnostic_code}",
                  f"Last-Attempt-Date: {date}"]
        if action == DELAYED and retry_until_ms:
            lines.append("Will-Retry-Until: "
                         + email.utils.formatdate(retry_until_ms / 1000, usegmt=True))
    lines += ["",
              f"--{boundary}",
              "Content-Type: text/rfc822-headers",
              "Content-Transfer-Encoding: 8bit",
              ""]
    return ("\r\n".join(lines) + "\r\n").encode() + headers + f"\r\n--{boundary}--\r\n".encode()


def _human(hostname: str, envelope: events_pb2.OutboundEnvelope, outcomes: dict[str, Outcome],
           action: str, subject: str, retry_until_ms: int) -> list[str]:
    about = f'your message "{subject}"' if subject else "your message"
    if action == FAILED:
        text = [f"This is the mail system at {hostname}.", "",
                f"I am sorry: {about} could not be delivered to the",
                "recipients below, and it will not be tried again."]
    else:
        until = email.utils.formatdate(retry_until_ms / 1000, usegmt=True)
        text = [f"This is the mail system at {hostname}.", "",
                f"This is only a warning: {about} has not been",
                "delivered yet to the recipients below. Delivery is being retried",
                f"until {until}; you do not need to send it again."]
    text.append("")
    for rcpt, result in outcomes.items():
        via = f"host {result.remote_mta} said" if result.remote_mta else "reason"
        text.append(f"<{rcpt}>: {via}: {result.diagnostic}")
    return text


async def send(blobs: BlobStore, queue: Queue, metadata: MetadataStore, gc: GcConfig, *,
               hostname: str,
               envelope: events_pb2.OutboundEnvelope, raw: bytes,
               outcomes: dict[str, Outcome], action: str, retry_until_ms: int = 0) -> str:
    """Queues the report for the sending user's INBOX; returns its queue id."""
    now_ms = int(time.time() * 1000)
    report = build(hostname=hostname, envelope=envelope, raw=raw, outcomes=outcomes,
                   action=action, now_ms=now_ms, retry_until_ms=retry_until_ms)
    queue_id = report_queue_id(envelope, action)
    await spool_and_queue(blobs, metadata, queue, report, gc=gc,
                          envelope=events_pb2.InboundEnvelope(
        queue_id=queue_id, mail_from="", rcpt_to=[envelope.user_id.lower()],
        received_at_ms=now_ms, helo=hostname, client_ip="127.0.0.1",
        smtputf8=envelope.smtputf8))
    return queue_id
