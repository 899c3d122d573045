"""SearchIndex on a server that speaks the OpenSearch/Elasticsearch query DSL
(OpenSearch, Elasticsearch 7.17): everything but the client library, which
the adapter modules (opensearch.py, elasticsearch.py) bring, so each library
is imported in its own module only. The two clients are forks with the same
calls, parameters and TransportError fields.

Layout: one index for every user (an index per user would put millions of
indices in the cluster state), reached through an alias so a later mapping
change can reindex into a new index and move the alias. Each document is
routed by its user id, so one user's documents share a shard and a search
asks that shard only; every query also filters on the user id, so no query
can reach another user's documents even if routing were wrong. Document ids
are "user/message", the same message id under two users is two documents.

Writes are one bulk request per batch (cut by size): a new document is an upsert that, when
the document exists already (a replay), only updates its labels; a label change
is a partial update that fails harmlessly (404) when the message was never
indexed. The port promises that a write is visible to the next search, so
a bulk write refreshes what it wrote before it returns (refresh=true, or
wait_for the periodic refresh: see OpenSearchConfig.refresh).

The mapping and the query DSL live in opensearch_compile.py.
"""
from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from mailyard.policy.config import OpenSearchConfig
from mailyard.policy.tls import client_context, url_uses_tls, warn_if_unverified
from mailyard.searchd.index.base import FIELDS, Hit, LabelChange, Page, SearchDocument, SearchIndex
from mailyard.searchd.index.opensearch_compile import (MAPPINGS, SORT, document_id, index_settings,
                                                       labels_value, source, user_query)
from mailyard.searchd.query import Node
from mailyard.store.errors import StorageError

T = TypeVar("T")

INDEX_VERSION = 1        # bump with an incompatible mapping; the alias moves to the new index
TERMS_PAGE = 500         # documents per request when collecting a user's terms
# Bulk requests are cut at about this size: a batch of large messages must stay
# well under the server's http.max_content_length (100 MB), or it would fail
# on every replay and stop the indexer.
BULK_BYTES = 8 * 1024 * 1024
# Bulk results that are no failure: a label change of a message never indexed,
# a deletion of a message already gone.
_HARMLESS = {("update", "document_missing_exception"), ("delete", None)}


class QueryDslIndex(SearchIndex):
    """The subclass names its server and client library: the client made by
    new_client, the library's base exception and its TransportError."""
    server = ""
    client_error: type[Exception] = Exception
    transport_error: type[Exception] = Exception

    def __init__(self, config: OpenSearchConfig) -> None:
        self.config = config
        self.alias = f"{config.index_prefix}-messages"
        self._where = f"{self.server} {','.join(config.hosts)}"
        self._client: Any = None
        self._index_ready = False
        self._creating = asyncio.Lock()

    def new_client(self) -> Any:
        """The library's asyncio client for config.hosts. One retry (on
        another node when there are several) and none after a timeout: the
        searcher's breaker needs a failure within about request_timeout, not
        after several of them."""
        raise NotImplementedError

    def tls_context(self) -> ssl.SSLContext | None:
        """[<server>.tls]'s context for https:// hosts; None for http://."""
        if not all(map(url_uses_tls, self.config.hosts)):
            return None
        warn_if_unverified(self.config.tls, self._where)
        return client_context(self.config.tls, f"{self.server}.tls")

    def _auth(self) -> tuple[str, str] | None:
        return (self.config.username, self.config.password) if self.config.username else None

    async def start(self) -> None:
        """Makes the client; the index is created by the first call that needs
        it, so services start (and answer UNAVAILABLE) while the server is away."""
        self._client = self.new_client()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # --- writes --------------------------------------------------------
    async def write(self, documents: list[SearchDocument], labels: list[LabelChange] = (),
                    deletions: list[tuple[str, str]] = ()) -> None:
        operations: list[str] = []  # NDJSON, one or two lines each
        for doc in documents:
            operations.append(_ndjson(
                self._action("update", doc.user_id, doc.message_id),
                {"doc": {"labels": labels_value(doc.labels)}, "upsert": source(doc)}))
        for change in labels:
            operations.append(_ndjson(
                self._action("update", change.user_id, change.message_id),
                {"doc": {"labels": labels_value(change.labels)}}))
        for user_id, message_id in deletions:
            operations.append(_ndjson(self._action("delete", user_id, message_id)))
        if not operations:
            return
        client = await self._ready()
        for body in _bulk_bodies(operations):
            reply = await self._call("bulk write", client.bulk(
                body=body, index=self.alias,
                # require_alias: never let a write auto-create an unmapped index
                params={"refresh": self.config.refresh, "require_alias": "true"}))
            if reply.get("errors"):
                self._raise_bulk_failures(reply["items"])

    async def delete_user(self, user_id: str) -> None:
        user_id = user_id.lower()
        client = await self._ready()
        # As a task, polled: a large mailbox takes longer than one request may.
        started = await self._call("delete user", client.delete_by_query(
            index=self.alias, body={"query": {"term": {"user_id": user_id}}},
            params={"routing": user_id, "conflicts": "proceed", "refresh": "true",
                    "wait_for_completion": "false"}))
        wait = f"{max(1, int(self.config.request_timeout / 2))}s"
        task = None
        while task is None:
            task = await self._call("delete user", self._task(started["task"], wait))
        failures = task.get("response", {}).get("failures") or task.get("error")
        if failures:
            raise StorageError(f"{self._where}: delete user {user_id}: {failures}")

    # --- reads ---------------------------------------------------------
    async def search(self, user_id: str, query: Node, limit: int, after: str | None = None,
                     now_ms: int | None = None) -> Page:
        if limit <= 0:
            return Page([], None)
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        user_id = user_id.lower()
        client = await self._ready()
        body: dict[str, Any] = {"query": user_query(user_id, query, now_ms), "sort": SORT,
                                "size": limit + 1, "_source": False, "track_total_hits": False}
        if after is not None:
            body["search_after"] = _decode_position(after)
        reply = await self._call("search", client.search(
            index=self.alias, body=body, params={"routing": user_id}))
        found = reply["hits"]["hits"]
        page = found[:limit]
        hits = [Hit(message_id=h["sort"][1], received_at_ms=h["sort"][0]) for h in page]
        return Page(hits, _encode_position(page[-1]["sort"]) if len(found) > limit else None)

    async def count(self, user_id: str) -> int:
        user_id = user_id.lower()
        client = await self._ready()
        reply = await self._call("count", client.count(
            index=self.alias, body={"query": {"term": {"user_id": user_id}}},
            params={"routing": user_id}))
        return reply["count"]

    async def terms(self, user_id: str) -> AsyncIterator[str]:
        user_id = user_id.lower()
        client = await self._ready()
        found: set[str] = set()
        body: dict[str, Any] = {"query": {"term": {"user_id": user_id}}, "sort": SORT,
                                "size": TERMS_PAGE, "_source": list(FIELDS),
                                "track_total_hits": False}
        while True:
            reply = await self._call("terms", client.search(
                index=self.alias, body=body, params={"routing": user_id}))
            hits = reply["hits"]["hits"]
            for hit in hits:
                for text in hit.get("_source", {}).values():
                    found.update(text.split())
            if len(hits) < TERMS_PAGE:
                break
            body["search_after"] = hits[-1]["sort"]
        for term in found:
            yield term

    # --- plumbing ------------------------------------------------------
    async def _ready(self) -> Any:
        """The client, once the index exists."""
        if self._client is None:
            raise StorageError(f"{self._where}: the index is not started")
        if not self._index_ready:
            async with self._creating:
                if not self._index_ready:
                    await self._call("create index", self._create_index())
                    self._index_ready = True
        return self._client

    async def _create_index(self) -> None:
        if await self._client.indices.exists(index=self.alias):
            return
        try:
            await self._client.indices.create(
                index=f"{self.alias}-v{INDEX_VERSION}",
                body={"settings": index_settings(self.config.shards, self.config.replicas),
                      "mappings": MAPPINGS, "aliases": {self.alias: {}}})
        except self.transport_error as exc:
            if exc.error != "resource_already_exists_exception":  # another process was first
                raise

    async def _task(self, task_id: str, wait: str) -> dict[str, Any] | None:
        """The task's final state, or None when it is still running after `wait`."""
        try:
            task = await self._client.tasks.get(
                task_id=task_id, params={"wait_for_completion": "true", "timeout": wait,
                                         # named, or the client takes "timeout" as its own
                                         "request_timeout": self.config.request_timeout})
        except self.transport_error as exc:
            if exc.error == "timeout_exception":  # still running after `wait`
                return None
            raise
        return task if task.get("completed") else None

    async def _call(self, operation: str, request: Awaitable[T]) -> T:
        try:
            return await request
        except self.client_error as exc:
            raise StorageError(f"{self._where}: {operation}: {self._describe(exc)}") from exc
        except asyncio.TimeoutError as exc:
            raise StorageError(f"{self._where}: {operation}: no answer in time") from exc

    def _action(self, kind: str, user_id: str, message_id: str) -> dict[str, Any]:
        user_id = user_id.lower()
        return {kind: {"_id": document_id(user_id, message_id), "routing": user_id}}

    def _raise_bulk_failures(self, items: list[dict[str, Any]]) -> None:
        failures = []
        for item in items:
            (kind, result), = item.items()
            error = result.get("error")
            reason = error.get("type") if isinstance(error, dict) else error
            if result.get("status", 500) < 300 or (kind, reason) in _HARMLESS:
                continue
            failures.append(f"{kind} {result.get('_id')}: {reason}: "
                            f"{error.get('reason') if isinstance(error, dict) else ''}")
        if failures:
            raise StorageError(f"{self._where}: bulk write: {len(failures)} failed, "
                               f"first: {failures[0]}")

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, self.transport_error):
            return f"{exc.status_code} {exc.error}: {exc.info}"[:500]
        return str(exc)[:500]


def _ndjson(*lines: dict[str, Any]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
                   for line in lines)


def _bulk_bodies(operations: list[str]):
    """The operations, in order, as request bodies of about BULK_BYTES each
    (one operation larger than that goes alone)."""
    body: list[str] = []
    size = 0
    for operation in operations:
        length = len(operation.encode())
        if body and size + length > BULK_BYTES:
            yield "".join(body)
            body, size = [], 0
        body.append(operation)
        size += length
    if body:
        yield "".join(body)


def _encode_position(sort: list) -> str:
    return f"{sort[0]}:{sort[1]}"


def _decode_position(after: str) -> list:
    received, _, message_id = after.partition(":")
    try:
        return [int(received), message_id]
    except ValueError:
        raise StorageError(f"bad search position {after!r}") from None
