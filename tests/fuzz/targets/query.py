"""The Gmail query parser, and what it hands the index.

Any string either parses or raises QueryError (the API's INVALID_ARGUMENT)
with a position inside the query and a reason. A tree that parses must run on
the real FTS5 index without an SQLite error (a user's typo must never look
like a server failure), and the Bloom filter of the user's terms may answer
"no match" only when the index finds none.
"""
from __future__ import annotations

import asyncio

from mailyard.searchd.bloom import TermBloom, cannot_match
from mailyard.searchd.index.base import SearchDocument
from mailyard.searchd.index.fts5 import Fts5SearchIndex
from mailyard.searchd.query import MAX_QUERY_CHARS, QueryError, parse, terms
from mailyard.store.mailbox.search import InvalidQuery
from tests.fuzz.targets import scratch

EMAIL_SEEDS = False
MAX_LEN = MAX_QUERY_CHARS + 64
USER = "alice@example.test"
NOW_MS = 1_717_000_000_000
TEXTS = ["budget report 2024 q3", "Caf\u00e9 na\u00efve r\u00e9sum\u00e9", "\u65e5\u672c\u8a9e \u30e1\u30fc\u30eb",
         "e-mail alice@example.test", "ticket 1234 at 12:30", "x y z a b", "invoice.pdf notes.txt"]

_index: tuple[asyncio.AbstractEventLoop, Fts5SearchIndex, TermBloom] | None = None


def _open_index():
    """One real index for the whole run, with a few documents of one user."""
    global _index
    if _index is None:
        root = scratch("query")
        loop = asyncio.new_event_loop()
        index = Fts5SearchIndex(root / "search.db")
        loop.run_until_complete(index.start())
        bloom, documents = TermBloom(), []
        for i, text in enumerate(TEXTS):
            fields = {"subject": text, "body": TEXTS[-1 - i], "from": "bob@example.test",
                      "to": USER, "filename": "invoice.pdf" if i % 2 else ""}
            fields = {name: " ".join(terms(value)) for name, value in fields.items()}
            bloom.update(t for value in fields.values() for t in value.split())
            documents.append(SearchDocument(
                USER, f"m{i}", NOW_MS - i * 86_400_000 * 40, 1000 * (i + 1),
                {"INBOX", "UNREAD"} if i % 2 else {"SENT", "STARRED"}, bool(i % 3), fields))
        loop.run_until_complete(index.write(documents))
        _index = loop, index, bloom
    return _index


def check(data: bytes) -> None:
    query = data.decode("utf-8", "replace")  # the API hands over valid UTF-8
    try:
        tree = parse(query)
    except QueryError as error:
        assert isinstance(error, InvalidQuery)
        assert 0 <= error.position <= max(len(query), MAX_QUERY_CHARS), error.position
        assert error.reason and str(error) == f"position {error.position}: {error.reason}"
        return
    loop, index, bloom = _open_index()
    page = loop.run_until_complete(index.search(USER, tree, 5, now_ms=NOW_MS))
    assert len(page.hits) <= 5
    if cannot_match(tree, bloom):
        assert not page.hits, f"the Bloom filter ruled out {query!r}, which matches {page.hits}"


def seeds():
    for query in ["budget", "from:bob subject:(report OR invoice)", '"budget report" -x',
                  "{caf\u00e9 \u65e5\u672c\u8a9e} has:attachment", "in:anywhere is:unread",
                  "after:2024/01/02 before:2024-12-31", "older_than:3d newer_than:2y",
                  "larger:10K smaller:2M", "label:work OR is:starred", "filename:pdf",
                  "-is:read -(a b)", "ticket:1234 12:30", "e-mail alice@example.test",
                  "a OR b OR c", "((a))", "to:(alice -bob)", "in:spam", "in:trash budget"]:
        yield query.encode()
