"""The delivery worker's message analysis: skeleton split/join, summary, part decoding."""
from __future__ import annotations

import base64
import email
import email.policy
import hashlib
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.testdata import CPYTHON_EMAIL, cpython_messages
from mailyard.store.mime import decode_part, join, split, summarize
from mailyard.proto.events_pb2 import Skeleton
from mailyard.store.blobs.base import blob_key
from mailyard.store.mime.skeleton import _header_fields

CORPUS = CPYTHON_EMAIL
CORPUS_FILES = cpython_messages()


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def assert_stored_exactly(raw: bytes, min_part_size: int = 1024):
    """split -> join gives the raw bytes back, and every blob is what its key says."""
    skeleton, blobs, parts = split(raw, min_part_size)
    assert join(Skeleton.FromString(skeleton.SerializeToString()), blobs) == raw
    assert join(skeleton, blobs.__getitem__) == raw
    assert all(key == blob_key(data) for key, data in blobs.items())
    assert all(part.blob_key in blobs for part in parts if part.blob_key)
    return skeleton, blobs, parts


def served_attachments(raw: bytes, min_part_size: int = 1) -> dict[str, bytes]:
    """What the API would serve per attachment id, the way the worker stores it:
    the part blob if its body was cut out, else the body range of the raw bytes."""
    _, blobs, parts = split(raw, min_part_size)
    by_path = {p.path: p for p in parts}
    served = {}
    for att in summarize(raw).attachments:
        part = by_path[att.path]
        start, end = part.body_range
        encoded = blobs[part.blob_key] if part.blob_key else raw[start:end]
        assert part.transfer_encoding == att.transfer_encoding
        served[att.id] = decode_part(encoded, att.transfer_encoding)
    return served


def assert_attachments_servable(raw: bytes) -> None:
    summary = summarize(raw)
    served = served_attachments(raw)
    for att in summary.attachments:
        assert att.id == att.path
        assert hashlib.sha256(served[att.id]).hexdigest() == att.sha256
        assert len(served[att.id]) == att.size


# --- the test corpus ------------------------------------------------------------------

def test_corpus_is_there():
    assert len(CORPUS_FILES) == 48


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("line_ending", ["as-is", "crlf"])
def test_corpus_round_trips_and_summarizes(path, line_ending):
    raw = path.read_bytes() if line_ending == "as-is" else crlf(path.read_bytes())
    for min_part_size in (1, 64, 1024):
        assert_stored_exactly(raw, min_part_size)
    summary = summarize(raw)
    assert summary.malformed == bool(summary.defects)
    assert_attachments_servable(raw)


def stdlib_leaves(msg, path=""):
    """(path, content type, encoded body) of the stdlib parser's leaves;
    message/* parts are kept whole, as split does."""
    if msg.get_content_maintype() == "multipart" and msg.is_multipart():
        leaves = []
        for n, sub in enumerate(msg.get_payload(), 1):
            leaves += stdlib_leaves(sub, f"{path}.{n}" if path else str(n))
        return leaves
    payload = msg.get_payload()
    body = payload.encode("ascii", "surrogateescape") if isinstance(payload, str) else None
    return [(path or "1", msg.get_content_type(), body)]


# Nested multiparts reusing their parent's boundary: the stdlib ends the inner
# one at once and loses parts (msg_15's GIF becomes epilogue); split reads the
# inner delimiters as the inner multipart's, as the sender meant.
REUSED_BOUNDARY = ("msg_15.txt", "msg_39.txt")


@pytest.mark.parametrize("path", [p for p in CORPUS_FILES if p.name not in REUSED_BOUNDARY],
                         ids=lambda p: p.name)
def test_parts_agree_with_the_stdlib_parser(path):
    """Same leaf parts, same bodies as email.feedparser."""
    raw = path.read_bytes()
    ours = [(p.path, p.content_type, raw[slice(*p.body_range)]) for p in split(raw, 1)[2]]
    theirs = stdlib_leaves(email.message_from_bytes(raw, policy=email.policy.compat32))
    assert [leaf[:2] for leaf in ours] == [leaf[:2] for leaf in theirs]
    for (_, _, body), (_, _, expected) in zip(ours, theirs):
        if expected is not None:
            assert body == expected


def test_corpus_attachment_is_found_and_decoded():
    raw = corpus("msg_07.txt")
    summary = summarize(raw)
    [att] = summary.attachments
    assert (att.id, att.filename, att.content_type, att.transfer_encoding) == (
        "2", "dingusfish.gif", "image/gif", "base64")
    gif = email.message_from_bytes(raw, policy=email.policy.default).get_payload(1)
    decoded = gif.get_payload(decode=True)
    assert att.size == len(decoded) == 3512
    assert att.sha256 == hashlib.sha256(decoded).hexdigest()
    assert summary.has_attachments
    assert summary.text_body.startswith("Hi there,")
    assert summary.sender == "Barry <barry@digicool.com>"
    assert summary.to == ["Dingus Lovers <cravindogs@cravindogs.com>"]
    assert summary.subject == "Here is your dingus fish"
    assert summary.date_ms == 987809702000  # Fri, 20 Apr 2001 19:35:02 -0400

    _, blobs, parts = split(raw)
    assert [p.path for p in parts] == ["1", "2"]
    assert parts[1].blob_key in blobs and parts[0].blob_key is None  # 4.7 KB vs 36 bytes


def test_crlf_corpus_message_with_attachment():
    summary = summarize(corpus("msg_26.txt"))
    [att] = summary.attachments
    assert (att.filename, att.content_type, att.size) == ("clock.bmp", "application/riscos", 630)
    assert summary.rfc822_message_id == "<6df65d354b.father.time@rpc.wooster.local>"
    assert summary.text_body == "Simple email with attachment.\n\n"


def test_nested_multipart_reusing_its_parents_boundary_keeps_every_part():
    raw = corpus("msg_15.txt")
    summary = summarize(raw)
    assert [p.path for p in split(raw)[2]] == ["1.1", "1.2", "2"]
    assert summary.text_body.strip() == "Some removed test."
    assert [(a.id, a.filename) for a in summary.attachments] == [("2", "xx.gif")]
    assert [p.path for p in split(corpus("msg_39.txt"))[2]] == [
        "1.1.1", "1.1.2", "1.2.1", "1.2.2", "1.3.1", "1.3.2", "2"]


def test_header_without_separator_is_flagged_not_lost():
    raw = corpus("msg_35.txt")
    summary = summarize(raw)
    assert summary.malformed
    assert any("MissingHeaderBodySeparator" in d for d in summary.defects)
    assert summary.subject == "here's something interesting"
    assert summary.text_body.startswith("counter to RFC 2822")


@pytest.mark.parametrize("name, defect", [("msg_41.txt", "NoBoundaryInMultipart"),
                                          ("msg_31.txt", "StartBoundaryNotFound"),
                                          ("msg_47.txt", "MissingHeaderBodySeparator")])
def test_broken_structure_is_flagged(name, defect):
    summary = summarize(corpus(name))
    assert summary.malformed
    assert any(defect in d for d in summary.defects)


def test_delimiter_with_transport_padding_inside_text_ends_the_part():
    # RFC 2046 allows blanks after a delimiter, so "--<outer boundary> " at a
    # line start ends the text part even though its author meant it as text.
    summary = summarize(corpus("msg_38.txt"))
    assert summary.text_body.endswith("not only contains the outer boundary tags ")
    assert summary.malformed


def test_delivery_report_parts():
    summary = summarize(corpus("msg_16.txt"))
    assert summary.sender == "Internet Mail Delivery <postmaster@ucla.edu>"
    assert summary.rfc822_message_id == "<0GK500B04D0B8X@cougar.noc.ucla.edu>"
    assert [a.content_type for a in summary.attachments] == [
        "message/delivery-status", "message/rfc822"]


# --- a hand-built message with a large attachment ------------------------------------

PAYLOAD = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(1563))[:50_000]  # binary


def b64_lines(data: bytes, eol: bytes = b"\r\n") -> bytes:
    text = base64.b64encode(data)
    return eol.join(text[i:i + 76] for i in range(0, len(text), 76))


def mixed_message(boundary: str = "outer=_1", subject: str = "Report",
                  eol: bytes = b"\r\n", close: bool = True) -> bytes:
    inner = "alt" + boundary
    lines = [
        "From: =?utf-8?q?Ren=C3=A9e?= <renee@example.com>",
        "To: Bob <bob@example.com>, carol@example.com",
        "Cc: dave@example.com",
        f"Subject: {subject}",
        "Date: Tue, 02 Jan 2024 03:04:05 +0100",
        "Message-ID:  <m1@example.com> ",
        "In-Reply-To: <m0@example.com>",
        "References: <r1@example.com>\r\n <m0@example.com>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        "This is a multi-part message in MIME format.",
        f"--{boundary}",
        f'Content-Type: multipart/alternative; boundary="{inner}"',
        "",
        f"--{inner}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        "Hello   Bob,=0D=0Athe r=C3=A9sum=C3=A9 is attached.",
        f"--{inner}",
        "Content-Type: text/html; charset=utf-8",
        "",
        "<html><head><style>p {color: red}</style></head>"
        "<body><p>Hello <b>Bob</b>,</p><p>the r\u00e9sum\u00e9</p></body></html>",
        f"--{inner}--",
        "",
        f"--{boundary}",
        "Content-Type: application/pdf",
        "Content-Transfer-Encoding: base64",
        "Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
        "",
        b64_lines(PAYLOAD, b"\r\n").decode(),
    ]
    if close:
        lines += [f"--{boundary}--", "epilogue"]
    return "\r\n".join(lines).encode().replace(b"\r\n", eol)


def test_attachment_is_cut_out_and_decodes_to_the_original():
    raw = mixed_message()
    skeleton, blobs, parts = assert_stored_exactly(raw)
    assert [(p.path, p.content_type) for p in parts] == [
        ("1.1", "text/plain"), ("1.2", "text/html"), ("2", "application/pdf")]
    pdf = parts[2]
    assert pdf.filename == "r\u00e9sum\u00e9.pdf"
    assert pdf.disposition == "attachment" and pdf.transfer_encoding == "base64"
    assert blobs[pdf.blob_key] == b64_lines(PAYLOAD)
    assert raw[slice(*pdf.body_range)] == b64_lines(PAYLOAD)
    assert list(blobs) == [pdf.blob_key]  # the small bodies stay in the skeleton
    assert sum(len(s.literal) for s in skeleton.segments) < 2048

    summary = summarize(raw)
    [att] = summary.attachments
    assert (att.id, att.path, att.filename, att.content_type, att.size) == (
        "2", "2", "r\u00e9sum\u00e9.pdf", "application/pdf", 50_000)
    assert att.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert hashlib.sha256(decode_part(blobs[pdf.blob_key], "base64")).digest() == \
        hashlib.sha256(PAYLOAD).digest()


def test_summary_of_the_hand_built_message():
    summary = summarize(mixed_message())
    assert summary.sender == "Ren\u00e9e <renee@example.com>"
    assert summary.to == ["Bob <bob@example.com>", "carol@example.com"]
    assert summary.cc == ["dave@example.com"]
    assert summary.subject == "Report"
    assert summary.rfc822_message_id == "<m1@example.com>"
    assert summary.references == ["<r1@example.com>", "<m0@example.com>"]
    assert summary.date_ms == 1704161045000
    assert summary.text_body == "Hello   Bob,\r\nthe r\u00e9sum\u00e9 is attached.".replace(
        "\r\n", "\n")
    assert summary.html_body.startswith("<html>")
    assert summary.snippet == "Hello Bob, the r\u00e9sum\u00e9 is attached."
    assert not summary.malformed and summary.defects == []


def test_same_attachment_in_two_messages_is_one_blob():
    first = split(mixed_message("b1", "Report"))[1]
    second = split(mixed_message("=_other.boundary", "Fwd: Report, again"))[1]
    assert list(first) == list(second) == [blob_key(b64_lines(PAYLOAD))]


def test_snippet_from_html_when_there_is_no_text_part():
    raw = (b"Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
           b"<html><head><title>News</title><style>.x{}</style><script>var a=1;</script>"
           b"</head><body><div>Caf\xe9</div><div>au&nbsp;lait</div></body></html>")
    summary = summarize(raw)
    assert summary.text_body is None
    assert summary.snippet == "Caf\u00e9 au lait"


def test_nested_multiparts_get_imap_paths():
    raw = b"\n".join([
        b"Content-Type: multipart/mixed; boundary=a", b"",
        b"--a", b"Content-Type: text/plain", b"", b"one",
        b"--a", b"Content-Type: multipart/related; boundary=b", b"",
        b"--b", b"Content-Type: multipart/alternative; boundary=c", b"",
        b"--c", b"", b"two", b"--c", b"Content-Type: text/html", b"", b"<p>three</p>", b"--c--",
        b"--b", b"Content-Type: image/png", b"Content-Disposition: inline", b"", b"PNG",
        b"--b--",
        b"--a", b"Content-Type: message/rfc822", b"",
        b"Content-Type: multipart/mixed; boundary=d", b"", b"--d", b"", b"inner", b"--d--",
        b"--a--", b""])
    _, _, parts = assert_stored_exactly(raw, 1)
    assert [(p.path, p.content_type, raw[slice(*p.body_range)]) for p in parts] == [
        ("1", "text/plain", b"one"),
        ("2.1.1", "text/plain", b"two"),
        ("2.1.2", "text/html", b"<p>three</p>"),
        ("2.2", "image/png", b"PNG"),
        ("3", "message/rfc822",
         b"Content-Type: multipart/mixed; boundary=d\n\n--d\n\ninner\n--d--"),
    ]
    summary = summarize(raw)
    assert [a.id for a in summary.attachments] == ["2.2", "3"]
    assert summary.text_body == "one"


def test_missing_close_delimiter_runs_the_last_part_to_the_end():
    raw = mixed_message(close=False)
    _, blobs, parts = assert_stored_exactly(raw)
    assert raw[slice(*parts[-1].body_range)] == b64_lines(PAYLOAD)
    summary = summarize(raw)
    assert summary.malformed
    assert any("CloseBoundaryNotFound" in d for d in summary.defects)
    assert summary.attachments[0].sha256 == hashlib.sha256(PAYLOAD).hexdigest()


def test_truncated_message_round_trips():
    raw = mixed_message()
    for cut in (0, 1, 200, 600, 800, len(raw) // 2, len(raw) - 20):
        assert_stored_exactly(raw[:cut], 1)
        assert_attachments_servable(raw[:cut])


def test_boundary_with_regex_special_characters():
    boundary = "=_(.*)+?[^x]{2}|$"
    raw = mixed_message(boundary)
    _, _, parts = assert_stored_exactly(raw)
    assert [p.path for p in parts] == ["1.1", "1.2", "2"]
    assert summarize(raw).attachments[0].size == 50_000


def test_bare_lf_message():
    raw = mixed_message(eol=b"\n")
    assert b"\r" not in raw
    _, blobs, parts = assert_stored_exactly(raw)
    assert raw[slice(*parts[2].body_range)] == b64_lines(PAYLOAD, b"\n")
    summary = summarize(raw)
    assert summary.attachments[0].sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert summary.subject == "Report"


def test_empty_input():
    skeleton, blobs, parts = split(b"")
    assert (list(skeleton.segments), blobs) == ([], {})
    assert join(skeleton, blobs) == b""
    summary = summarize(b"")
    assert summary.subject == "" and summary.attachments == [] and not summary.malformed


def test_headers_without_body_or_separator():
    raw = b"Subject: only headers\r\nFrom: a@example.com"
    assert_stored_exactly(raw, 0)
    summary = summarize(raw)
    assert summary.subject == "only headers" and summary.sender == "a@example.com"


def test_large_plain_body_is_cut_out():
    raw = b"Subject: big\r\n\r\n" + b"x" * 5000
    skeleton, blobs, parts = assert_stored_exactly(raw)
    assert [s.WhichOneof("kind") for s in skeleton.segments] == ["literal", "blob_key"]
    assert blobs == {parts[0].blob_key: b"x" * 5000}


def test_twenty_megabyte_message():
    data = bytes(range(256)) * (15 * 1024 * 1024 // 256)
    body = b64_lines(data)  # 20 MB encoded
    raw = (b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n"
           b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + body + b"\r\n--z--\r\n")
    _, blobs, _ = assert_stored_exactly(raw)
    assert list(blobs.values()) == [body]
    [att] = summarize(raw).attachments
    assert att.sha256 == hashlib.sha256(data).hexdigest()


def test_broken_address_header_falls_back_to_the_raw_value():
    raw = (b"From: Bob <bob@example.com>, <\r\nTo: Z@[\t, carol@example.com\r\n"
           b"Subject: =?utf-8?q?caf=C3=A9?=\r\n =?utf-8?q?_au_lait?=\r\n"
           b"Date: not a date\r\n\r\nhi\r\n")
    summary = summarize(raw)
    assert summary.sender.startswith("Bob <bob@example.com>")
    assert "carol@example.com" in summary.to
    assert summary.subject == "caf\u00e9 au lait"
    assert summary.date_ms is None
    assert summary.malformed  # policy.default raised on From and To


def test_eight_bit_headers_and_unknown_charset():
    raw = ("Subject: Gr\u00fc\u00dfe\r\nContent-Type: text/plain; charset=x-no-such\r\n\r\n"
           "Gr\u00fc\u00dfe").encode()
    summary = summarize(raw)
    assert summary.subject == "Gr\u00fc\u00dfe"
    assert summary.text_body == "Gr\u00fc\u00dfe"
    latin = summarize(b"Content-Type: text/plain\r\n\r\nGr\xfc\xdfe")
    assert latin.text_body == "Gr\u00fc\u00dfe"


# --- decode_part ---------------------------------------------------------------------

@pytest.mark.parametrize("encoded, expected", [
    (b"aGVsbG8=", b"hello"),
    (b"aGVsbG8", b"hello"),                       # missing padding
    (b"aGVs\r\nbG8=\r\n", b"hello"),
    (b"aG!Vs*bG8=", b"hello"),                    # junk characters
    (b"aGk=\r\naGk=\r\n", b"hihi"),               # padding on every line
    (b"aGVsbG8gd", b"hello "),                    # a lone trailing character
    (b"", b""),
])
def test_decode_base64_leniently(encoded, expected):
    assert decode_part(encoded, "base64") == expected
    assert decode_part(encoded, " Base64 ") == expected


def test_decode_quoted_printable_and_identity():
    assert decode_part(b"caf=C3=A9 =\r\nau lait", "quoted-printable") == "café au lait".encode()
    assert decode_part(b"as =41 is", "8bit") == b"as =41 is"
    assert decode_part(b"x", "x-unknown") == b"x"


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_decode_part_matches_the_stdlib_on_valid_input(encoding):
    part = email.message.EmailMessage()
    part.set_content(PAYLOAD[:3000], "application", "octet-stream", cte=encoding)
    encoded = part.get_payload().encode("ascii")
    assert decode_part(encoded, encoding) == part.get_payload(decode=True) == PAYLOAD[:3000]


# --- properties ----------------------------------------------------------------------

TOKENS = [b"--", b"--a", b"--a--", b"--b", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b" ",
          b"\t", b":", b"x", b"=", b"QUJD", b"\x00", b"\xff\xfe", b"From ",
          b"Content-Type: multipart/mixed; boundary=a", b"Content-Type: multipart/alternative;"
          b" boundary=\"b\"", b"Content-Type: message/rfc822", b"Content-Type: text/html",
          b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable",
          b"Content-Disposition: attachment; filename=\"=?utf-8?q?x?=\"", b"To: <", b"Subject: "]

mime_like = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=8), max_size=60).map(b"".join)


def check_any_input(raw: bytes) -> None:
    for min_part_size in (0, 1, 1024):
        skeleton, blobs, _ = split(raw, min_part_size)
        assert join(skeleton, blobs) == raw
    summary = summarize(raw)
    assert summary.malformed == bool(summary.defects)
    assert_attachments_servable(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes(raw):
    check_any_input(raw)


@settings(max_examples=500, deadline=None)
@given(mime_like)
def test_any_mime_like_bytes(raw):
    check_any_input(raw)


SMALL_MESSAGE = mixed_message().replace(b64_lines(PAYLOAD), b64_lines(PAYLOAD[:300]))

mutation = st.tuples(st.sampled_from(["delete", "insert", "duplicate", "truncate"]),
                     st.integers(0, len(SMALL_MESSAGE)), st.integers(0, 80),
                     st.sampled_from(TOKENS) | st.binary(max_size=6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=6))
def test_mutated_multipart(mutations):
    raw = SMALL_MESSAGE
    for kind, at, length, data in mutations:
        at = min(at, len(raw))
        if kind == "delete":
            raw = raw[:at] + raw[at + length:]
        elif kind == "insert":
            raw = raw[:at] + data + raw[at:]
        elif kind == "duplicate":
            raw = raw[:at + length] + raw[at:]
        else:
            raw = raw[:at]
    check_any_input(raw)


HEADER_LINES = [b"From a@b\r\n", b"From x", b"Subject: hi\r\n", b"To: <a@b>\n", b" folded\r\n",
                b"\tfolded\r", b":no name\r\n", b"X-8bit: \xe9\xff\r\n", b"A:\r\n", b"B: c"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(HEADER_LINES), min_size=1, max_size=12).map(b"".join))
def test_header_fields_read_as_the_stdlib_reads_them(block):
    """The walk reads header blocks without the feed parser, for speed; what it
    reads must be what BytesHeaderParser reads, defects included."""
    ours = _header_fields(block)
    stdlib = BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    assert list(ours.raw_items()) == list(stdlib.raw_items())
    assert ours.get_unixfrom() == stdlib.get_unixfrom()
    assert ours.get_payload() == stdlib.get_payload()
    assert [type(d) for d in ours.defects] == [type(d) for d in stdlib.defects]
