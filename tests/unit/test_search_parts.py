"""Text extraction, the Bloom filter of terms, and the circuit breaker."""
from __future__ import annotations

import asyncio
from email.message import EmailMessage

import pytest

from mailyard.searchd.bloom import BloomFilters, TermBloom, cannot_match
from mailyard.searchd.extract import Limits, document, html_text
from mailyard.searchd.query import parse
from mailyard.store.cache.memory import MemoryCache
from mailyard.store.mailbox.search import CircuitBreaker, InvalidQuery, SearchUnavailable
from mailyard.store.metadata.base import MessageRecord


def make_pdf(text: str) -> bytes:
    """A one-page PDF showing `text`, with a correct cross-reference table."""
    stream = f"BT /F1 18 Tf 20 100 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 200] /Contents 4 0 R"
               b" /Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def record(raw: bytes, **fields) -> MessageRecord:
    return MessageRecord(user_id="alice@example.test", message_id="m1", thread_id="m1",
                         received_at_ms=1_700_000_000_000, skeleton_key="k", size=len(raw),
                         labels={"INBOX", "UNREAD"}, **fields)


def rich_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Bob Builder <bob@builder.example>"
    msg["To"] = "alice@example.test"
    msg["Cc"] = "Carol <carol@work.example>"
    msg["Bcc"] = "eve@secret.example"
    msg["Subject"] = "=?utf-8?q?Caf=C3=A9_invoice?="
    msg.set_content("Plain body about the harbour.")
    msg.add_alternative("<html><head><style>.x{color:red}</style></head><body><p>Html"
                        "<b>only</b>words&amp;more</p><script>hidden()</script></body></html>",
                        subtype="html")
    msg.add_attachment(make_pdf("zanzibar quarterly statement"), maintype="application",
                       subtype="pdf", filename="statement-2024.pdf")
    msg.add_attachment("notes in a text file: marmalade".encode(), maintype="text",
                       subtype="plain", filename="notes.txt")
    msg.add_attachment(b"\x89PNG" + bytes(2000), maintype="image", subtype="png",
                       filename="photo.png")
    msg.add_attachment(b"%PDF-1.4 this is not really a pdf", maintype="application",
                       subtype="pdf", filename="broken.pdf")
    return msg.as_bytes()


def test_document_has_every_field_as_terms():
    raw = rich_message()
    doc = document(record(raw, has_attachments=True), raw)
    assert doc.text["subject"] == "cafe invoice"
    assert doc.text["from"] == "bob builder bob builder example"
    assert doc.text["to"] == "alice example test"
    assert doc.text["cc"] == "carol carol work example"
    assert doc.text["bcc"] == "eve secret example"
    body = doc.text["body"].split()
    assert {"plain", "harbour", "html", "only", "words", "more"} <= set(body)
    assert {"color", "hidden"}.isdisjoint(body)                   # style and script are not text
    assert {"zanzibar", "quarterly", "statement"} <= set(body)   # the PDF's text
    assert "marmalade" in body                                    # the text attachment's
    assert doc.text["filename"] == "statement 2024 pdf notes txt photo png broken pdf"
    assert doc.has_attachment and doc.labels == {"INBOX", "UNREAD"} and doc.size == len(raw)


def test_a_broken_attachment_is_logged_and_the_rest_indexed():
    logged = []

    class Log:
        def warning(self, event, **fields):
            logged.append((event, fields))

    raw = rich_message()
    doc = document(record(raw), raw, log=Log())
    assert "zanzibar" in doc.text["body"].split()
    assert [(e, f["part"]) for e, f in logged] == [("extract_failed", "5")]


def test_attachments_past_the_size_bound_are_found_by_name_only():
    raw = rich_message()
    doc = document(record(raw), raw, Limits(max_attachment_bytes=100))
    assert "zanzibar" not in doc.text["body"].split()
    assert "statement" in doc.text["filename"].split()


def test_text_is_bounded_per_body():
    msg = EmailMessage()
    msg["Subject"] = "long"
    msg.set_content("word " * 10_000 + "tailword")
    raw = msg.as_bytes()
    doc = document(record(raw), raw, Limits(max_text_chars=1000))
    assert "tailword" not in doc.text["body"] and len(doc.text["body"]) <= 1000


def test_malformed_mail_still_gives_a_document():
    raw = b"Subject: =?bogus?q?x?=\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nbody words\r\n"
    doc = document(record(raw), raw)
    assert doc.message_id == "m1" and "words" in doc.text.get("body", "")


def test_html_text_separates_tags_and_bounds_its_output():
    assert html_text("a<br>b<p>c</p>&eacute;", 100).split() == ["a", "b", "c", "é"]
    assert len(html_text("<p>" + "x" * 500_000 + "</p>", 1000)) == 1000


def test_bloom_never_forgets_a_term_and_grows():
    bloom = TermBloom()
    words = [f"term{i}" for i in range(20_000)]
    bloom.update(words)
    assert all(w in bloom for w in words)
    assert len(bloom.layers) > 1
    false_positives = sum(f"absent{i}" in bloom for i in range(10_000))
    assert false_positives < 300  # ~1% with the layers' 0.5% each
    again = TermBloom.from_bytes(bloom.to_bytes())
    assert all(w in again for w in words[::97])
    assert sum(f"absent{i}" in again for i in range(10_000)) == false_positives


def test_cannot_match_needs_a_missing_term_on_every_path():
    bloom = TermBloom()
    bloom.update(["budget", "lisbon", "bob"])
    for query in ("zanzibar", "budget zanzibar", '"budget zanzibar"', "from:zanzibar",
                  "zanzibar OR quokka", "is:unread zanzibar", "(zanzibar OR quokka) budget"):
        assert cannot_match(parse(query), bloom), query
    for query in ("budget", "budget OR zanzibar", "-zanzibar", "is:unread", "",
                  "from:bob lisbon", "{zanzibar budget}"):
        assert not cannot_match(parse(query), bloom), query


async def test_bloom_filters_live_in_the_cache():
    cache = MemoryCache()
    filters = BloomFilters(cache)
    assert await filters.load("A@x") is None
    bloom = TermBloom()
    bloom.add("budget")
    assert await filters.save("A@x", bloom)
    loaded = await filters.load("a@X", writable=True)
    assert "budget" in loaded and "other" not in loaded
    loaded.add("other")
    await filters.save("a@x", loaded)
    assert "other" in await filters.load("a@x")
    await filters.drop("a@x")
    assert await filters.load("a@x") is None


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


async def test_breaker_opens_after_failures_and_closes_after_a_good_trial():
    clock = Clock()
    breaker = CircuitBreaker(failures=2, reset_after=10, timeout=1, clock=clock)
    calls = []

    async def failing():
        calls.append("fail")
        raise OSError("down")

    async def working():
        calls.append("ok")
        return 42

    for _ in range(2):
        with pytest.raises(SearchUnavailable):
            await breaker.call(failing)
    with pytest.raises(SearchUnavailable, match="circuit open"):
        await breaker.call(working)  # refused without being called
    assert calls == ["fail", "fail"] and breaker.is_open
    clock.now = 11
    assert await breaker.call(working) == 42
    assert not breaker.is_open


async def test_breaker_counts_a_hang_and_ignores_a_bad_query():
    breaker = CircuitBreaker(failures=1, reset_after=10, timeout=0.05)

    async def bad_query():
        raise InvalidQuery(0, "nope")

    with pytest.raises(InvalidQuery):
        await breaker.call(bad_query, is_failure=lambda e: not isinstance(e, InvalidQuery))
    assert not breaker.is_open

    async def hang():
        await asyncio.sleep(10)

    with pytest.raises(SearchUnavailable, match="did not answer"):
        await breaker.call(hang)
    assert breaker.is_open
