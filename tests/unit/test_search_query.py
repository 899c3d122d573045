"""The query language: trees for good queries, position and reason for bad
ones, and (property tests) no query at all that crashes the parser or the
FTS5 compiler."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailyard.searchd.index.base import SearchDocument
from mailyard.searchd.index.fts5 import Fts5SearchIndex
from mailyard.searchd.query import (And, Anywhere, HasAttachment, Label, MatchAll, Not, Or,
                                    QueryError, Received, Size, Text, index_text, parse,
                                    terms)
from mailyard.store.errors import StorageError
from mailyard.store.mailbox.search import InvalidQuery


def word(t: str, field: str | None = None) -> Text:
    return Text((t,), False, field)


@pytest.mark.parametrize("query, tree", [
    ("", MatchAll()),
    ("   ", MatchAll()),
    ("hello", word("hello")),
    ("Hello World", And((word("hello"), word("world")))),
    ("hello AND world", And((word("hello"), word("world")))),
    ('"big deal"', Text(("big", "deal"), True)),
    ("e-mail", Text(("e", "mail"), True)),
    ("from:alice", word("alice", "from")),
    ("FROM:alice@example.com", Text(("alice", "example", "com"), True, "from")),
    ('subject:"status report"', Text(("status", "report"), True, "subject")),
    ("subject:(a OR b)", Or((word("a", "subject"), word("b", "subject")))),
    ("to:x cc:y bcc:z", And((word("x", "to"), word("y", "cc"), word("z", "bcc")))),
    ("filename:report.pdf", Text(("report", "pdf"), True, "filename")),
    ("a OR b c", Or((word("a"), And((word("b"), word("c")))))),
    ("a | b", Or((word("a"), word("b")))),
    ("-a", Not(word("a"))),
    ("--a", Not(word("a"))),      # a "-" inside a word is not a second negation
    ("- -a", Not(Not(word("a")))),
    ("a -(b OR c)", And((word("a"), Not(Or((word("b"), word("c"))))))),
    ("{a b c}", Or((word("a"), word("b"), word("c")))),
    ("{a OR b}", Or((word("a"), word("b")))),
    ("{a}", word("a")),
    ("label:Work", Label("work")),
    ("in:inbox", Label("inbox")),
    ("in:anywhere", Anywhere()),
    ("is:unread", Label("unread")),
    ("is:read", Not(Label("unread"))),
    ("is:starred", Label("starred")),
    ("has:attachment", HasAttachment()),
    ("after:2024/01/31", Received(after_ms=1706659200000)),
    ("before:2024-02-01", Received(before_ms=1706745600000)),
    ("newer_than:2d", Received(newer_age_ms=2 * 86_400_000)),
    ("older_than:1y", Received(older_age_ms=365 * 86_400_000)),
    ("larger:10K", Size(10 * 1024, True)),
    ("smaller:2M", Size(2 * 1024 * 1024, False)),
    ("larger:500", Size(500, True)),
    ("ticket:1234", Text(("ticket", "1234"), True)),   # not an operator: text, as in Gmail
    ("at 12:30", And((word("at"), Text(("12", "30"), True)))),
    ("naïve CAFÉ", And((word("naive"), word("cafe")))),
])
def test_queries_parse_into_trees(query, tree):
    assert parse(query) == tree


@pytest.mark.parametrize("query, position, reason", [
    ("(budget", 0, "'(' is never closed"),
    ("a (b OR c", 2, "'(' is never closed"),
    ("{a b", 0, "'{' is never closed"),
    ("budget)", 6, "unexpected ')'"),
    ('say "hello', 4, "unterminated quote"),
    ("OR a", 0, "OR needs a term before it"),
    ("a OR", 2, "OR needs a term after it"),
    ("a OR OR b", 2, "OR needs a term after it"),
    ("a -", 2, "'-' needs a term after it"),
    ("()", 1, "expected a search term"),
    ("{}", 0, "empty { } group"),
    ("is:lost", 3, "is: takes unread, read, starred or important, not 'lost'"),
    ("in:nowhere", 3, "in: takes"),
    ("has:pony", 4, "has: takes attachment"),
    ("after:2024/02/30", 6, "expected a date YYYY/MM/DD"),
    ("before:yesterday", 7, "expected a date YYYY/MM/DD"),
    ("newer_than:3w", 11, "expected an age like 3d, 2m or 1y"),
    ("larger:huge", 7, "expected a size like 500K or 2M"),
    ("from:", 5, "from: needs a value"),
    ("from:(a from:b)", 5, "from: cannot hold another operator"),
    ("subject:(is:unread)", 8, "subject: can hold only words and phrases"),
    ("!!!", 0, "'!!!' has no letters or digits to search for"),
    ("x" * 3000, 2048, "query longer than 2048 characters"),
    ("(" * 40 + "a" + ")" * 40, 32, "nested more than 32 deep"),
])
def test_bad_queries_say_where_and_why(query, position, reason):
    with pytest.raises(QueryError) as error:
        parse(query)
    assert error.value.position == position
    assert error.value.reason.startswith(reason)
    assert isinstance(error.value, InvalidQuery)  # what the API maps to INVALID_ARGUMENT
    assert str(error.value).startswith(f"position {error.value.position}: ")


def test_label_with_a_space_before_its_value_is_still_the_label():
    assert parse("label: x") == Label("x")


def test_terms_fold_case_and_accents_and_split_on_punctuation():
    assert terms("Ångström's e-mail: RÉSUMÉ_v2 naïve 42") == (
        "angstrom", "s", "e", "mail", "resume", "v2", "naive", "42")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F)) | st.text())
def test_index_text_is_the_terms_joined(text):
    # The ASCII shortcut must find exactly the regular expression's runs.
    assert index_text(text) == " ".join(terms(text))


# --- property tests ----------------------------------------------------

QUERY_PIECES = st.sampled_from([
    "a", "budget", "OR", "AND", "-", "(", ")", "{", "}", '"', '"x y"', ":", "from:", "to:",
    "subject:", "label:", "in:", "is:", "has:", "after:", "before:", "older_than:",
    "newer_than:", "larger:", "smaller:", "filename:", "inbox", "anywhere", "unread", "read",
    "attachment", "2024/01/02", "3d", "10K", "x.pdf", "é", "|", " ", " ", " ", "--", "*", "\\",
    "\x00", "日本", "12:30",
])
RANDOM_QUERIES = st.one_of(
    st.text(max_size=60),
    st.lists(QUERY_PIECES, max_size=25).map("".join),
    st.lists(QUERY_PIECES, max_size=25).map(" ".join),
)


@settings(max_examples=1500, deadline=None)
@given(RANDOM_QUERIES)
def test_any_query_parses_or_fails_with_a_position_and_reason(query):
    try:
        tree = parse(query)
    except QueryError as error:
        assert 0 <= error.position <= max(len(query), 2048)
        assert error.reason
        return
    assert tree is not None


@pytest.fixture(scope="module")
def fts5_index(tmp_path_factory):
    """A real index with a few documents, and a loop to query it from sync tests."""
    loop = asyncio.new_event_loop()
    index = Fts5SearchIndex(tmp_path_factory.mktemp("fts5") / "search.db")
    loop.run_until_complete(index.start())
    docs = [SearchDocument("u@x", f"m{i}", 1_700_000_000_000 + i * 1000, 100 * i,
                           {"INBOX", "UNREAD"} if i % 2 else {"SENT"}, bool(i % 3),
                           {"subject": " ".join(terms(f"budget {i} x y")), "body": "a b x"})
            for i in range(10)]
    loop.run_until_complete(index.write(docs))
    yield loop, index
    loop.run_until_complete(index.close())
    loop.close()


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(QUERY_PIECES, max_size=20).map(" ".join))
def test_every_parsed_query_compiles_and_runs_on_fts5(fts5_index, query):
    loop, index = fts5_index
    try:
        tree = parse(query)
    except QueryError:
        return
    try:
        page = loop.run_until_complete(index.search("u@x", tree, 5))
    except StorageError as error:  # the failure being looked for
        pytest.fail(f"{query!r} compiled to SQL SQLite refuses: {error}")
    assert len(page.hits) <= 5
