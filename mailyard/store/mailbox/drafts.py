"""Drafts and sending.

A draft write goes to the MetadataStore before the call returns, so the same
user reads it back at once from any device; each write bumps its version, and
an update or delete naming an older version is refused with ABORTED (another
device wrote since: re-read, merge, retry) instead of overwriting.

Sending (SendDraft, SendMessage) composes an RFC 5322 message from the
draft, stores the sender's SENT copy synchronously (so Sent is right as soon
as the call returns) and queues the message on mail.inbound for local
recipients, exactly as the MX does (store/spool.py), so the delivery worker
files it in their mailboxes. Remote recipients need the outbound path, which
does not exist yet: such a send answers FAILED_PRECONDITION and nothing is
sent or stored, never a silent drop.
"""
from __future__ import annotations

import email.policy
import email.utils
import hashlib
import secrets
import time
from email.message import EmailMessage

import grpc

from mailyard.policy.config import Config
from mailyard.proto import events_pb2, mailbox_pb2
from mailyard.store.blobs.base import BlobStore
from mailyard.store.errors import NotFound, VersionConflict
from mailyard.store.mailbox.inbox_cache import to_summary
from mailyard.store.mailbox.index_events import ADDED, announce
from mailyard.store.mailbox.page_tokens import BadPageToken, PageTokens
from mailyard.store.messages import find_thread, store_content
from mailyard.store.metadata.base import Draft, MessageRecord, MetadataStore
from mailyard.store.queue.base import Queue
from mailyard.store.spool import spool_and_queue

MAX_RECIPIENTS = 100
MAX_SUBJECT = 998


def draft_to_proto(draft: Draft) -> mailbox_pb2.Draft:
    return mailbox_pb2.Draft(
        id=draft.draft_id, version=draft.version, updated_at=draft.updated_at_ms,
        content=mailbox_pb2.DraftContent(to=draft.to, cc=draft.cc, bcc=draft.bcc,
                                         subject=draft.subject, body=draft.body,
                                         reply_to_id=draft.reply_to_id))


def _address_problem(address: str) -> str | None:
    name, parsed = email.utils.parseaddr(address)
    local, _, domain = parsed.rpartition("@")
    if not parsed or not local or not domain or parsed != address.strip() or " " in parsed:
        return f"invalid address {address!r} (expected user@domain)"
    return None


class DraftsHandler:
    def __init__(self, config: Config, metadata: MetadataStore, blobs: BlobStore, queue: Queue,
                 tokens: PageTokens, inbox, log, default_page_size: int):
        self.config, self.metadata, self.blobs, self.queue = config, metadata, blobs, queue
        self.tokens, self.inbox, self.log = tokens, inbox, log
        self.default_page_size = default_page_size

    # --- drafts --------------------------------------------------------
    async def _draft(self, user: str, draft_id: str, content, context) -> Draft:
        """The draft a request describes, validated."""
        for address in (*content.to, *content.cc, *content.bcc):
            problem = _address_problem(address)
            if problem:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if len(content.to) + len(content.cc) + len(content.bcc) > MAX_RECIPIENTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at most {MAX_RECIPIENTS} recipients")
        if len(content.subject) > MAX_SUBJECT or "\n" in content.subject or "\r" in content.subject:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"subject must be one line of at most {MAX_SUBJECT} characters")
        if len(content.body.encode()) > self.config.mx.max_message_size:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "body too large")
        if content.reply_to_id and await self.metadata.get_message(user, content.reply_to_id) is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"reply_to_id: message {content.reply_to_id!r} not found")
        return Draft(user_id=user, draft_id=draft_id, updated_at_ms=int(time.time() * 1000),
                     to=list(content.to), cc=list(content.cc), bcc=list(content.bcc),
                     subject=content.subject, body=content.body, reply_to_id=content.reply_to_id)

    async def create(self, user: str, request, context):
        draft = await self._draft(user, secrets.token_hex(10), request.content, context)
        return draft_to_proto(await self.metadata.put_draft(draft, 0))

    async def get(self, user: str, request, context):
        draft = await self.metadata.get_draft(user, request.id) if request.id else None
        if draft is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"draft {request.id!r} not found")
        return draft_to_proto(draft)

    async def update(self, user: str, request, context):
        if request.version <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "version must be the version the update was made from (>= 1)")
        draft = await self._draft(user, request.id, request.content, context)
        try:
            return draft_to_proto(await self.metadata.put_draft(draft, request.version))
        except NotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"draft {request.id!r} not found")
        except VersionConflict as exc:
            await context.abort(grpc.StatusCode.ABORTED,
                                f"{exc}: it was changed elsewhere; read it again and retry")

    async def list(self, user: str, request, context):
        if request.page_size < 0 or request.page_size > self.config.mailbox.max_page_size:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"page_size must be 0..{self.config.mailbox.max_page_size}")
        size = request.page_size or self.default_page_size
        scope = f"{user}\0drafts"
        after = None
        if request.page_token:
            try:
                after = self.tokens.decode(scope, request.page_token)
            except BadPageToken as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        drafts = await self.metadata.list_drafts(user, size + 1, after)
        page = drafts[:size]
        token = (self.tokens.encode(scope, (page[-1].updated_at_ms, page[-1].draft_id))
                 if len(drafts) > size else "")
        return mailbox_pb2.ListDraftsResponse(drafts=[draft_to_proto(d) for d in page],
                                              next_page_token=token)

    async def delete(self, user: str, request, context):
        try:
            deleted = request.id and await self.metadata.delete_draft(user, request.id,
                                                                      request.version)
        except VersionConflict as exc:
            await context.abort(grpc.StatusCode.ABORTED,
                                f"{exc}: it was changed elsewhere; read it again and retry")
        if not deleted:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"draft {request.id!r} not found")
        return mailbox_pb2.DeleteDraftResponse()

    # --- sending -------------------------------------------------------
    async def send_draft(self, user: str, request, context):
        draft = await self.metadata.get_draft(user, request.id) if request.id else None
        if draft is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"draft {request.id!r} not found")
        if request.version and request.version != draft.version:
            await context.abort(grpc.StatusCode.ABORTED,
                                f"draft {request.id!r} is at version {draft.version}, not "
                                f"{request.version}: read it again and retry")
        response = await self._send(user, draft, context)
        try:
            await self.metadata.delete_draft(user, draft.draft_id, draft.version)
        except VersionConflict:  # edited while it was being sent: keep the newer text
            self.log.warning("draft_changed_while_sending", user=user, draft=draft.draft_id)
        return response

    async def send_message(self, user: str, request, context):
        draft = await self._draft(user, "", request.content, context)
        return await self._send(user, draft, context)

    async def _recipients(self, draft: Draft, context) -> list[str]:
        """The local recipients (users of local domains), once each; a send
        naming anybody else is refused before anything is stored."""
        recipients = list(dict.fromkeys(a.strip().lower() for a in
                                        (*draft.to, *draft.cc, *draft.bcc)))
        if not recipients:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no recipients (to, cc, bcc)")
        for address in recipients:
            problem = _address_problem(address)
            if problem:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        remote = [a for a in recipients if not await self.metadata.has_domain(a.rpartition("@")[2])]
        if remote:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"remote delivery is not available yet: {', '.join(remote)}")
        for address in recipients:
            if await self.metadata.get_user(address) is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"no such user here: {address}")
        return recipients

    async def _compose(self, user: str, draft: Draft, now: float) -> bytes:
        message = EmailMessage()
        message["From"] = user
        if draft.to:
            message["To"] = ", ".join(draft.to)
        if draft.cc:
            message["Cc"] = ", ".join(draft.cc)   # Bcc is never written into the message
        message["Subject"] = draft.subject
        message["Date"] = email.utils.formatdate(now, usegmt=True)
        message["Message-ID"] = email.utils.make_msgid(domain=user.rpartition("@")[2])
        if draft.reply_to_id:
            parent = await self.metadata.get_message(user, draft.reply_to_id)
            if parent is not None and parent.rfc822_message_id:
                refs = [*parent.references, parent.rfc822_message_id]
                message["In-Reply-To"] = f"<{parent.rfc822_message_id}>"
                message["References"] = " ".join(f"<{r}>" for r in dict.fromkeys(refs))
        message.set_content(draft.body)
        return message.as_bytes(policy=email.policy.SMTP)

    async def _send(self, user: str, draft: Draft, context):
        recipients = await self._recipients(draft, context)
        now = time.time()
        now_ms = int(now * 1000)
        raw = await self._compose(user, draft, now)
        queue_id = "A" + secrets.token_hex(9).upper()
        # The SENT copy first, synchronously: Sent is right when the call returns.
        stored = await store_content(self.blobs, raw, self.config.delivery.min_part_size)
        message_id = hashlib.sha256(f"{queue_id}\0sent\0{user}".encode()).hexdigest()[:20]
        thread_id = await find_thread(self.metadata, user, stored.summary, now_ms,
                                      self.config.delivery.thread_subject_window) or message_id
        summary = stored.summary
        record = MessageRecord(
            user_id=user, message_id=message_id, thread_id=thread_id, received_at_ms=now_ms,
            skeleton_key=stored.skeleton_key, size=stored.size,
            rfc822_message_id=summary.rfc822_message_id, references=summary.references,
            sender=summary.sender, to=summary.to, cc=summary.cc, subject=summary.subject,
            snippet=summary.snippet, labels={"SENT"}, has_attachments=bool(stored.attachments),
            attachments=stored.attachments, queue_id=queue_id)
        await self.metadata.link_blobs(f"{user}/{message_id}", stored.blob_keys)
        await self.metadata.put_message(record)
        try:
            await spool_and_queue(self.blobs, self.queue, raw, events_pb2.InboundEnvelope(
                queue_id=queue_id, mail_from=user, rcpt_to=recipients, received_at_ms=now_ms,
                client_ip="127.0.0.1", helo="mailbox-api"))
        except Exception:
            # Not queued, so not sent: take the SENT copy back and let the client retry.
            await self.metadata.delete_messages(user, [message_id])
            raise
        await announce(self.queue, ADDED, user, [message_id])
        self.log.info("sent", queue_id=queue_id, user=user, message_id=message_id,
                      rcpts=len(recipients))
        return mailbox_pb2.SendResponse(sent=to_summary(record), queue_id=queue_id)

