"""mbox files: messages one after another, each after a From_ line.

    From sender@example.com Fri Apr  6 16:46:09 2001
    <the message, body lines that begin with "From " quoted>
    <an empty line>

A line beginning with "From " starts the next message, so writers quote such
lines in the body. mboxrd, which we write, adds one ">" to every line that
matches `>*From ` and its reader removes one: exactly reversible. mboxo
quotes only `From ` and its reader unquotes only `>From `, so a line that
was `>From ` before quoting comes back as `From ` (lossy, and the reason
mboxrd exists). Both read every line beginning with "From " as a new message,
as mutt and Python's mailbox do.

The empty line before the next From_ line is the separator, not part of the
message; a file without it still reads, message by message. mbox cannot carry
a message whose last line has no line break: the writer adds one.
Pure functions over bytes (an mmap works as well), no I/O of their own.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parseaddr

QUOTINGS = ("mboxrd", "mboxo")

_QUOTED_RD = re.compile(rb"^>(>*From )", re.MULTILINE)
_QUOTED_O = re.compile(rb"^>(From )", re.MULTILINE)
_TO_QUOTE = re.compile(rb"^(>*From )", re.MULTILINE)
# The date of a From_ line, asctime style, with or without a zone before the year.
_FROM_DATE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb" +(\d{1,2}) +(\d{1,2}):(\d{2})(?::(\d{2}))?(?: +([+-]\d{4}|[A-Z]{2,5}))? +(\d{4})")
_MONTHS = {m: i for i, m in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
     b"Dec"), 1)}


@dataclass(slots=True)
class MboxEntry:
    number: int          # 1-based, in file order
    offset: int          # byte offset of its From_ line (or of the text, without one)
    from_line: bytes     # without its line end; empty when the text had none
    raw: bytes           # the message, unquoted, without the separator line


def count(data) -> int:
    """How many messages `read` will yield (for a progress display)."""
    n = 1 if data[:5] == b"From " or data[:_lead(data)].strip() else 0
    pos = data.find(b"\nFrom ")
    while pos >= 0:
        n += 1
        pos = data.find(b"\nFrom ", pos + 1)
    return n


def read(data, quoting: str = "mboxrd") -> Iterator[MboxEntry]:
    """The messages of an mbox. Text before the first From_ line (a file that
    is no mbox, or a damaged start) is yielded as a message without a From_
    line rather than dropped."""
    if quoting not in QUOTINGS:
        raise ValueError(f"unknown mbox quoting {quoting!r}; known: {', '.join(QUOTINGS)}")
    unquote = _QUOTED_RD if quoting == "mboxrd" else _QUOTED_O
    number, size = 0, len(data)
    pos = 0
    if data[:5] != b"From ":
        pos = _lead(data)
        if data[:pos].strip():
            number += 1
            yield MboxEntry(number, 0, b"", _unquote(_strip_separator(data[:pos]), unquote))
    while pos < size:
        eol = data.find(b"\n", pos)
        body = size if eol < 0 else eol + 1
        from_line = data[pos:body].rstrip(b"\r\n")
        nxt = data.find(b"\nFrom ", body - 1)  # from the From_ line's own end: may be empty
        end = size if nxt < 0 else nxt + 1
        number += 1
        yield MboxEntry(number, pos, from_line,
                        _unquote(_strip_separator(data[body:end]), unquote))
        pos = end


def _lead(data) -> int:
    """Where the first From_ line starts, in a file that does not begin with one."""
    found = data.find(b"\nFrom ")
    return len(data) if found < 0 else found + 1


def _strip_separator(chunk: bytes) -> bytes:
    if chunk.endswith(b"\n\n"):
        return chunk[:-1]
    if chunk.endswith(b"\r\n\r\n"):
        return chunk[:-2]
    return chunk


def _unquote(raw: bytes, pattern: re.Pattern[bytes]) -> bytes:
    return pattern.sub(rb"\1", raw) if b">From " in raw else raw


def quote(raw: bytes) -> bytes:
    """mboxrd quoting: one more ">" before every line matching `>*From `."""
    return _TO_QUOTE.sub(rb">\1", raw) if b"From " in raw else raw


def from_line(sender: str, received_at_ms: int) -> bytes:
    """A From_ line: the sender's address (MAILER-DAEMON when there is none
    fit for it) and the received time in asctime form, UTC."""
    address = parseaddr(sender)[1]
    if not address or any(c.isspace() for c in address) or not address.isascii():
        address = "MAILER-DAEMON"
    when = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(received_at_ms // 1000))
    return f"From {address} {when}".encode()


def entry(sender: str, received_at_ms: int, raw: bytes) -> bytes:
    """One message as it is written to an mbox: From_ line, quoted message,
    a line break if it lacks a final one, the empty separator line."""
    head = from_line(sender, received_at_ms) + b"\n"
    if not raw:  # the next From_ line follows at once
        return head
    body = quote(raw)
    return b"".join((head, body, b"" if body.endswith(b"\n") else b"\n", b"\n"))


def from_line_ms(line: bytes) -> int | None:
    """The date of a From_ line in epoch milliseconds; a time without a zone
    is read as UTC (the writer's local zone is unknown)."""
    match = _FROM_DATE.search(line)
    if match is None:
        return None
    month, day, hour, minute, second, zone, year = match.groups()
    try:
        when = datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute),
                        int(second or 0), tzinfo=timezone.utc)
    except ValueError:
        return None
    ms = int(when.timestamp() * 1000)
    if zone and zone[:1] in b"+-":
        offset = (int(zone[1:3]) * 60 + int(zone[3:5])) * 60_000
        ms -= offset if zone[:1] == b"+" else -offset
    return ms
