"""The gRPC mailbox service (package mailyard.mailbox.v1, service Mailbox).

Every call is authenticated with a bearer JWT, charged to the caller's quota
(ratelimit.py), and acts only on the caller's own mailbox: an id that is not
the caller's answers NOT_FOUND, exactly like one that does not exist.

This module is the thin gRPC surface; each concern lives in its own module
(trash, labels, threads, drafts, watch, search), and the REST gateway
(gateway/) calls these same methods.
"""
from __future__ import annotations

import asyncio
import email.header
import email.parser
import email.policy

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mailyard.policy.config import Config, parse_listen
from mailyard.policy.logs import EventLog
from mailyard.policy.tls import listener_mode
from mailyard.proto import mailbox_pb2, mailbox_pb2_grpc
from mailyard.store.blobs.base import BlobStore
from mailyard.store.errors import StorageError
from mailyard.store.quota import usage_of
from mailyard.store.mailbox.auth import AuthError, TokenVerifier
from mailyard.store.mailbox.bounded_details import BoundedDetailsInterceptor
from mailyard.store.mailbox.call_metrics import CallMetricsInterceptor
from mailyard.store.mailbox.drafts import DraftsHandler
from mailyard.store.mailbox import grpc_tls
from mailyard.store.mailbox.inbox_cache import INBOX, InboxCache, to_summary
from mailyard.store.mailbox.index_events import INDEX_TOPIC, LABELS_CHANGED, announce
from mailyard.store.mailbox.labels import LABEL_NAME, LabelsHandler, user_label_problem
from mailyard.store.mailbox.page_tokens import BadPageToken, PageTokens, load_secret
from mailyard.store.mailbox.ratelimit import Quota, QuotaExceeded
from mailyard.store.mailbox.safe_html import SafeHtml, sanitize
from mailyard.store.mailbox.search import CircuitBreaker, Searcher, SearchHandler
from mailyard.store.mailbox.threads import ThreadsHandler
from mailyard.store.mailbox.trash import MAX_IDS, TrashHandler
from mailyard.store.mailbox.watch import WatchHandler
from mailyard.store.metadata.base import SYSTEM_LABELS
from mailyard.store.metadata.base import MessageRecord, MetadataStore
from mailyard.store.mime import decode_part, summarize
from mailyard.store.queue.base import Queue
from mailyard.store.raw import load_raw  # noqa: F401  (also imported from here)
from mailyard.store.spam_feedback import SpamFeedback
from mailyard.store.submitter import Submitter

SERVICE_NAME = "mailyard.mailbox.v1.Mailbox"
DEFAULT_PAGE_SIZE = 50
_LABEL = LABEL_NAME
__all__ = ["INDEX_TOPIC", "MailboxService", "serve"]


def header_list(raw: bytes) -> list[mailbox_pb2.Header]:
    """The header fields in order, RFC 2047 words decoded where they decode."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    headers = []
    for name, value in parsed.items():
        text = str(value)
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except Exception:
            pass
        headers.append(mailbox_pb2.Header(name=name, value=" ".join(text.split())))
    return headers


def _readable(raw: bytes, allow_remote_images: bool):
    """The summary of a message and its HTML body made safe to render."""
    summary = summarize(raw)
    html = summary.html_body
    return summary, sanitize(html, allow_remote_images) if html else SafeHtml("", False)


class MailboxService(mailbox_pb2_grpc.MailboxServicer):
    def __init__(self, config: Config, metadata: MetadataStore, blobs: BlobStore,
                 cache, queue: Queue, log: EventLog | None = None,
                 searcher: Searcher | None = None, submitter: Submitter | None = None,
                 spam_feedback: SpamFeedback | None = None):
        self.config = config
        self.metadata = metadata
        self.spam_feedback = spam_feedback
        self.blobs = blobs
        self.queue = queue
        self.log = log or EventLog("mailbox")
        self.verifier = TokenVerifier(config)
        self.tokens = PageTokens(load_secret(config.data_path))
        self.inbox = InboxCache(cache, metadata, config.delivery.inbox_cache_size,
                                config.delivery.inbox_cache_ttl, self.log)
        self.search = SearchHandler(
            searcher, metadata, self.tokens,
            CircuitBreaker(config.search.breaker_failures, config.search.breaker_reset,
                           config.search.timeout),
            config.mailbox.max_page_size, DEFAULT_PAGE_SIZE)
        self.quota = Quota(cache, config.mailbox.quota_units, config.mailbox.quota_window,
                           self.log)
        self.stopping = asyncio.Event()  # set at shutdown: open watch streams end
        self.trash = TrashHandler(metadata, queue, self.inbox)
        self.labels = LabelsHandler(metadata, queue, self.inbox)
        self.threads = ThreadsHandler(metadata, self.tokens, config.mailbox.max_page_size,
                                      DEFAULT_PAGE_SIZE)
        self.drafts = DraftsHandler(config, metadata, self.tokens, self.log, DEFAULT_PAGE_SIZE,
                                    submitter)
        self.watch = WatchHandler(metadata, config.mailbox.watch_poll_interval, self.stopping,
                                  config.mailbox.max_page_size)

    async def _user(self, context: grpc.aio.ServicerContext, method: str = "") -> str:
        """The caller, authenticated and charged for `method`."""
        authorization = dict(context.invocation_metadata()).get("authorization")
        try:
            if self.verifier.blocking:
                user = await asyncio.to_thread(self.verifier.verify, authorization)
            else:
                user = self.verifier.verify(authorization)
        except AuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        try:
            await self.quota.charge(user, method)
        except QuotaExceeded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                                trailing_metadata=exc.status_details())
        return user

    async def _record(self, user: str, message_id: str, context) -> MessageRecord:
        record = await self.metadata.get_message(user, message_id) if message_id else None
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"message {message_id!r} not found")
        return record

    async def ListMessages(self, request, context):
        user = await self._user(context, "ListMessages")
        label = request.label or INBOX
        if not _LABEL.match(label):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid label {label!r}")
        if request.page_size < 0 or request.page_size > self.config.mailbox.max_page_size:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"page_size must be 0..{self.config.mailbox.max_page_size}")
        size = request.page_size or DEFAULT_PAGE_SIZE
        scope = f"{user}\0{label}"
        async with _storage_errors_as_unavailable(context):
            if label == INBOX and not request.page_token and size <= self.inbox.size:
                head = await self.inbox.read(user)
                if head is not None:
                    return self._page_from_head(head, size, scope)
            try:
                after = self.tokens.decode(scope, request.page_token) if request.page_token else None
            except BadPageToken as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            records = await self.metadata.list_messages(user, label, size + 1, after)
            unread = await self.metadata.count_messages(user, label, unread_only=True)
        page = records[:size]
        token = ""
        if len(records) > size:
            token = self.tokens.encode(scope, (page[-1].received_at_ms, page[-1].message_id))
        return mailbox_pb2.ListMessagesResponse(
            messages=[to_summary(r) for r in page], next_page_token=token, unread_count=unread)

    def _page_from_head(self, head, size: int, scope: str):
        page = head.messages[:size]
        more = len(head.messages) > size or len(head.messages) >= self.inbox.size
        token = self.tokens.encode(scope, (page[-1].received_at, page[-1].id)) if more and page else ""
        return mailbox_pb2.ListMessagesResponse(messages=page, next_page_token=token,
                                                unread_count=head.unread_count)

    async def GetMessage(self, request, context):
        user = await self._user(context, "GetMessage")
        async with _storage_errors_as_unavailable(context):
            record = await self._record(user, request.id, context)
            raw = await load_raw(self.blobs, record.skeleton_key)
        message = mailbox_pb2.Message(summary=to_summary(record))
        if request.format == mailbox_pb2.RAW:
            message.raw = raw
            return message
        message.headers.extend(header_list(raw))
        message.cc.extend(record.cc)
        message.rfc822_message_id = record.rfc822_message_id
        message.malformed = record.malformed
        message.attachments.extend(
            mailbox_pb2.Attachment(id=a.id, filename=a.filename, content_type=a.content_type,
                                   size=a.size, sha256=a.sha256) for a in record.attachments)
        if request.format == mailbox_pb2.FULL:
            summary, safe = await asyncio.to_thread(_readable, raw, request.allow_remote_images)
            message.text_body = summary.text_body or ""
            message.html_body = safe.html
            message.remote_content_blocked = safe.remote_content_blocked
        return message

    async def GetAttachment(self, request, context):
        user = await self._user(context, "GetAttachment")
        async with _storage_errors_as_unavailable(context):
            record = await self._record(user, request.message_id, context)
            attachment = next((a for a in record.attachments if a.id == request.attachment_id), None)
            if attachment is None or not attachment.blob_key:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"attachment {request.attachment_id!r} not found")
            data = decode_part(await self.blobs.get(attachment.blob_key),
                               attachment.transfer_encoding)
        chunk = self.config.mailbox.attachment_chunk_size
        for start in range(0, max(len(data), 1), chunk):
            yield mailbox_pb2.AttachmentChunk(data=data[start:start + chunk])

    async def ModifyLabels(self, request, context):
        user = await self._user(context, "ModifyLabels")
        if not request.ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ids must not be empty")
        # Bounded like the trash calls: an unbounded batch is one huge storage query.
        if len(request.ids) > MAX_IDS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"ids must name 1..{MAX_IDS} messages")
        for label in request.remove_labels:
            if not _LABEL.match(label):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid label {label!r}")
        for label in request.add_labels:  # a user label is created on first use
            problem = None if label in SYSTEM_LABELS else user_label_problem(label)
            if problem:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        async with _storage_errors_as_unavailable(context):
            records = await self.metadata.modify_labels(
                user, list(request.ids), set(request.add_labels), set(request.remove_labels))
            if not records:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such messages")
            await self.labels.ensure(user, set(request.add_labels) - set(request.remove_labels))
            await self.inbox.refresh(user)
            await announce(self.queue, LABELS_CHANGED, user, [r.message_id for r in records])
            # Moving mail into or out of SPAM is the spam classifier's teacher.
            if self.spam_feedback is not None and "SPAM" in {*request.add_labels,
                                                             *request.remove_labels}:
                await self.spam_feedback.learn(user, [r.message_id for r in records],
                                               "SPAM" not in request.remove_labels)
        return mailbox_pb2.ModifyLabelsResponse(messages=[to_summary(r) for r in records])

    async def Search(self, request, context):
        user = await self._user(context, "Search")
        async with _storage_errors_as_unavailable(context):
            return await self.search(user, request, context)

    async def _unary(self, method: str, handler, request, context):
        user = await self._user(context, method)
        async with _storage_errors_as_unavailable(context):
            return await handler(user, request, context)

    # --- trash and delete (trash.py) -----------------------------------
    async def TrashMessages(self, request, context):
        return await self._unary("TrashMessages", self.trash.trash, request, context)

    async def UntrashMessages(self, request, context):
        return await self._unary("UntrashMessages", self.trash.untrash, request, context)

    async def DeleteMessages(self, request, context):
        return await self._unary("DeleteMessages", self.trash.delete, request, context)

    # --- storage usage (store/quota.py) ----------------------------------
    async def GetUsage(self, request, context):
        async def usage(user: str, request, context):
            found = await usage_of(self.metadata, self.config.quota, user)
            return mailbox_pb2.Usage(used_bytes=found.used, limit_bytes=found.limit)
        return await self._unary("GetUsage", usage, request, context)

    # --- labels (labels.py) ----------------------------------------------
    async def ListLabels(self, request, context):
        return await self._unary("ListLabels", self.labels.list, request, context)

    async def CreateLabel(self, request, context):
        return await self._unary("CreateLabel", self.labels.create, request, context)

    async def RenameLabel(self, request, context):
        return await self._unary("RenameLabel", self.labels.rename, request, context)

    async def DeleteLabel(self, request, context):
        return await self._unary("DeleteLabel", self.labels.delete, request, context)

    # --- threads (threads.py) --------------------------------------------
    async def GetThread(self, request, context):
        return await self._unary("GetThread", self.threads.get, request, context)

    async def ListThreads(self, request, context):
        return await self._unary("ListThreads", self.threads.list, request, context)

    # --- drafts and sending (drafts.py) ----------------------------------
    async def CreateDraft(self, request, context):
        return await self._unary("CreateDraft", self.drafts.create, request, context)

    async def GetDraft(self, request, context):
        return await self._unary("GetDraft", self.drafts.get, request, context)

    async def UpdateDraft(self, request, context):
        return await self._unary("UpdateDraft", self.drafts.update, request, context)

    async def ListDrafts(self, request, context):
        return await self._unary("ListDrafts", self.drafts.list, request, context)

    async def DeleteDraft(self, request, context):
        return await self._unary("DeleteDraft", self.drafts.delete, request, context)

    async def SendDraft(self, request, context):
        return await self._unary("SendDraft", self.drafts.send_draft, request, context)

    async def SendMessage(self, request, context):
        return await self._unary("SendMessage", self.drafts.send_message, request, context)

    # --- changes (watch.py) ----------------------------------------------
    async def WatchMailbox(self, request, context):
        user = await self._user(context, "WatchMailbox")
        async with _storage_errors_as_unavailable(context):
            async for change in self.watch.watch(user, request, context):
                yield change

    async def ListChanges(self, request, context):
        return await self._unary("ListChanges", self.watch.list, request, context)


class _storage_errors_as_unavailable:
    """A backend outage is UNAVAILABLE (retryable), never INTERNAL or a hang."""

    def __init__(self, context: grpc.aio.ServicerContext):
        self.context = context

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, StorageError):
            await self.context.abort(grpc.StatusCode.UNAVAILABLE, f"storage unavailable: {exc}")
        return False


async def serve(config: Config, stores, stop: asyncio.Event, ready=None,
                searcher: Searcher | None = None, submitter: Submitter | None = None,
                spam_feedback: SpamFeedback | None = None) -> None:
    log = EventLog("mailbox")
    service = MailboxService(config, await stores.metadata(), await stores.blobs(),
                             await stores.cache(), await stores.queue(), log, searcher,
                             submitter, spam_feedback)
    # Outermost first: the latency includes the bounded-details wrapper.
    server = grpc.aio.server(interceptors=[CallMetricsInterceptor(), BoundedDetailsInterceptor()])
    mailbox_pb2_grpc.add_MailboxServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    host, port = parse_listen(config.mailbox.listen)
    bound = grpc_tls.add_port(server, f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                              config.mailbox.tls)
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("listening", address=f"{host}:{bound}", tls=listener_mode(config.mailbox.tls))
    if ready:
        ready((host, bound))
    await stop.wait()
    service.stopping.set()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)
    log.info("stopped")
