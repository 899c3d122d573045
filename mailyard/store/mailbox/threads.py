"""Conversations. The delivery worker (and SendDraft for SENT copies) puts each
message in a thread by References/In-Reply-To, with a subject fallback for
replies whose client dropped them (store/messages.py: find_thread); threads
are per user, so two users' copies of one conversation never merge.

ListThreads walks the label's listing newest first and shows each thread once,
at the position of its newest message under that label; the page token is the
listing cursor, so pages stay stable while mail arrives. A page can come back
short (even empty) with a token when the rest of its listing belonged to
threads already shown; the last page has no token.
"""
from __future__ import annotations

import grpc

from mailyard.proto import mailbox_pb2
from mailyard.store.mailbox.inbox_cache import INBOX, to_summary
from mailyard.store.mailbox.labels import label_problem
from mailyard.store.mailbox.page_tokens import BadPageToken, PageTokens
from mailyard.store.metadata.base import MetadataStore

SCAN_LIMIT = 2000  # listing rows one page may read before it returns with a token


class ThreadsHandler:
    def __init__(self, metadata: MetadataStore, tokens: PageTokens, max_page_size: int,
                 default_page_size: int):
        self.metadata, self.tokens = metadata, tokens
        self.max_page_size, self.default_page_size = max_page_size, default_page_size

    async def get(self, user: str, request, context):
        records = await self.metadata.list_thread(user, request.id) if request.id else []
        if not records:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"thread {request.id!r} not found")
        return mailbox_pb2.Thread(id=request.id, messages=[to_summary(r) for r in records])

    async def list(self, user: str, request, context):
        label = request.label or INBOX
        problem = label_problem(label)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if request.page_size < 0 or request.page_size > self.max_page_size:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"page_size must be 0..{self.max_page_size}")
        size = request.page_size or self.default_page_size
        scope = f"{user}\0threads\0{label}"
        cursor = None
        if request.page_token:
            try:
                cursor = self.tokens.decode(scope, request.page_token)
            except BadPageToken as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        threads: list[mailbox_pb2.ThreadSummary] = []
        scanned, more = 0, True
        while len(threads) < size and scanned < SCAN_LIMIT:
            batch = await self.metadata.list_messages(user, label, size + 1, cursor)
            if not batch:
                more = False
                break
            for record in batch:
                scanned += 1
                cursor = (record.received_at_ms, record.message_id)
                thread = await self.metadata.list_thread(user, record.thread_id)
                under_label = [m for m in thread if label in m.labels]
                if not under_label or under_label[-1].message_id != record.message_id:
                    continue  # shown where its newer message is
                threads.append(mailbox_pb2.ThreadSummary(
                    id=record.thread_id, latest=to_summary(record), message_count=len(thread),
                    unread=any(m.unread for m in thread)))
                if len(threads) == size:
                    break
            else:
                if len(batch) < size + 1:
                    more = False
                    break
        token = self.tokens.encode(scope, cursor) if more and cursor else ""
        return mailbox_pb2.ListThreadsResponse(threads=threads, next_page_token=token)
