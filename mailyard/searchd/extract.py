"""The searchable text of a message: headers, bodies, attachment names and texts.

MIME is read by store.mime (parse, decode_part), the same code the delivery
worker stores messages with. HTML becomes its visible text; text
attachments and PDFs (pypdf) contribute their text up to a size bound each.
An attachment that cannot be read is logged and skipped: the rest of the
message is still indexed.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from html.parser import HTMLParser

from mailyard.policy.logs import EventLog
from mailyard.searchd.index.base import SearchDocument
from mailyard.searchd.query import index_text
from mailyard.store.metadata.base import MessageRecord
from mailyard.store.mime import PartInfo, decode_part
from mailyard.store.mime.skeleton import header_text, parse

# pypdf logs every oddity of a malformed PDF at WARNING; one line of ours is enough.
logging.getLogger("pypdf").setLevel(logging.ERROR)

_TEXT_TYPES = ("text/plain", "text/csv", "text/markdown", "text/x-log", "text/calendar",
               "application/json", "application/xml", "text/xml", "text/x-python")
_TEXT_SUFFIXES = (".txt", ".csv", ".md", ".log", ".json", ".xml", ".ics", ".py")


@dataclass
class Limits:
    max_attachment_bytes: int = 10 * 1024 * 1024   # larger attachments: name only
    max_text_chars: int = 1024 * 1024              # per body and per attachment


def document(record: MessageRecord, raw: bytes, limits: Limits = Limits(),
             log: EventLog | None = None) -> SearchDocument:
    """The index document of a stored message (never raises on bad mail).

    The walk is store.mime's `parse`, and parts are chosen as `summarize`
    chooses them (the first unnamed text/plain and text/html are the bodies,
    named or non-text parts are attachments). Header fields are only decoded
    (RFC 2047), not parsed into addresses: their words are all search needs,
    and the email package's address parser would halve the indexing rate."""
    try:
        structure = parse(raw)
        headers, parts = structure.headers, structure.parts
    except Exception as exc:  # a bug in the walk: index what the record knows
        if log:
            log.warning("extract_failed", user=record.user_id, message_id=record.message_id,
                        error=f"{type(exc).__name__}: {exc}")
        headers, parts = None, []
    body, filenames, kinds = [], [], set()
    for part in parts:
        named = part.disposition == "attachment" or bool(part.filename)
        if not named and part.content_type in ("text/plain", "text/html"):
            if part.content_type not in kinds:
                kinds.add(part.content_type)
                body.append(_body_text(raw, part, limits))
        elif named or part.content_type.split("/")[0] not in ("text", "multipart"):
            if part.filename:
                filenames.append(part.filename)
            if named and _is_readable(part.content_type, part.filename or ""):
                body.append(_attachment_text(raw, part, limits, log, record))
    fields = {
        "subject": _header(headers, "subject") or record.subject,
        "from": _header(headers, "from") or record.sender,
        "to": _header(headers, "to") or " ".join(record.to),
        "cc": _header(headers, "cc") or " ".join(record.cc),
        "bcc": _header(headers, "bcc"),
        "body": " ".join(body),
        "filename": " ".join(filenames),
    }
    return SearchDocument(
        user_id=record.user_id, message_id=record.message_id,
        received_at_ms=record.received_at_ms, size=record.size, labels=set(record.labels),
        has_attachment=record.has_attachments,
        text={name: index_text(value) for name, value in fields.items() if value})


def _is_readable(content_type: str, filename: str) -> bool:
    name = (filename or "").lower()
    return (content_type in _TEXT_TYPES or content_type == "application/pdf"
            or name.endswith(_TEXT_SUFFIXES) or name.endswith(".pdf"))


def _header(headers, name: str) -> str:
    if headers is None:
        return ""
    return " ".join(header_text(str(v)) for v in headers.get_all(name) or [])


def _body_text(raw: bytes, part: PartInfo, limits: Limits) -> str:
    start, end = part.body_range
    # Encoded text is at most ~3x its decoded size (quoted-printable), so this
    # bounds the work before decoding.
    data = decode_part(raw[start:min(end, start + 3 * limits.max_text_chars)],
                       part.transfer_encoding)
    text = _decode(data, part.charset)
    if part.content_type == "text/html":
        return html_text(text, limits.max_text_chars)
    return text[:limits.max_text_chars]


def _attachment_text(raw: bytes, part: PartInfo, limits: Limits, log: EventLog | None,
                     record: MessageRecord) -> str:
    start, end = part.body_range
    if end - start > limits.max_attachment_bytes * 4 // 3 + 1024:  # encoded size bound
        return ""
    try:
        data = decode_part(raw[start:end], part.transfer_encoding)
        if len(data) > limits.max_attachment_bytes:
            return ""
        if part.content_type == "application/pdf" or (part.filename or "").lower().endswith(".pdf"):
            return pdf_text(data, limits.max_text_chars)
        return _decode(data, part.charset)[:limits.max_text_chars]
    except Exception as exc:  # one unreadable attachment must not stop the message
        if log:
            log.warning("extract_failed", user=record.user_id, message_id=record.message_id,
                        part=part.path, error=f"{type(exc).__name__}: {exc}")
        return ""


def pdf_text(data: bytes, max_chars: int) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    chunks, length = [], 0
    for page in reader.pages:
        text = page.extract_text() or ""
        chunks.append(text)
        length += len(text)
        if length >= max_chars:
            break
    return "\n".join(chunks)[:max_chars]


def _decode(data: bytes, charset: str | None) -> str:
    for codec in (charset, "utf-8"):
        if codec and codec not in ("us-ascii", "ascii"):
            try:
                return data.decode(codec)
            except Exception:  # any charset name is mail's to choose: "utf-8\0" raises ValueError
                pass
    return data.decode("latin-1")


class _VisibleText(HTMLParser):
    _HIDDEN = frozenset({"style", "script", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.length = 0
        self._hidden = 0

    def handle_starttag(self, tag, attrs) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        else:
            self.chunks.append(" ")  # any tag may separate words: "a<br>b"

    def handle_endtag(self, tag) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        else:
            self.chunks.append(" ")

    def handle_data(self, data) -> None:
        if not self._hidden:
            self.chunks.append(data)
            self.length += len(data)


def html_text(html: str, max_chars: int) -> str:
    """The visible text of an HTML body, at most max_chars of it."""
    if not html:
        return ""
    parser = _VisibleText()
    try:
        for start in range(0, len(html), 65536):
            parser.feed(html[start:start + 65536])
            if parser.length >= max_chars:
                break
        parser.close()
    except Exception:  # html.parser is lenient; keep what it found if it does raise
        pass
    return "".join(parser.chunks)[:max_chars]
