"""What a message says: the fields a listing, threading and search need.

The parts come from `skeleton.parse`, the same walk `split` uses, so an
attachment's id is the path of the PartInfo whose body holds it, and its size
and sha256 are computed by `decode_part` from those very bytes: what the API
serves from the part blob matches what was listed. Header fields are read with
`email.policy.default` (RFC 2047 words, address lists, dates); a field it
raises on is read as sent, leniently, and noted as a defect.
"""
from __future__ import annotations

import email.policy
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.headerregistry import BaseHeader
from email.message import Message
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import TypeVar

from mailyard.store.mime.skeleton import (PartInfo, Structure, decode_part, decoded_line,
                                          header_text, parse, readable)

SNIPPET_CHARS = 200
# Past this many characters of one field name's values, the rest are read
# leniently without policy.default: its parser slices the rest of the value at
# every token (quadratic: a 20,000-address To: took 15-30 s on Python 3.11)
# and costs ~0.25 ms per field (20,000 To: fields, 5 s). 16 KiB takes ~40 ms.
MAX_PARSED_FIELD = 16 * 1024

_MESSAGE_ID = re.compile(r"<[^<>]*>")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WORD = re.compile(r"\S+")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

T = TypeVar("T")


@dataclass(slots=True)
class AttachmentInfo:
    id: str                 # the part path, stable for the message
    filename: str           # "" when the part names none
    content_type: str
    size: int               # decoded bytes
    sha256: str             # hex, of the decoded bytes
    path: str               # the PartInfo path whose body holds it
    transfer_encoding: str  # how the stored part body is encoded


@dataclass(slots=True)
class Summary:
    rfc822_message_id: str = ""       # with its angle brackets
    references: list[str] = field(default_factory=list)  # References, then In-Reply-To
    sender: str = ""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    subject: str = ""
    date_ms: int | None = None
    snippet: str = ""
    text_body: str | None = None
    html_body: str | None = None
    attachments: list[AttachmentInfo] = field(default_factory=list)
    malformed: bool = False
    defects: list[str] = field(default_factory=list)

    @property
    def has_attachments(self) -> bool:
        return bool(self.attachments)


def summarize(raw: bytes, structure: Structure | None = None) -> Summary:
    """Never raises: whatever cannot be read is left empty and noted in defects.
    `structure` is parse(raw) when the caller has it already."""
    summary = Summary()
    try:
        _fill(summary, raw, structure)
    except Exception as exc:  # any input is still mail: store it, flagged
        summary.defects.append(f"summarize: {type(exc).__name__}: {readable(str(exc))}")
    summary.malformed = bool(summary.defects)
    return summary


def _fill(summary: Summary, raw: bytes, structure: Structure | None) -> None:
    structure = structure or parse(raw)
    summary.defects += structure.defects
    fields = _Fields(structure.headers, summary.defects)
    message_id = next(iter(fields.raw("message-id")), "")
    summary.rfc822_message_id = next(iter(_message_ids(message_id)), message_id.strip())
    summary.references = list(dict.fromkeys(
        ref for value in fields.raw("references") + fields.raw("in-reply-to")
        for ref in _message_ids(value)))
    summary.sender = next(iter(fields.read("from", _decoded, header_text)), "").strip()
    summary.to = [a for value in fields.read("to", _addresses, _lenient_addresses) for a in value]
    summary.cc = [a for value in fields.read("cc", _addresses, _lenient_addresses) for a in value]
    summary.subject = next(iter(fields.read("subject", _decoded, header_text)), "").strip()
    summary.date_ms = next((_epoch_ms(d) for d in fields.read("date", _datetime, lambda _: None)
                            if d is not None), None)

    for part in structure.parts:
        named = part.disposition == "attachment" or bool(part.filename)
        if not named and part.content_type == "text/plain":
            if summary.text_body is None:
                summary.text_body = _text(raw, part)
        elif not named and part.content_type == "text/html":
            if summary.html_body is None:
                summary.html_body = _text(raw, part)
        elif named or part.content_type.split("/")[0] not in ("text", "multipart"):
            summary.attachments.append(_attachment(raw, part))
    summary.snippet = _snippet(summary.text_body) or _snippet(_html_text(summary.html_body or ""))


class _Fields:
    """The top-level header fields. Every read goes through here, so a field
    policy.default cannot parse is read as sent instead and noted."""

    def __init__(self, headers: Message, defects: list[str]) -> None:
        self._items = [(name.lower(), value) for name, value in headers.raw_items()]
        self._defects = defects

    def raw(self, name: str) -> list[str]:
        return [readable(value) for key, value in self._items if key == name]

    def read(self, name: str, parsed: Callable[[BaseHeader], T],
             lenient: Callable[[str], T]) -> list[T]:
        values = []
        budget = MAX_PARSED_FIELD
        for key, value in self._items:
            if key != name:
                continue
            budget -= len(value)
            if budget < 0:
                values.append(lenient(value))
                continue
            try:
                values.append(parsed(email.policy.default.header_fetch_parse(name, value)))
            except Exception as exc:  # e.g. IndexError on "aperson@" (Python 3.11)
                self._defects.append(f"{name}: {type(exc).__name__}: {readable(str(exc))}")
                values.append(lenient(value))
        return values


def _message_ids(value: str) -> list[str]:
    found = ["".join(m.split()) for m in _MESSAGE_ID.findall(value)]
    return [m for m in found if m != "<>"]


def _decoded(header: BaseHeader) -> str:
    return decoded_line(str(header))


def _addresses(header: BaseHeader) -> list[str]:
    # An entry the parser gave up on ("aperson@" among others) comes back empty: "<>".
    return [decoded_line(str(a)) for a in header.addresses
            if a.username or a.domain or a.display_name]


def _lenient_addresses(value: str) -> list[str]:
    """The addresses getaddresses finds (names decoded after the split, so a
    decoded comma or colon cannot split them), else the value as sent,
    decoded, so "aperson@" is still shown rather than nothing."""
    try:
        found = [f"{header_text(name)} <{addr}>" if name else addr
                 for name, addr in getaddresses([readable(value)]) if addr]
    except Exception:  # RecursionError on deeply nested comments
        found = []
    text = header_text(value).strip()
    return found or ([text] if text else [])


def _datetime(header: BaseHeader) -> datetime | None:
    return header.datetime


def _epoch_ms(when: datetime) -> int:
    if when.tzinfo is None:  # "-0000": the zone is unknown, so read it as UTC
        when = when.replace(tzinfo=timezone.utc)
    return (when - _EPOCH) // timedelta(milliseconds=1)


def _text(raw: bytes, part: PartInfo) -> str:
    start, end = part.body_range
    data = decode_part(raw[start:end], part.transfer_encoding)
    return _decode_text(data, part.charset).replace("\r\n", "\n")


def _decode_text(data: bytes, charset: str | None) -> str:
    """Bad bytes become U+FFFD; a missing or unknown charset falls back to
    UTF-8, then Latin-1. Mail labelled ASCII is often UTF-8, so it gets the
    fallback too."""
    if charset and charset not in ("us-ascii", "ascii"):
        try:
            # UTF-7 and UTF-16 decode to lone surrogates, which no store takes.
            return _SURROGATE.sub("\ufffd", data.decode(charset, "replace"))
        except Exception:  # LookupError, or a codec that is not a text encoding
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _attachment(raw: bytes, part: PartInfo) -> AttachmentInfo:
    start, end = part.body_range
    data = decode_part(raw[start:end], part.transfer_encoding)
    return AttachmentInfo(
        id=part.path, filename=part.filename or "", content_type=part.content_type,
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), path=part.path,
        transfer_encoding=part.transfer_encoding)


def _snippet(text: str | None) -> str:
    """The first words of a text, whitespace collapsed, cut at SNIPPET_CHARS."""
    words: list[str] = []
    length = 0
    for word in _WORD.finditer(text or ""):
        words.append(word[0])
        length += len(word[0]) + 1
        if length > SNIPPET_CHARS:
            break
    return " ".join(words)[:SNIPPET_CHARS]


class _HTMLText(HTMLParser):
    """The visible text of an HTML document; block tags separate words."""
    _HIDDEN = frozenset({"style", "script", "title"})
    _BLOCKS = frozenset({"br", "p", "div", "li", "tr", "td", "th", "table", "ul", "ol",
                         "blockquote", "hr", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.visible = 0
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.chunks.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.chunks.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.chunks.append(data)
            self.visible += len(data.strip())


def _html_text(html: str, chunk: int = 16384, limit: int = 1024 * 1024) -> str:
    """Enough of an HTML body's text for a snippet: it is fed in chunks until
    there is enough, and never more than limit characters, so a huge
    newsletter is not parsed whole."""
    parser = _HTMLText()
    try:
        for start in range(0, min(len(html), limit), chunk):
            parser.feed(html[start:start + chunk])
            if parser.visible > SNIPPET_CHARS:
                break
        parser.close()
    except Exception:  # html.parser is lenient, but keep what it found if it does raise
        pass
    return "".join(parser.chunks)
