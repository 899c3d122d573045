"""Gmail's search language, parsed once into a tree that each index adapter compiles.

    query   := or_expr
    or_expr := and_expr ("OR" and_expr)*
    and_expr:= unary*                       (juxtaposition is AND; "AND" is allowed)
    unary   := "-" unary | primary
    primary := "(" or_expr ")" | "{" unary* "}" | NAME ":" value | "phrase" | word
    value   := word | "phrase" | "(" words and phrases, OR, - ")"   (fields only)

`{a b}` means `a OR b`, as in Gmail. An unknown `name:value` is searched as
text, as Gmail does; a known operator with a value it cannot take, an
unbalanced bracket or quote, or a dangling OR or `-` is a QueryError that says
where and why. Dates are UTC days; relative ages are resolved by the compiler
against the time of the search, so one tree can be reused.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone

from mailyard.store.mailbox.search import InvalidQuery

MAX_QUERY_CHARS = 2048
MAX_DEPTH = 32
DAY_MS = 86_400_000
# Gmail's month and year for older_than:/newer_than: are calendar-free approximations.
AGE_UNITS_MS = {"d": DAY_MS, "m": 30 * DAY_MS, "y": 365 * DAY_MS}
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}

TEXT_FIELDS = ("from", "to", "cc", "bcc", "subject", "filename")
_TOKEN = re.compile(r"[^\W_]+")
# For ASCII text, _TOKEN's runs are runs of [a-z0-9] once lower-cased: every other byte
# becomes a space, and split() finds the same runs about four times faster.
_ASCII_SEPARATORS = bytes(c if chr(c).isascii() and chr(c).isalnum() else 32 for c in range(256))


class QueryError(InvalidQuery):
    """A query that cannot be parsed: where (0-based character offset) and why."""


def terms(text: str) -> tuple[str, ...]:
    """The index terms of a text: runs of letters and digits, lower-cased, accents
    removed. The indexer tokenizes documents with this same function, so a query
    term and an indexed term agree exactly (and the Bloom filter can trust it)."""
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFKD", text)
                       if not unicodedata.combining(c))
    return tuple(_TOKEN.findall(text.lower()))


def index_text(text: str) -> str:
    """" ".join(terms(text)): what the indexer stores of a field, computed without
    a regular expression when the text is ASCII (most mail)."""
    if text.isascii():
        return b" ".join(text.lower().encode().translate(_ASCII_SEPARATORS).split()).decode()
    return " ".join(terms(text))


# --- the tree --------------------------------------------------------------

class Node:
    """A query tree node; frozen dataclasses, so trees compare and hash."""


@dataclass(frozen=True, slots=True)
class MatchAll(Node):
    """The empty query: every message (spam and trash aside)."""


@dataclass(frozen=True, slots=True)
class Text(Node):
    """Words (all of them) or a phrase (in this order, adjacent), anywhere or in
    one field (`from`, `to`, `cc`, `bcc`, `subject`, `filename`)."""
    terms: tuple[str, ...]
    phrase: bool = False
    field: str | None = None


@dataclass(frozen=True, slots=True)
class Label(Node):
    """The message carries this label (lower-cased: Gmail labels match any case)."""
    name: str


@dataclass(frozen=True, slots=True)
class Anywhere(Node):
    """in:anywhere: true of every message; lifts the spam/trash exclusion."""


@dataclass(frozen=True, slots=True)
class HasAttachment(Node):
    pass


@dataclass(frozen=True, slots=True)
class Received(Node):
    """Received at or after `after_ms` and before `before_ms` (either may be None).
    Relative ages (`newer_than:`/`older_than:`) keep their age in `*_age_ms`."""
    after_ms: int | None = None
    before_ms: int | None = None
    newer_age_ms: int | None = None
    older_age_ms: int | None = None

    def bounds(self, now_ms: int) -> tuple[int | None, int | None]:
        """[low, high) in epoch milliseconds, None for open."""
        low, high = self.after_ms, self.before_ms
        if self.newer_age_ms is not None:
            low = now_ms - self.newer_age_ms
        if self.older_age_ms is not None:
            high = now_ms - self.older_age_ms
        return low, high


@dataclass(frozen=True, slots=True)
class Size(Node):
    """larger: (size >= bytes) or smaller: (size < bytes), of the raw message."""
    bytes: int
    larger: bool


@dataclass(frozen=True, slots=True)
class And(Node):
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or(Node):
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not(Node):
    child: Node


def mentions_spam_or_trash(node: Node) -> bool:
    """Gmail leaves spam and trash out unless the query names them (or in:anywhere)."""
    if isinstance(node, Anywhere):
        return True
    if isinstance(node, Label):
        return node.name in ("spam", "trash")
    if isinstance(node, (And, Or)):
        return any(mentions_spam_or_trash(c) for c in node.children)
    if isinstance(node, Not):
        return mentions_spam_or_trash(node.child)
    return False


# --- lexing ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str   # "word", "phrase", "op" (name:), "(", ")", "{", "}", "-", "OR", "end"
    text: str
    pos: int


_SPECIAL = '(){}"'


def _lex(query: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
        elif c in "(){}":
            tokens.append(_Tok(c, c, i))
            i += 1
        elif c == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise QueryError(i, "unterminated quote")
            tokens.append(_Tok("phrase", query[i + 1:end], i))
            i = end + 1
        elif c == "-" and (not tokens or _negation_can_follow(query, i)):
            tokens.append(_Tok("-", c, i))
            i += 1
        else:
            start = i
            while i < n and not query[i].isspace() and query[i] not in _SPECIAL:
                if query[i] == ":" and i > start:
                    break
                i += 1
            word = query[start:i]
            if i < n and query[i] == ":" and re.fullmatch(r"[A-Za-z_]+", word):
                tokens.append(_Tok("op", word.lower(), start))
                i += 1
            elif word == "OR" or word == "|":
                tokens.append(_Tok("OR", word, start))
            elif word == "AND":
                continue
            else:
                if i < n and query[i] == ":":  # "12:30" and the like: keep the colon in the word
                    i += 1
                    while i < n and not query[i].isspace() and query[i] not in _SPECIAL:
                        i += 1
                    word = query[start:i]
                tokens.append(_Tok("word", word, start))
    tokens.append(_Tok("end", "", n))
    return tokens


def _negation_can_follow(query: str, i: int) -> bool:
    """A '-' negates at the start of a term (after space or an opening bracket),
    not inside a word like `e-mail`."""
    return i == 0 or query[i - 1].isspace() or query[i - 1] in "({"


# --- parsing ---------------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def parse(query: str) -> Node:
    """The tree of a query; QueryError (INVALID_ARGUMENT) when it has none.
    Trees are immutable, so the parses of recent queries are kept."""
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(MAX_QUERY_CHARS, f"query longer than {MAX_QUERY_CHARS} characters")
    parser = _Parser(_lex(query))
    node = parser.or_expr(0)
    tok = parser.peek()
    if tok.kind != "end":
        raise QueryError(tok.pos, f"unexpected {tok.text!r}")
    return node


class _Parser:
    def __init__(self, tokens: list[_Tok]):
        self.tokens = tokens
        self.i = 0

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _depth(self, depth: int, tok: _Tok) -> int:
        if depth >= MAX_DEPTH:
            raise QueryError(tok.pos, f"nested more than {MAX_DEPTH} deep")
        return depth + 1

    def or_expr(self, depth: int, closer: str = "end") -> Node:
        first = self.peek()
        if first.kind == "OR":
            raise QueryError(first.pos, "OR needs a term before it")
        branches = [self.and_expr(depth, closer)]
        while self.peek().kind == "OR":
            tok = self.take()
            if self.peek().kind in ("end", ")", "}", "OR"):
                raise QueryError(tok.pos, "OR needs a term after it")
            branches.append(self.and_expr(depth, closer))
        return branches[0] if len(branches) == 1 else Or(tuple(branches))

    def and_expr(self, depth: int, closer: str) -> Node:
        items = []
        while self.peek().kind not in ("end", "OR", ")", "}"):
            items.append(self.unary(depth))
        if not items:
            tok = self.peek()
            if tok.kind == closer == "end":
                return MatchAll()
            raise QueryError(tok.pos, "expected a search term")
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self, depth: int) -> Node:
        tok = self.peek()
        if tok.kind == "-":
            self.take()
            if self.peek().kind in ("end", "OR", ")", "}"):
                raise QueryError(tok.pos, "'-' needs a term after it")
            return Not(self.unary(self._depth(depth, tok)))
        return self.primary(depth)

    def primary(self, depth: int) -> Node:
        tok = self.take()
        if tok.kind == "(":
            inner = self.or_expr(self._depth(depth, tok), ")")
            self._close(tok, ")")
            return inner
        if tok.kind == "{":
            depth = self._depth(depth, tok)
            items = []
            while self.peek().kind not in ("}", "end"):
                if self.peek().kind == "OR":  # {a OR b} reads as {a b}
                    self.take()
                    continue
                items.append(self.unary(depth))
            self._close(tok, "}")
            if not items:
                raise QueryError(tok.pos, "empty { } group")
            return items[0] if len(items) == 1 else Or(tuple(items))
        if tok.kind == "phrase":
            return _text(tok, tok.text, phrase=True)
        if tok.kind == "word":
            return _text(tok, tok.text)
        if tok.kind == "op":
            return self.operator(tok, depth)
        raise QueryError(tok.pos, f"unexpected {tok.text!r}" if tok.kind != "end"
                         else "unexpected end of query")

    def _close(self, opener: _Tok, closer: str) -> None:
        tok = self.take()
        if tok.kind != closer:
            raise QueryError(opener.pos, f"{opener.text!r} is never closed")

    def operator(self, op: _Tok, depth: int) -> Node:
        name = op.text
        value = self.peek()
        if name in TEXT_FIELDS:
            if value.kind == "(":
                self.take()
                inner = self.or_expr(self._depth(depth, value), ")")
                self._close(value, ")")
                return _in_field(inner, name, value)
            if value.kind not in ("word", "phrase"):
                raise QueryError(value.pos, f"{name}: needs a value")
            self.take()
            # A word that tokenizes to several terms (an address) is a phrase.
            return _text(value, value.text, phrase=value.kind == "phrase", field=name)
        handler = _VALUE_OPERATORS.get(name)
        if handler is None:  # not an operator Gmail knows: search it as text
            if value.kind in ("word", "phrase"):
                self.take()
                return _text(op, f"{name} {value.text}", phrase=True)
            return _text(op, name)
        if value.kind not in ("word", "phrase"):
            raise QueryError(value.pos, f"{name}: needs a value")
        self.take()
        return handler(value.text, value.pos)


def _text(tok: _Tok, text: str, phrase: bool = False, field: str | None = None) -> Node:
    found = terms(text)
    if not found:
        raise QueryError(tok.pos, f"{tok.text!r} has no letters or digits to search for")
    if len(found) > 1 and not phrase:
        phrase = True  # "e-mail", "alice@example.com": the parts, adjacent
    return Text(found, phrase and len(found) > 1, field)


def _in_field(node: Node, field: str, tok: _Tok) -> Node:
    """subject:(a OR "b c") applies the field to every text inside."""
    if isinstance(node, Text):
        if node.field is not None:
            raise QueryError(tok.pos, f"{field}: cannot hold another operator")
        return Text(node.terms, node.phrase, field)
    if isinstance(node, And):
        return And(tuple(_in_field(c, field, tok) for c in node.children))
    if isinstance(node, Or):
        return Or(tuple(_in_field(c, field, tok) for c in node.children))
    if isinstance(node, Not):
        return Not(_in_field(node.child, field, tok))
    raise QueryError(tok.pos, f"{field}: can hold only words and phrases")


def _label(value: str, pos: int) -> Node:
    name = value.strip().lower()
    if not name:
        raise QueryError(pos, "label: needs a name")
    return Label(name)


_IN = {"inbox": "inbox", "sent": "sent", "spam": "spam", "trash": "trash",
       "drafts": "draft", "draft": "draft", "starred": "starred", "important": "important"}


def _in(value: str, pos: int) -> Node:
    where = value.lower()
    if where in ("anywhere", "all"):
        return Anywhere()
    if where not in _IN:
        raise QueryError(pos, f"in: takes {', '.join(sorted({*_IN, 'anywhere'}))}, not {value!r}")
    return Label(_IN[where])


def _is(value: str, pos: int) -> Node:
    state = value.lower()
    if state == "unread":
        return Label("unread")
    if state == "read":
        return Not(Label("unread"))
    if state in ("starred", "important"):
        return Label(state)
    raise QueryError(pos, f"is: takes unread, read, starred or important, not {value!r}")


def _has(value: str, pos: int) -> Node:
    if value.lower() != "attachment":
        raise QueryError(pos, f"has: takes attachment, not {value!r}")
    return HasAttachment()


def _date_ms(value: str, pos: int) -> int:
    match = re.fullmatch(r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})", value)
    if match:
        try:
            day = datetime(*map(int, match.groups()), tzinfo=timezone.utc)
            return int(day.timestamp() * 1000)
        except ValueError:
            pass
    raise QueryError(pos, f"expected a date YYYY/MM/DD, not {value!r}")


def _age_ms(value: str, pos: int) -> int:
    match = re.fullmatch(r"(\d{1,5})([dmy])", value.lower())
    if not match:
        raise QueryError(pos, f"expected an age like 3d, 2m or 1y, not {value!r}")
    return int(match[1]) * AGE_UNITS_MS[match[2]]


def _size(value: str, pos: int) -> int:
    match = re.fullmatch(r"(\d{1,12})([km]?)", value.lower())
    if not match:
        raise QueryError(pos, f"expected a size like 500K or 2M, not {value!r}")
    return int(match[1]) * SIZE_UNITS[match[2]]


_VALUE_OPERATORS = {
    "label": _label,
    "in": _in,
    "is": _is,
    "has": _has,
    "after": lambda v, p: Received(after_ms=_date_ms(v, p)),
    "before": lambda v, p: Received(before_ms=_date_ms(v, p)),
    "newer_than": lambda v, p: Received(newer_age_ms=_age_ms(v, p)),
    "older_than": lambda v, p: Received(older_age_ms=_age_ms(v, p)),
    "larger": lambda v, p: Size(_size(v, p), larger=True),
    "smaller": lambda v, p: Size(_size(v, p), larger=False),
}
