"""The Authentication-Results header (RFC 8601) we prepend, and the removal of
forged ones.

A header claiming our authserv-id that arrives from outside is a forgery meant
to fool a mail client that trusts ours (RFC 8601 5), so it is cut out of the
raw message. That is the one change made to the bytes as received; everything
else stays byte for byte, and our trace headers go on top.
"""
from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+$")
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def _printable(text: str) -> str:
    """HELO, MAIL FROM and signature tags are the sender's text: a bare CR or
    other control in them must not reach our header, where it could start a
    field of its own. Blanks become spaces, other non-printables "?"."""
    return "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in text)


def _value(text: str) -> str:
    """A pvalue: a token or an address as is, anything else quoted (RFC 2045 value)."""
    text = _printable(text)
    if _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    cleaned = re.sub(r"[()\\]", " ", _printable(text)).strip()
    return f" ({cleaned})" if cleaned else ""


def build_header(authserv_id: str, spf, dkim: list, dmarc, arc) -> bytes:
    """One Authentication-Results field; any of the results may be None (not checked)."""
    parts = []
    if spf is not None:
        ptype, value = spf.property
        parts.append(f"spf={spf.result}{_comment(spf.explanation if spf.result == 'fail' else '')}"
                     f" {ptype}={_value(value)}")
    if dkim is not None:
        if not dkim:
            parts.append("dkim=none")
        for result in dkim:
            text = f"dkim={result.result}"
            if result.result != "pass" and result.reason:
                text += _comment(result.reason)
            for name, value in (("header.d", result.domain), ("header.i", result.identity),
                                ("header.s", result.selector), ("header.a", result.algorithm),
                                ("header.b", result.b)):
                if value:
                    text += f" {name}={_value(value)}"
            parts.append(text)
    if dmarc is not None:
        text = f"dmarc={dmarc.result}"
        if dmarc.result in ("pass", "fail"):
            text += f" (p={dmarc.policy} dis={dmarc.disposition})"
        elif dmarc.reason:
            text += _comment(dmarc.reason)
        if dmarc.header_from:
            text += f" header.from={_value(dmarc.header_from)}"
        parts.append(text)
    if arc is not None:
        text = f"arc={arc.result}"
        if arc.instances:
            text += f" (i={arc.instances})"
        parts.append(text)
    if not parts:
        parts.append("none")
    return ("Authentication-Results: " + authserv_id + ";\r\n\t"
            + ";\r\n\t".join(parts) + "\r\n").encode("utf-8", "surrogateescape")


def _authserv_id(field_value: bytes) -> str:
    """The authserv-id: the first token after any comments, before ';' or space."""
    text = field_value.decode("utf-8", "replace")
    text = re.sub(r"\r?\n", "", text).strip()
    while text.startswith("("):
        depth, i = 0, 0
        for i, c in enumerate(text):
            depth += c == "("
            depth -= c == ")"
            if depth == 0:
                break
        text = text[i + 1:].strip()
    return re.split(r"[;\s(]", text, maxsplit=1)[0].strip().lower()


def remove_forged(raw: bytes, authserv_id: str) -> tuple[bytes, int]:
    """Cuts every Authentication-Results field of the header section whose
    authserv-id is ours; returns the message and how many were cut. Every
    other byte is kept as it came."""
    ours = authserv_id.lower()
    kept: list[bytes] = []
    removed = 0
    position = 0
    field: list[bytes] = []

    def flush() -> None:
        nonlocal removed
        if not field:
            return
        first = field[0]
        match = _FIELD_NAME.match(first)
        if (match and match.group(1).lower() == b"authentication-results"
                and _authserv_id(b"".join(field)[match.end():]) == ours):
            removed += 1
        else:
            kept.extend(field)
        field.clear()

    while position < len(raw):
        end = raw.find(b"\n", position)
        end = len(raw) if end < 0 else end + 1
        line = raw[position:end]
        if line in (b"\r\n", b"\n"):
            break  # the blank line: the body follows
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
        else:
            flush()
            field.append(line)
        position = end
    flush()
    if not removed:
        return raw, 0
    return b"".join(kept) + raw[position:], removed
