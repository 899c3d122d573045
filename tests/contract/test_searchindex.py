"""SearchIndex contract: every adapter must pass these (fixture `search_index`).

A small but realistic mailbox (threads, a sent reply with Bcc, a newsletter,
attachments, spam, trash, an archived message, accents) and, for every
operator alone and combined, exactly the ids it must find, newest first.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from mailyard.searchd.index.base import LabelChange, SearchDocument, SearchIndex
from mailyard.searchd.query import parse, terms

BASE = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)  # each message at 09:00 UTC
NOW_MS = int((datetime(2024, 3, 1, tzinfo=timezone.utc) + timedelta(days=105)).timestamp() * 1000)
BOB = "Bob Builder <bob@builder.example>"
CAROL = "Carol Jones <carol@work.example>"


def at(day: int) -> int:
    return int((BASE + timedelta(days=day)).timestamp() * 1000)


def doc(user: str, mid: str, day: int, size: int, labels: set[str], attachment: bool = False,
        **fields: str) -> SearchDocument:
    return SearchDocument(user_id=user, message_id=mid, received_at_ms=at(day), size=size,
                          labels=labels, has_attachment=attachment,
                          text={k.rstrip("_"): " ".join(terms(v)) for k, v in fields.items()})


def mailbox(user: str) -> list[SearchDocument]:
    return [
        doc(user, "m01", 0, 5_000, {"INBOX", "UNREAD"}, from_=BOB, to="alice@example.test",
            subject="Quarterly budget review",
            body="Please review the quarterly budget before Friday."),
        doc(user, "m02", 10, 12_000, {"INBOX"}, from_=CAROL, to="alice@example.test",
            cc="Dave <dave@work.example>", subject="Team offsite planning",
            body="The offsite will be in Lisbon. Budget is tight."),
        doc(user, "m03", 20, 3_000, {"SENT"}, from_="alice@example.test", to=BOB,
            bcc="eve@secret.example", subject="Re: Quarterly budget review",
            body="Looks fine to me.\n> Please review the quarterly budget before Friday."),
        doc(user, "m04", 30, 40_000, {"INBOX", "UNREAD"}, from_="news@shop.example",
            subject="Spring sale", body="Huge discounts on garden furniture"),
        doc(user, "m05", 40, 2_500_000, {"INBOX", "STARRED"}, True, from_=BOB,
            subject="Invoice attached", body="See attached invoice. Total due 1200 EUR",
            filename="invoice-2024-04.pdf"),
        doc(user, "m06", 50, 4_000, {"SPAM"}, from_="winner@junk.example",
            subject="You won a prize", body="claim your prize budget"),
        doc(user, "m07", 60, 3_000, {"TRASH"}, from_=CAROL, subject="Old budget draft",
            body="discard this"),
        doc(user, "m08", 70, 6_000_000, {"INBOX", "Work", "Travel"}, True,
            from_="dave@work.example", subject="Photos from Lisbon",
            filename="lisbon.jpg beach.jpg"),
        doc(user, "m09", 80, 8_000, {"INBOX", "Work", "UNREAD"}, from_=CAROL,
            to="alice@example.test", subject="Meeting notes",
            body="Action items: budget, hiring, offsite"),
        doc(user, "m10", 90, 2_000, set(), from_=BOB, subject="Weekend plans",
            body="Are you free on Saturday?"),
        doc(user, "m11", 100, 1_500, {"INBOX", "UNREAD", "STARRED"},
            from_="Zoë Ångström <zoe@example.org>", subject="Café meeting",
            body="A naïve question about the résumé"),
    ]


ALL = ["m11", "m10", "m09", "m08", "m05", "m04", "m03", "m02", "m01"]  # spam and trash aside

EXPECTED = {
    # words, phrases, negation, OR, groups
    "budget": ["m09", "m03", "m02", "m01"],
    "BUDGET": ["m09", "m03", "m02", "m01"],
    '"quarterly budget"': ["m03", "m01"],
    '"budget quarterly"': [],
    "budget review": ["m03", "m01"],
    "budget -quarterly": ["m09", "m02"],
    "-budget": ["m11", "m10", "m08", "m05", "m04"],
    "budget OR lisbon": ["m09", "m08", "m03", "m02", "m01"],
    "{lisbon invoice}": ["m08", "m05", "m02"],
    "(budget OR lisbon) -offsite": ["m08", "m03", "m01"],
    "xyzzy": [],
    "total due 1200": ["m05"],
    "cafe": ["m11"],
    "RÉSUMÉ naive": ["m11"],
    "": ALL,
    # header fields
    "from:bob": ["m10", "m05", "m01"],
    "from:bob@builder.example": ["m10", "m05", "m01"],
    "from:builder": ["m10", "m05", "m01"],
    "from:angstrom": ["m11"],
    "to:bob": ["m03"],
    "to:alice": ["m09", "m02", "m01"],
    "cc:dave": ["m02"],
    "bcc:eve": ["m03"],
    "bcc:bob": [],
    "subject:budget": ["m03", "m01"],
    "subject:meeting": ["m11", "m09"],
    'subject:"meeting notes"': ["m09"],
    "subject:(meeting notes)": ["m09"],
    "subject:(spring OR weekend)": ["m10", "m04"],
    "from:(bob OR carol) -is:unread": ["m10", "m05", "m02"],
    # labels and states
    "label:work": ["m09", "m08"],
    "label:Travel": ["m08"],
    "label:nothing": [],
    "in:inbox": ["m11", "m09", "m08", "m05", "m04", "m02", "m01"],
    "in:sent": ["m03"],
    "in:spam": ["m06"],
    "in:trash": ["m07"],
    "in:anywhere budget": ["m09", "m07", "m06", "m03", "m02", "m01"],
    "(budget OR prize) in:anywhere": ["m09", "m07", "m06", "m03", "m02", "m01"],
    "in:spam OR in:trash": ["m07", "m06"],
    "is:unread": ["m11", "m09", "m04", "m01"],
    "is:read": ["m10", "m08", "m05", "m03", "m02"],
    "is:starred": ["m11", "m05"],
    "from:carol is:unread": ["m09"],
    "budget OR is:starred": ["m11", "m09", "m05", "m03", "m02", "m01"],
    "is:read OR has:attachment": ["m10", "m08", "m05", "m03", "m02"],
    # attachments
    "has:attachment": ["m08", "m05"],
    "-from:bob has:attachment": ["m08"],
    "filename:pdf": ["m05"],
    "filename:invoice": ["m05"],
    "filename:lisbon.jpg": ["m08"],
    "lisbon -filename:jpg": ["m02"],
    # dates and sizes
    "after:2024/04/01": ["m11", "m10", "m09", "m08", "m05"],
    "before:2024/03/21": ["m02", "m01"],
    "after:2024/03/05 before:2024/04/30 budget": ["m03", "m02"],
    "-after:2024/03/05": ["m01"],
    "before:2024/03/05 OR after:2024/06/01": ["m11", "m01"],
    "newer_than:10d": ["m11"],
    "older_than:3m": ["m02", "m01"],
    "newer_than:1y": ALL,
    "larger:1M": ["m08", "m05"],
    "larger:5M": ["m08"],
    "smaller:4K": ["m11", "m10", "m03"],
    "budget larger:10K": ["m02"],
    "has:attachment smaller:3M": ["m05"],
}


def new_user() -> str:
    return f"u{uuid.uuid4().hex[:12]}@example.test"


async def found(index: SearchIndex, user: str, query: str, limit: int = 100) -> list[str]:
    page = await index.search(user, parse(query), limit, now_ms=NOW_MS)
    return [hit.message_id for hit in page.hits]


@pytest.fixture
async def alice(search_index: SearchIndex) -> str:
    user = new_user()
    await search_index.write(mailbox(user))
    # Another user with the same words, so a leak would show in every result.
    await search_index.write(mailbox(new_user()) + [
        doc(new_user(), "x1", 1, 10, {"INBOX"}, body="budget lisbon")])
    return user


@pytest.mark.parametrize("query", list(EXPECTED))
async def test_every_operator_finds_exactly_the_expected_messages(
        search_index: SearchIndex, alice: str, query: str):
    assert await found(search_index, alice, query) == EXPECTED[query]


async def test_results_carry_their_received_time(search_index: SearchIndex, alice: str):
    page = await search_index.search(alice, parse("from:bob"), 10, now_ms=NOW_MS)
    assert [(h.message_id, h.received_at_ms) for h in page.hits] == [
        ("m10", at(90)), ("m05", at(40)), ("m01", at(0))]


async def test_pages_cover_every_match_once_newest_first(search_index: SearchIndex, alice: str):
    seen, after = [], None
    while True:
        page = await search_index.search(alice, parse(""), 4, after, now_ms=NOW_MS)
        assert len(page.hits) <= 4
        seen += [h.message_id for h in page.hits]
        after = page.next_after
        if after is None:
            break
    assert seen == ALL
    page = await search_index.search(alice, parse("budget"), 4, now_ms=NOW_MS)
    assert page.next_after is None  # exactly one page: no empty page after it


async def test_a_user_never_sees_another_users_documents(search_index: SearchIndex, alice: str):
    bob = new_user()
    await search_index.write([doc(bob, "b1", 5, 100, {"INBOX"}, subject="budget secret",
                                  body="lisbon zanzibar")])
    assert await found(search_index, alice, "zanzibar") == []
    assert await found(search_index, bob, "budget") == ["b1"]
    assert await found(search_index, bob, "") == ["b1"]
    assert await found(search_index, new_user(), "") == []
    # The same message id under two users is two documents.
    await search_index.write([doc(bob, "m01", 6, 100, {"INBOX"}, body="other words")])
    assert await found(search_index, alice, '"quarterly budget"') == ["m03", "m01"]
    assert await found(search_index, bob, "other") == ["m01"]


async def test_user_ids_are_case_insensitive(search_index: SearchIndex, alice: str):
    assert await found(search_index, alice.upper(), "cafe") == ["m11"]


async def test_replayed_writes_change_nothing(search_index: SearchIndex, alice: str):
    count = await search_index.count(alice)
    await search_index.write(mailbox(alice))
    await search_index.write(mailbox(alice)[:3])
    assert await search_index.count(alice) == count == 11
    for query in ("budget", "", "is:unread"):
        assert await found(search_index, alice, query) == EXPECTED[query]
    assert len(await found(search_index, alice, "in:anywhere")) == 11


async def test_label_changes_update_states(search_index: SearchIndex, alice: str):
    await search_index.write([], labels=[
        LabelChange(alice, "m01", {"INBOX"}),                 # marked read
        LabelChange(alice, "m10", {"INBOX", "UNREAD"}),       # moved to inbox, unread
        LabelChange(alice, "m09", {"TRASH"}),                 # trashed
        LabelChange(alice, "missing", {"INBOX"})])            # not indexed: ignored
    assert await found(search_index, alice, "is:unread") == ["m11", "m10", "m04"]
    assert await found(search_index, alice, "budget") == ["m03", "m02", "m01"]
    assert await found(search_index, alice, "in:trash") == ["m09", "m07"]
    # A replayed add of an indexed message brings its labels as they are then.
    await search_index.write([doc(alice, "m09", 80, 8_000, {"INBOX"}, body="whatever")])
    assert await found(search_index, alice, "budget") == ["m09", "m03", "m02", "m01"]
    assert await found(search_index, alice, "whatever") == []  # the text never changes


async def test_deletions(search_index: SearchIndex, alice: str):
    await search_index.write([], deletions=[(alice, "m01"), (alice, "nope"), (new_user(), "m02")])
    assert await found(search_index, alice, "budget") == ["m09", "m03", "m02"]
    assert await search_index.count(alice) == 10
    await search_index.write([doc(alice, "m01", 0, 5_000, {"INBOX"}, body="budget again")])
    assert await found(search_index, alice, '"budget again"') == ["m01"]


async def test_delete_user_leaves_the_others(search_index: SearchIndex, alice: str):
    bob = new_user()
    await search_index.write([doc(bob, "b1", 5, 100, {"INBOX"}, body="budget")])
    await search_index.delete_user(alice)
    assert await search_index.count(alice) == 0
    assert await found(search_index, alice, "budget") == []
    assert await found(search_index, bob, "budget") == ["b1"]
    await search_index.write(mailbox(alice))
    assert await found(search_index, alice, "budget") == EXPECTED["budget"]


async def test_terms_are_the_users_own(search_index: SearchIndex, alice: str):
    bob = new_user()
    await search_index.write([doc(bob, "b1", 5, 100, {"INBOX"}, body="zanzibar")])
    found_terms = {t async for t in search_index.terms(alice)}
    assert {"budget", "lisbon", "cafe", "eve", "pdf", "1200"} <= found_terms
    assert "zanzibar" not in found_terms


async def test_messages_of_the_same_millisecond_are_all_found(search_index: SearchIndex):
    user = new_user()
    await search_index.write([doc(user, f"s{i}", 3, 100, {"INBOX"}, body="same time")
                              for i in range(5)])
    assert sorted(await found(search_index, user, "same")) == [f"s{i}" for i in range(5)]
    assert sorted(await found(search_index, user, "after:2024/03/04 before:2024/03/05")) == [
        f"s{i}" for i in range(5)]
    first = await search_index.search(user, parse("same"), 2, now_ms=NOW_MS)
    rest = await search_index.search(user, parse("same"), 10, first.next_after, now_ms=NOW_MS)
    assert len({h.message_id for h in first.hits + rest.hits}) == 5


async def test_relative_ages_follow_the_clock(search_index: SearchIndex, alice: str):
    later = NOW_MS + 30 * 86_400_000
    page = await search_index.search(alice, parse("newer_than:40d"), 10, now_ms=later)
    assert [h.message_id for h in page.hits] == ["m11"]
