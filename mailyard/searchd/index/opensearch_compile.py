"""The index as OpenSearch (and Elasticsearch, whose DSL is the same) sees it:
the mapping, a document's source, and the query tree as a bool query.

Text arrives already tokenized (`searchd.query.terms`: lower-case, accents
removed, space-separated), so the analyzer only splits on whitespace; query
terms come from the same function, so they match indexed terms exactly, as
in FTS5 and the Bloom filter. Everything is in filter context: results are
ordered by received time, never by score, so nothing is scored and Lucene
can cache the clauses.

No client library here: dsl_index.py sends these bodies through the
OpenSearch client (opensearch.py) or the Elasticsearch one (elasticsearch.py).
"""
from __future__ import annotations

from typing import Any

from mailyard.searchd.index.base import FIELDS, SearchDocument
from mailyard.searchd.query import (And, Anywhere, HasAttachment, Label, MatchAll, Node, Not, Or,
                                    Received, Size, Text, mentions_spam_or_trash)

ANALYZER = "mailyard_terms"
# Newest first, then the message id: stable across pages (a user's message ids are unique).
SORT = [{"received_at_ms": "desc"}, {"message_id": "desc"}]

_TEXT = {"type": "text", "analyzer": ANALYZER, "norms": False}  # no scoring: no norms
MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "_routing": {"required": True},     # the user id: a user's documents share a shard
    "properties": {
        "user_id": {"type": "keyword"},
        "message_id": {"type": "keyword"},
        "received_at_ms": {"type": "long"},
        "size": {"type": "long"},
        "has_attachment": {"type": "boolean"},
        "labels": {"type": "keyword"},  # lower-cased
        **{name: dict(_TEXT) for name in FIELDS},
    },
}


def index_settings(shards: int, replicas: int) -> dict[str, Any]:
    return {
        "number_of_shards": shards,
        "number_of_replicas": replicas,
        # An explicit interval keeps shards refreshing while nobody searches
        # them, so a write's refresh=wait_for never waits on an idle shard.
        "refresh_interval": "1s",
        # Segments kept in result order: "newest N" stops after N matches.
        "sort.field": ["received_at_ms", "message_id"],
        "sort.order": ["desc", "desc"],
        "analysis": {"analyzer": {ANALYZER: {
            "type": "custom", "tokenizer": "whitespace", "filter": ["lowercase"]}}},
    }


def document_id(user_id: str, message_id: str) -> str:
    return f"{user_id.lower()}/{message_id}"


def labels_value(labels) -> list[str]:
    return sorted({name.lower() for name in labels})


def source(doc: SearchDocument) -> dict[str, Any]:
    body = {"user_id": doc.user_id.lower(), "message_id": doc.message_id,
            "received_at_ms": doc.received_at_ms, "size": doc.size,
            "has_attachment": doc.has_attachment, "labels": labels_value(doc.labels)}
    body.update({name: doc.text[name] for name in FIELDS if doc.text.get(name)})
    return body


def user_query(user_id: str, node: Node, now_ms: int) -> dict[str, Any]:
    """The whole query of one user's search: the user filter on top, always."""
    clause: dict[str, Any] = {"filter": [{"term": {"user_id": user_id.lower()}},
                                         compile_node(node, now_ms)]}
    if not mentions_spam_or_trash(node):  # Gmail leaves spam and trash out unless asked
        clause["must_not"] = [{"terms": {"labels": ["spam", "trash"]}}]
    return {"bool": clause}


def compile_node(node: Node, now_ms: int) -> dict[str, Any]:
    if isinstance(node, Text):
        return _text(node)
    if isinstance(node, (MatchAll, Anywhere)):
        return {"match_all": {}}
    if isinstance(node, Label):
        return {"term": {"labels": node.name.lower()}}
    if isinstance(node, HasAttachment):
        return {"term": {"has_attachment": True}}
    if isinstance(node, Size):
        return {"range": {"size": {"gt" if node.larger else "lt": node.bytes}}}
    if isinstance(node, Received):
        low, high = node.bounds(now_ms)
        bounds = {}
        if low is not None:
            bounds["gte"] = low
        if high is not None:
            bounds["lt"] = high
        return {"range": {"received_at_ms": bounds}}
    if isinstance(node, Not):
        return {"bool": {"must_not": [compile_node(node.child, now_ms)]}}
    if isinstance(node, And):
        positive = [compile_node(c, now_ms) for c in node.children if not isinstance(c, Not)]
        negative = [compile_node(c.child, now_ms) for c in node.children if isinstance(c, Not)]
        clause: dict[str, Any] = {"filter": positive or [{"match_all": {}}]}
        if negative:
            clause["must_not"] = negative
        return {"bool": clause}
    if isinstance(node, Or):
        return {"bool": {"should": [compile_node(c, now_ms) for c in node.children],
                         "minimum_should_match": 1}}
    raise TypeError(f"cannot compile {node!r}")


def _text(node: Text) -> dict[str, Any]:
    """Words: each one somewhere in the field (any field when none is named);
    a phrase: the words adjacent, in order, within one field."""
    fields = list(FIELDS) if node.field is None else [node.field]
    if node.phrase:
        return _match(" ".join(node.terms), fields, phrase=True)
    words = [_match(term, fields, phrase=False) for term in node.terms]
    return words[0] if len(words) == 1 else {"bool": {"filter": words}}


def _match(text: str, fields: list[str], phrase: bool) -> dict[str, Any]:
    if len(fields) > 1:
        return {"multi_match": {"query": text, "fields": fields,
                                "type": "phrase" if phrase else "best_fields"}}
    return {"match_phrase" if phrase else "match": {fields[0]: text}}
