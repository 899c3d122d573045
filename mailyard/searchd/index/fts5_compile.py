"""The query tree as SQLite sees it: one FTS5 MATCH expression plus SQL filters.

Everything textual that FTS5 can evaluate by itself (words, phrases, fields,
AND, OR, NOT under a positive term) goes into a single MATCH expression, so
FTS5 walks its doclists in rowid order and stops after one page. What is not
text (labels, sizes, attachments, dates) becomes SQL over the `docs` row of
each match. Text that sits where FTS5 cannot take it (`-word` alone, `word OR
is:starred`) becomes a subquery, correct but slower; such queries are rare.

Rowids encode (user slot, received time) so that ascending rowid is newest
first within a user: a user is a rowid range, and a date range is a narrower
one. See fts5.py for the layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mailyard.searchd.query import (And, Anywhere, HasAttachment, Label, MatchAll, Node, Not, Or,
                                    Received, Size, Text, mentions_spam_or_trash)

# Query field -> FTS5 column.
COLUMNS = {"subject": "subject", "from": "sender", "to": "recipient", "cc": "cc", "bcc": "bcc",
           "body": "body", "filename": "filename"}
LABEL_SEPARATOR = "\x1f"


def label_key(name: str) -> str:
    return f"{LABEL_SEPARATOR}{name.lower()}{LABEL_SEPARATOR}"


def labels_value(labels) -> str:
    """The docs.labels column: every label lower-cased, each between separators."""
    names = sorted({name.lower() for name in labels})
    return LABEL_SEPARATOR + LABEL_SEPARATOR.join(names) + LABEL_SEPARATOR if names else ""


@dataclass
class Plan:
    match: str | None                        # the FTS5 expression, or None to scan docs
    where: list[str] = field(default_factory=list)
    params: list = field(default_factory=list)
    received_low: int | None = None          # epoch ms bounds that narrow the rowid range
    received_high: int | None = None


def fts_expression(node: Node) -> str | None:
    """The node as one FTS5 expression, or None when FTS5 cannot evaluate it alone."""
    if isinstance(node, Text):
        if node.phrase:
            expr = '"' + " ".join(node.terms) + '"'
        elif len(node.terms) == 1:
            expr = f'"{node.terms[0]}"'
        else:
            expr = "(" + " AND ".join(f'"{t}"' for t in node.terms) + ")"
        if node.field is not None:
            expr = f"{{{COLUMNS[node.field]}}} : {expr}"
        return expr
    if isinstance(node, Or):
        parts = [fts_expression(c) for c in node.children]
        return None if None in parts else "(" + " OR ".join(parts) + ")"
    if isinstance(node, And):
        return _fts_and(list(node.children))
    return None


def _fts_and(children: list[Node]) -> str | None:
    positive = [fts_expression(c) for c in children if not isinstance(c, Not)]
    negative = [fts_expression(c.child) for c in children if isinstance(c, Not)]
    if not positive or None in positive or None in negative:
        return None
    return "(" + " AND ".join(positive) + ")" + "".join(f" NOT {n}" for n in negative)


class Compiler:
    """Compiles a tree for one user's rowid range [low, high]."""

    def __init__(self, rowid_low: int, rowid_high: int, now_ms: int):
        self.rowid_low, self.rowid_high, self.now_ms = rowid_low, rowid_high, now_ms

    def plan(self, node: Node) -> Plan:
        conjuncts = list(node.children) if isinstance(node, And) else [node]
        if not mentions_spam_or_trash(node):
            conjuncts += [Not(Label("spam")), Not(Label("trash"))]
        plan = Plan(match=None)
        positive, negative, rest = [], [], []
        for c in conjuncts:
            if isinstance(c, Not) and fts_expression(c.child) is not None:
                negative.append(c)
            elif fts_expression(c) is not None:
                positive.append(c)
            else:
                rest.append(c)
            if isinstance(c, Received):
                low, high = c.bounds(self.now_ms)
                if low is not None:
                    plan.received_low = max(low, plan.received_low or low)
                if high is not None:
                    plan.received_high = min(high, plan.received_high or high)
        if positive:
            plan.match = _fts_and(positive + negative)
        else:
            rest += negative
        for c in rest:
            sql, params = self.sql(c)
            if sql != "1":
                plan.where.append(sql)
                plan.params += params
        return plan

    def sql(self, node: Node) -> tuple[str, list]:
        """A boolean SQL expression over `d` (a docs row) for any node."""
        expr = fts_expression(node)
        if expr is not None:
            return ("d.id IN (SELECT rowid FROM fts WHERE fts MATCH ? AND rowid BETWEEN ? AND ?)",
                    [expr, self.rowid_low, self.rowid_high])
        if isinstance(node, (MatchAll, Anywhere)):
            return "1", []
        if isinstance(node, Label):
            return "instr(d.labels, ?) > 0", [label_key(node.name)]
        if isinstance(node, HasAttachment):
            return "d.has_attachment = 1", []
        if isinstance(node, Size):
            return ("d.size > ?" if node.larger else "d.size < ?"), [node.bytes]
        if isinstance(node, Received):
            low, high = node.bounds(self.now_ms)
            parts, params = [], []
            if low is not None:
                parts.append("d.received_at_ms >= ?")
                params.append(low)
            if high is not None:
                parts.append("d.received_at_ms < ?")
                params.append(high)
            return "(" + " AND ".join(parts) + ")", params
        if isinstance(node, Not):
            sql, params = self.sql(node.child)
            return f"NOT ({sql})", params
        if isinstance(node, (And, Or)):
            joiner = " AND " if isinstance(node, And) else " OR "
            parts, params = [], []
            for child in node.children:
                sql, child_params = self.sql(child)
                parts.append(sql)
                params += child_params
            return "(" + joiner.join(parts) + ")", params
        raise TypeError(f"cannot compile {node!r}")
