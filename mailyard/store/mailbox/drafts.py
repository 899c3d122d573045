"""Drafts and sending.

A draft write goes to the MetadataStore before the call returns, so the same
user reads it back at once from any device; each write bumps its version, and
an update or delete naming an older version is refused with ABORTED (another
device wrote since: re-read, merge, retry) instead of overwriting.

Sending (SendDraft, SendMessage) composes an RFC 5322 message from the
draft or the structured fields (compose.py), or takes the caller's raw one,
and hands it to the Submitter: the same path as SMTP submission (mta/submit.py),
which checks the sender and the sending limits, signs, stores the SENT copy
before it returns and queues local and remote recipients. Its refusals come
back as statuses: not the caller's From: PERMISSION_DENIED, a sending limit
RESOURCE_EXHAUSTED (with retry-after), a backend failure UNAVAILABLE.
"""
from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
import secrets
import time

import grpc

from mailyard.policy.config import Config
from mailyard.proto import mailbox_pb2
from mailyard.store.errors import NotFound, VersionConflict
from mailyard.store.mailbox.compose import compose
from mailyard.store.mailbox.inbox_cache import to_summary
from mailyard.store.mailbox.page_tokens import BadPageToken, PageTokens
from mailyard.store.metadata.base import Draft, MetadataStore
from mailyard.store.submitter import (BAD_MESSAGE, DAILY_LIMIT, NOT_YOUR_ADDRESS, RATE_LIMITED,
                                      UNKNOWN_RECIPIENT, Submitter, SubmitRefused,
                                      SubmitUnavailable)

MAX_RECIPIENTS = 100
MAX_SUBJECT = 998
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+$")
REFUSAL_STATUS = {
    BAD_MESSAGE: grpc.StatusCode.INVALID_ARGUMENT,
    UNKNOWN_RECIPIENT: grpc.StatusCode.INVALID_ARGUMENT,
    NOT_YOUR_ADDRESS: grpc.StatusCode.PERMISSION_DENIED,
    RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DAILY_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


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
    def __init__(self, config: Config, metadata: MetadataStore, tokens: PageTokens, log,
                 default_page_size: int, submitter: Submitter | None = None):
        self.config, self.metadata, self.tokens, self.log = config, metadata, tokens, log
        self.default_page_size = default_page_size
        self.submitter = submitter

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
        response = await self._send(user, draft, context, await self._compose(user, draft))
        try:
            await self.metadata.delete_draft(user, draft.draft_id, draft.version)
        except VersionConflict:  # edited while it was being sent: keep the newer text
            self.log.warning("draft_changed_while_sending", user=user, draft=draft.draft_id)
        return response

    async def send_message(self, user: str, request, context):
        draft = await self._draft(user, "", request.content, context)
        limit = self.config.submission.max_message_size
        if request.raw:
            content = request.content
            if content.subject or content.body or content.reply_to_id or request.html \
                    or request.attachments:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "raw excludes subject, body, reply_to_id, html and "
                                    "attachments (content may only name recipients)")
            if len(request.raw) > limit:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"raw message larger than {limit} bytes")
            if not (draft.to or draft.cc or draft.bcc):
                draft.to, draft.cc, draft.bcc = header_recipients(request.raw)
            return await self._send(user, draft, context, request.raw)
        for attachment in request.attachments:
            if attachment.content_type and not _CONTENT_TYPE.match(attachment.content_type):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"attachment {attachment.filename!r}: content_type must "
                                    f"be type/subtype, not {attachment.content_type!r}")
        size = len(request.html.encode()) + sum(len(a.data) for a in request.attachments)
        if size + len(draft.body.encode()) > limit:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"message larger than {limit} bytes")
        raw = await self._compose(user, draft, request.html, request.attachments)
        return await self._send(user, draft, context, raw)

    async def _compose(self, user: str, draft: Draft, html: str = "", attachments=()) -> bytes:
        parent = (await self.metadata.get_message(user, draft.reply_to_id)
                  if draft.reply_to_id else None)
        return compose(user, draft, parent, html, attachments)

    async def _send(self, user: str, draft: Draft, context, raw: bytes):
        """Hands the message to the submit path; its refusals become statuses."""
        recipients = [*draft.to, *draft.cc, *draft.bcc]
        if not recipients:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no recipients (to, cc, bcc)")
        if self.submitter is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this process has no submission path to send with")
        try:
            submitted = await self.submitter.send(user, raw, recipients)
        except SubmitRefused as exc:
            trailer = (("retry-after", f"{exc.retry_after:.3f}"),) if exc.retry_after else ()
            await context.abort(REFUSAL_STATUS.get(exc.kind, grpc.StatusCode.INVALID_ARGUMENT),
                                str(exc), trailing_metadata=trailer)
        except SubmitUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"sending unavailable: {exc}")
        return mailbox_pb2.SendResponse(sent=to_summary(submitted.sent),
                                        queue_id=submitted.queue_id)


def header_recipients(raw: bytes) -> tuple[list[str], list[str], list[str]]:
    """To:, Cc: and Bcc: addresses of a raw message (its envelope when the
    caller names none)."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)

    def addresses(name: str) -> list[str]:
        values = [str(v) for v in headers.get_all(name, [])]
        return [a for _, a in email.utils.getaddresses(values) if a]

    return addresses("to"), addresses("cc"), addresses("bcc")
