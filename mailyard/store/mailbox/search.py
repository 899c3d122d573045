"""Search as the mailbox service sees it: a Searcher it is handed, behind a circuit breaker.

The service must not import searchd (dependencies point one way), so it
declares here what it needs; the launcher hands it searchd's implementation.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import grpc

from mailyard.proto import mailbox_pb2
from mailyard.store.mailbox.inbox_cache import to_summary
from mailyard.store.mailbox.page_tokens import BadPageToken


class InvalidQuery(ValueError):
    """A query the searcher cannot parse: INVALID_ARGUMENT, with where and why."""

    def __init__(self, position: int, reason: str):
        self.position, self.reason = position, reason
        super().__init__(f"position {position}: {reason}")


@dataclass(slots=True)
class SearchResult:
    message_ids: list[str]     # newest first
    next_position: str | None  # opaque: hand back as `after` for the next page


class Searcher(Protocol):
    def check(self, query: str) -> None:
        """Raises InvalidQuery when the query cannot be parsed (no backend call),
        so a bad query is INVALID_ARGUMENT even while the backend is down."""
        ...

    async def search(self, user_id: str, query: str, limit: int,
                     after: str | None = None) -> SearchResult:
        """The user's messages matching `query`, newest first, after a position
        from an earlier result. Raises InvalidQuery for a query it cannot parse
        and StorageError when the backend fails."""
        ...


class SearchUnavailable(Exception):
    """The search backend is down (or the breaker is open): UNAVAILABLE, at once."""


class CircuitBreaker:
    """Fails fast once the backend has failed `failures` times in a row: for
    `reset_after` seconds calls are refused without touching it, then one trial
    call goes through and closes the breaker if it succeeds. A call slower than
    `timeout` counts as a failure, so a hung backend cannot hang the API."""

    def __init__(self, failures: int = 3, reset_after: float = 10.0, timeout: float = 5.0,
                 clock=time.monotonic):
        self.failures, self.reset_after, self.timeout, self.clock = failures, reset_after, timeout, clock
        self._consecutive = 0
        self._open_until = 0.0
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        return self._consecutive >= self.failures and self.clock() < self._open_until

    async def call(self, make_call, is_failure=lambda exc: True):
        if self._consecutive >= self.failures:
            if self.clock() < self._open_until or self._trial_running:
                raise SearchUnavailable("search backend unavailable (circuit open)")
            self._trial_running = True  # half-open: this call is the trial
        try:
            result = await asyncio.wait_for(make_call(), self.timeout)
        except asyncio.TimeoutError:
            self._failed()
            raise SearchUnavailable(f"search backend did not answer within {self.timeout}s")
        except Exception as exc:
            if is_failure(exc):
                self._failed()
                raise SearchUnavailable(f"search backend failed: {exc}") from exc
            self._succeeded()
            raise
        self._succeeded()
        return result

    def _failed(self) -> None:
        self._trial_running = False
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._open_until = self.clock() + self.reset_after

    def _succeeded(self) -> None:
        self._trial_running = False
        self._consecutive = 0


class SearchHandler:
    """The Search RPC: the searcher's ids behind the breaker, then summaries
    from the MetadataStore (the source of truth for labels and subjects)."""

    def __init__(self, searcher: Searcher | None, metadata, tokens, breaker: CircuitBreaker,
                 max_page_size: int, default_page_size: int = 50):
        self.searcher, self.metadata, self.tokens, self.breaker = searcher, metadata, tokens, breaker
        self.max_page_size, self.default_page_size = max_page_size, default_page_size

    async def __call__(self, user: str, request, context):
        if self.searcher is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "search is not configured here")
        if request.page_size < 0 or request.page_size > self.max_page_size:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"page_size must be 0..{self.max_page_size}")
        size = request.page_size or self.default_page_size
        scope = f"{user}\0search\0{request.query}"
        after = None
        if request.page_token:
            try:
                after = self.tokens.decode(scope, request.page_token)[1]
            except BadPageToken as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            self.searcher.check(request.query)
            result = await self.breaker.call(
                lambda: self.searcher.search(user, request.query, size, after),
                is_failure=lambda exc: not isinstance(exc, InvalidQuery))
        except InvalidQuery as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid query: {exc}")
        except SearchUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        records = [await self.metadata.get_message(user, mid) for mid in result.message_ids]
        token = self.tokens.encode(scope, (0, result.next_position)) if result.next_position else ""
        return mailbox_pb2.SearchResponse(
            messages=[to_summary(r) for r in records if r is not None], next_page_token=token)
