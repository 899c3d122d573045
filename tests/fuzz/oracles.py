"""What every fuzz target checks besides "did not raise": properties a user
or a downstream program would notice if they broke."""
from __future__ import annotations

import re

from mailyard.proto import mailbox_pb2
from mailyard.store.mime import Summary

# Where str.splitlines() breaks a line: a header value holding any of these can
# become two lines (a second, injected header field) once someone re-emits it.
LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# An Authentication-Results or Received field we write: one field, folded
# only as CRLF followed by blanks, ending in CRLF.
_ONE_FIELD = re.compile(rb"[!-9;-~]+:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n")


def one_line(text: str, what: str) -> None:
    """A decoded header value that may be re-emitted as a header (a reply's
    Subject, a DSN, the Sent copy) must not carry a line break."""
    assert not LINE_BREAKS.search(text), f"{what} holds a line break: {text!r}"


def storable(text: str, what: str) -> None:
    """SQLite, protobuf and JSON all refuse lone surrogates: such a string
    would fail the delivery of the message, every time it is retried."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AssertionError(f"{what} is not valid Unicode ({exc}): {text!r}") from None


def sane_summary(summary: Summary) -> None:
    """What the delivery worker stores and the API serves from a summary."""
    blanket = [d for d in summary.defects if d.startswith("summarize:")]
    assert not blanket, f"summarize lost the whole summary to a bug: {blanket}"
    assert summary.malformed == bool(summary.defects)
    header_values = {"sender": [summary.sender], "to": summary.to, "cc": summary.cc,
                     "subject": [summary.subject],
                     "rfc822_message_id": [summary.rfc822_message_id],
                     "references": summary.references,
                     "filename": [a.filename for a in summary.attachments],
                     "content_type": [a.content_type for a in summary.attachments]}
    for name, values in header_values.items():
        for value in values:
            one_line(value, f"summary.{name}")
            storable(value, f"summary.{name}")
    for name in ("snippet", "text_body", "html_body"):
        storable(getattr(summary, name) or "", f"summary.{name}")
    for defect in summary.defects:
        storable(defect, "summary.defects")
    # What GetMessage would serve must serialize.
    mailbox_pb2.Message(
        summary=mailbox_pb2.MessageSummary(to=summary.to, subject=summary.subject,
                                           snippet=summary.snippet,
                                           **{"from": summary.sender}),
        text_body=summary.text_body or "", html_body=summary.html_body or "",
        cc=summary.cc, rfc822_message_id=summary.rfc822_message_id,
        attachments=[mailbox_pb2.Attachment(id=a.id, filename=a.filename,
                                            content_type=a.content_type, size=a.size,
                                            sha256=a.sha256)
                     for a in summary.attachments]).SerializeToString()


def one_header_field(field: bytes, name: bytes) -> None:
    """A header field we build from untrusted input is exactly one field."""
    assert field.startswith(name + b":"), f"not a {name!r} field: {field!r}"
    assert _ONE_FIELD.fullmatch(field), f"{name.decode()} field is not one well-formed field: {field!r}"
    for line in field.split(b"\r\n")[1:-1]:
        assert line.strip(b" \t"), f"{name.decode()} field has a blank continuation line: {field!r}"
