"""What the classifier sees of a message: hashed features (the hashing trick).

Words of the subject and body, the sender's domain and display name, the
domains of links, the mailer, the structure (HTML only, attachments) and the
sender-authentication results our MX recorded, each hashed into a fixed space
of FEATURE_BITS bits, so the weights need no vocabulary and a new word costs
nothing until someone trains on it. Our own trace and X-Spam headers are left
out: a feature must not repeat a verdict back to the learner.
"""
from __future__ import annotations

import email.parser
import email.policy
import email.utils
import html
import re
import zlib
from dataclasses import dataclass, field

from mailyard.store.mime import Summary

FEATURE_BITS = 22                 # 4M buckets: few collisions, fits a signed 32-bit int
MAX_FEATURES = 2000               # distinct features per message
BIAS = "bias"                     # every message has it: the learned prior

_WORD = re.compile(r"[^\W_]{2,24}", re.UNICODE)
_URL_HOST = re.compile(r"https?://([A-Za-z0-9.-]+)", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_AUTH_RESULT = re.compile(r"\b(spf|dkim|dmarc|arc)=([a-z]+)", re.IGNORECASE)


@dataclass(slots=True)
class Headers:
    """The few header fields the rules and features read, as sent."""
    present: set[str] = field(default_factory=set)   # lower-cased names
    from_: str = ""
    reply_to: str = ""
    subject: str = ""
    mailer: str = ""
    auth_results: list[str] = field(default_factory=list)  # Authentication-Results, top first


def read_headers(raw: bytes) -> Headers:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    found = Headers()
    for name, value in parsed.items():
        lower = name.lower()
        found.present.add(lower)
        value = str(value)
        if lower == "from" and not found.from_:
            found.from_ = value
        elif lower == "reply-to" and not found.reply_to:
            found.reply_to = value
        elif lower == "subject" and not found.subject:
            found.subject = " ".join(value.split())
        elif lower in ("x-mailer", "user-agent") and not found.mailer:
            found.mailer = value
        elif lower == "authentication-results":
            found.auth_results.append(" ".join(value.split()))
    return found


def address_domain(field_value: str) -> str:
    _, address = email.utils.parseaddr(field_value)
    return address.rpartition("@")[2].lower().strip(". ") if "@" in address else ""


def body_text(summary: Summary, limit: int) -> str:
    if summary.text_body:
        return summary.text_body[:limit]
    if summary.html_body:
        return html.unescape(_TAG.sub(" ", summary.html_body[:limit * 2]))[:limit]
    return ""


def tokens(headers: Headers, summary: Summary, own_auth: str | None,
           max_text_chars: int) -> list[str]:
    """The message's feature names, before hashing. `own_auth` is our MX's
    Authentication-Results value (see rules.own_auth_results)."""
    names = [BIAS]
    subject = summary.subject or headers.subject
    names += ["s:" + w for w in _WORD.findall(subject.lower())]
    display, address = email.utils.parseaddr(headers.from_)
    names += ["fn:" + w for w in _WORD.findall(display.lower())]
    if "@" in address:
        names.append("fd:" + address.rpartition("@")[2].lower())
    if headers.reply_to:
        names.append("rd:" + address_domain(headers.reply_to))
    if headers.mailer:
        names.append("xm:" + " ".join(headers.mailer.lower().split()[:2]))
    text = body_text(summary, max_text_chars)
    names += ["b:" + w for w in _WORD.findall(text.lower())]
    names += ["u:" + host.lower() for host in _URL_HOST.findall(text)]
    if summary.html_body and not summary.text_body:
        names.append("html_only")
    if summary.attachments:
        names.append("attachments")
        names += ["at:" + a.content_type.lower() for a in summary.attachments]
    if own_auth:
        names += [f"auth:{m.lower()}={r.lower()}" for m, r in _AUTH_RESULT.findall(own_auth)]
    return names


def hashed(names: list[str]) -> list[int]:
    """Distinct feature numbers, in first-seen order, at most MAX_FEATURES."""
    mask = (1 << FEATURE_BITS) - 1
    found = dict.fromkeys(zlib.crc32(n.encode("utf-8", "surrogatepass")) & mask for n in names)
    return list(found)[:MAX_FEATURES]
