"""The SearchIndex port: per-user full-text and structured search over messages.

Documents belong to a user, and every call names the user: an adapter must
never let one user's query reach another user's documents. A message's text
never changes once delivered, so writing a document that is already indexed
only updates what can change (its labels); replaying a batch is harmless.

Queries arrive as the tree of `searchd.query`; each adapter compiles it its
own way (SQL and an FTS5 expression, an OpenSearch bool query). Results are
newest first; `after` is an opaque position taken from an earlier page.
Backend failures raise store.errors.StorageError.
"""
from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mailyard.searchd.query import Node

# The document fields a query can name; "body" holds the text bodies and the
# text of attachments, "filename" the attachment names.
FIELDS = ("subject", "from", "to", "cc", "bcc", "body", "filename")


@dataclass(slots=True)
class SearchDocument:
    user_id: str
    message_id: str
    received_at_ms: int
    size: int                            # raw bytes, for larger:/smaller:
    labels: set[str] = field(default_factory=set)
    has_attachment: bool = False
    # Field name -> space-separated terms, as `searchd.query.terms` makes them.
    text: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class LabelChange:
    user_id: str
    message_id: str
    labels: set[str]


@dataclass(slots=True)
class Hit:
    message_id: str
    received_at_ms: int


@dataclass(slots=True)
class Page:
    hits: list[Hit]
    next_after: str | None    # None on the last page


class SearchIndex(abc.ABC):
    async def start(self) -> None:
        """Connects or creates what the adapter needs; called once before use."""

    @abc.abstractmethod
    async def write(self, documents: list[SearchDocument], labels: list[LabelChange] = (),
                    deletions: list[tuple[str, str]] = ()) -> None:
        """Applies a batch in one bulk write, durable when it returns: new
        documents are added, already indexed ones get their labels updated,
        label changes of messages not indexed are ignored, and deletions
        ((user_id, message_id)) of missing messages are no error."""

    @abc.abstractmethod
    async def search(self, user_id: str, query: Node, limit: int, after: str | None = None,
                     now_ms: int | None = None) -> Page:
        """The user's documents matching `query`, newest first (received time,
        then an adapter-stable tiebreak). `now_ms` resolves relative ages
        (newer_than:, older_than:) and defaults to the wall clock."""

    @abc.abstractmethod
    async def count(self, user_id: str) -> int:
        """How many documents the user has."""

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> None:
        """Removes every document of the user (before a reindex)."""

    @abc.abstractmethod
    def terms(self, user_id: str) -> AsyncIterator[str]:
        """Every distinct term of the user's documents, in no order (to rebuild
        the user's Bloom filter when the cache lost it)."""

    @contextlib.asynccontextmanager
    async def rebuilding(self) -> AsyncIterator[None]:
        """Around a rebuild of the whole index (`mailyard search reindex` of
        every user): an adapter may defer its upkeep to the end. Reads and
        writes stay correct meanwhile."""
        yield

    @abc.abstractmethod
    async def close(self) -> None:
        ...
