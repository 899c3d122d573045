"""Rule points: what a message says about itself, before any learning.

Each rule is a small function of the message facts that returns its points or
None; the names appear in X-Spam-Status. The points follow SpamAssassin's
spirit: header anomalies alone (at most 4.5) never make spam at the default
required score of 5, since old and malformed mail has them too; with a failed
sender authentication or the classifier's doubt they do; GTUBE or a blocked
sender always does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from mailyard.spam.features import Headers, address_domain

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
_AUTH_RESULT = re.compile(r"\b(spf|dkim|dmarc)=([a-z]+)", re.IGNORECASE)


@dataclass(slots=True)
class Facts:
    raw: bytes
    headers: Headers
    own_auth: str | None       # our MX's Authentication-Results, None when not checked
    blocked: list[str]         # blocklist entries matching the sender
    dnsbl: list[str]           # [dnsbl] score_zones listing the client (the MX looked)


def own_auth_results(headers: Headers, authserv_id: str) -> str | None:
    """The topmost Authentication-Results naming our authserv-id: the MX
    prepends ours and removes forged ones claiming that id, so it is ours."""
    for value in headers.auth_results:
        if value.split(";", 1)[0].strip().lower() == authserv_id.lower():
            return value
    return None


def _auth(facts: Facts) -> dict[str, str]:
    results: dict[str, str] = {}
    for method, result in _AUTH_RESULT.findall(facts.own_auth or ""):
        results.setdefault(method.lower(), result.lower())  # first dkim= counts
    return results


def gtube(facts: Facts) -> float | None:
    return 1000.0 if GTUBE in facts.raw else None


def blocked_sender(facts: Facts) -> float | None:
    return 100.0 if facts.blocked else None


def dnsbl_listed(facts: Facts) -> float | None:
    return 3.0 if facts.dnsbl else None


def spf_fail(facts: Facts) -> float | None:
    return {"fail": 2.0, "softfail": 1.0}.get(_auth(facts).get("spf", ""))


def dkim_fail(facts: Facts) -> float | None:
    # Only a signature that did not verify: a permerror (no key, a header
    # our parser could not read) says nothing of forgery, and hits malformed mail.
    return 1.5 if _auth(facts).get("dkim") == "fail" else None


def dmarc_fail(facts: Facts) -> float | None:
    return 3.0 if _auth(facts).get("dmarc") == "fail" else None


def missing_date(facts: Facts) -> float | None:
    return 1.0 if "date" not in facts.headers.present else None


def missing_message_id(facts: Facts) -> float | None:
    return 0.5 if "message-id" not in facts.headers.present else None


def missing_from(facts: Facts) -> float | None:
    return 1.0 if not address_domain(facts.headers.from_) else None


def from_reply_to_mismatch(facts: Facts) -> float | None:
    """Replies sent elsewhere than the sender's domain: the shape of most
    advance-fee and phishing mail (a mailing list's own Reply-To is the
    list's domain, so such lists pay the points too; they are small)."""
    reply_to = address_domain(facts.headers.reply_to)
    sender = address_domain(facts.headers.from_)
    return 1.5 if reply_to and sender and reply_to != sender else None


def subject_all_caps(facts: Facts) -> float | None:
    letters = [c for c in facts.headers.subject if c.isalpha()]
    return 1.5 if len(letters) >= 10 and all(c.isupper() for c in letters) else None


RULES = (gtube, blocked_sender, dnsbl_listed, spf_fail, dkim_fail, dmarc_fail, missing_date,
         missing_message_id, missing_from, from_reply_to_mismatch, subject_all_caps)


def evaluate(facts: Facts) -> list[tuple[str, float]]:
    """(RULE_NAME, points) of every rule that fired, in RULES order."""
    hits = []
    for rule in RULES:
        points = rule(facts)
        if points:
            hits.append((rule.__name__.upper(), points))
    return hits
