"""What mail files say about a message in its own header block.

mbox has no place for flags outside the message, so mail programs keep them
in header fields: `Status:` (R read, O old) and `X-Status:` (F flagged, A
answered, ...) as mutt, Dovecot and Thunderbird write them, and Gmail's
Takeout writes its labels to `X-Gmail-Labels:`. This module reads them, finds
the received date in `Received:`, and rewrites Status/X-Status on export only
when they disagree with the stored state, so a message that came in with
them goes out byte for byte.

Only the top-level header block counts (a bounce quotes the Status fields of
its delivery report in the body). Pure, no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime

from mailyard.store.mailbox.labels import user_label_problem
from mailyard.store.metadata.base import SYSTEM_LABELS
from mailyard.store.mime.skeleton import header_text

MAX_HEADER_BYTES = 1024 * 1024
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_QUOTED_OR_PLAIN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^,]*))\s*(?:,|$)')

# Takeout's names for Gmail's system labels; "Opened", "Archived" and the
# category tabs are states Gmail derives, not labels to keep.
_GMAIL_SYSTEM = {"inbox": "INBOX", "sent": "SENT", "draft": "DRAFT", "drafts": "DRAFT",
                 "spam": "SPAM", "trash": "TRASH", "starred": "STARRED",
                 "important": "IMPORTANT", "unread": "UNREAD"}
_GMAIL_IGNORED = {"opened", "archived", "chat"}


@dataclass(slots=True)
class Field:
    name: bytes    # lower-case
    value: bytes   # as sent, continuation lines and line ends included
    start: int     # byte range of the whole field in the message
    end: int


@dataclass(slots=True)
class HeaderState:
    seen: bool
    starred: bool
    gmail_labels: list[str] | None   # X-Gmail-Labels as written, when present


def top_fields(raw: bytes) -> tuple[list[Field], int]:
    """The top-level header fields and the offset where a new field may be
    inserted (the start of the empty line that ends the block). A leading
    From_ line (a message saved from an mbox) is skipped."""
    fields: list[Field] = []
    pos = 0
    if raw.startswith(b"From "):
        pos = raw.find(b"\n") + 1
        if pos == 0:  # a From_ line and nothing else
            return fields, len(raw)
    limit = min(len(raw), MAX_HEADER_BYTES)
    while pos < limit:
        eol = raw.find(b"\n", pos)
        end = len(raw) if eol < 0 else eol + 1
        line = raw[pos:end]
        if line.strip(b"\r\n") == b"":
            break
        if line[0] in b" \t" and fields:
            fields[-1].value += line
            fields[-1].end = end
        else:
            match = _FIELD_NAME.match(line)
            if match is None:
                break
            fields.append(Field(match[1].lower(), line[match.end():], pos, end))
        pos = end
    return fields, pos


def _value(fields: list[Field], name: bytes) -> str | None:
    for field in fields:
        if field.name == name:
            return " ".join(field.value.decode("utf-8", "surrogateescape").split())
    return None


def gmail_labels(value: str) -> list[str]:
    """The labels of an X-Gmail-Labels value: comma separated, a label with a
    comma in double quotes."""
    labels = []
    for quoted, plain in _QUOTED_OR_PLAIN.findall(value):
        label = (quoted.replace('\\"', '"') if quoted else plain).strip()
        if label:
            labels.append(label)
    return labels


def state_of(raw: bytes) -> HeaderState:
    """Read and flagged as the headers say: Status and X-Status when present,
    else Takeout's Unread and Starred labels; a message without any is new."""
    fields, _ = top_fields(raw)
    status, x_status = _value(fields, b"status"), _value(fields, b"x-status")
    labels_value = _value(fields, b"x-gmail-labels")
    labels = gmail_labels(header_text(labels_value)) if labels_value is not None else None
    lowered = {label.lower() for label in labels or ()}
    if status is not None:
        seen = "R" in status
    else:
        seen = labels is not None and "unread" not in lowered
    starred = "F" in x_status if x_status is not None else "starred" in lowered
    return HeaderState(seen, starred, labels)


def mailyard_labels(gmail: list[str]) -> tuple[set[str], list[str]]:
    """Our labels for Takeout's, and the names that cannot be a label here.
    UNREAD and STARRED are left to `state_of`."""
    labels, refused = set(), []
    for name in gmail:
        low = name.lower()
        if low in _GMAIL_SYSTEM:
            if _GMAIL_SYSTEM[low] not in ("UNREAD", "STARRED"):
                labels.add(_GMAIL_SYSTEM[low])
        elif low in _GMAIL_IGNORED or low.startswith("category "):
            continue
        elif name.upper() in SYSTEM_LABELS:
            labels.add(name.upper())
        elif user_label_problem(name) is None:
            labels.add(name)
        else:
            refused.append(name)
    return labels, refused


def with_state(raw: bytes, seen: bool, starred: bool) -> bytes:
    """The message with Status/X-Status saying `seen` and `starred`; the very
    same bytes when its headers say so already."""
    fields, insert_at = top_fields(raw)
    current = state_of(raw)
    if current.seen == seen and current.starred == starred:
        return raw
    first_eol = raw.find(b"\n")
    eol = b"\r\n" if first_eol > 0 and raw[first_eol - 1:first_eol] == b"\r" else b"\n"
    edits: list[tuple[int, int, bytes]] = []

    def put(name: bytes, letters: str) -> None:
        line = name + b": " + letters.encode() + eol
        field = next((f for f in fields if f.name == name.lower()), None)
        if field is not None:
            edits.append((field.start, field.end, line))
        else:
            lead = eol if insert_at and raw[insert_at - 1:insert_at] != b"\n" else b""
            edits.append((insert_at, insert_at, lead + line))

    if current.seen != seen:
        old = (_value(fields, b"status") or "").replace("R", "").replace(" ", "")
        put(b"Status", ("R" if seen else "") + (old or "O"))
    if current.starred != starred:
        old = set((_value(fields, b"x-status") or "").replace(" ", "")) - {"F"}
        put(b"X-Status", "".join(sorted(old | ({"F"} if starred else set()))))
    for start, end, replacement in sorted(edits, reverse=True):
        raw = raw[:start] + replacement + raw[end:]
    return raw


def received_ms(raw: bytes) -> int | None:
    """When the last hop received the message: the date of the topmost Received field."""
    fields, _ = top_fields(raw)
    value = _value(fields, b"received")
    if value is None or ";" not in value:
        return None
    try:
        when = parsedate_to_datetime(value.rpartition(";")[2].strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": the zone is unknown, so read it as UTC
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)
