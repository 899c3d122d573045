"""What happened to one recipient in one attempt: delivered, deferred or failed,
with the RFC 3463 status and the words to show in a DSN and in `queue list`."""
from __future__ import annotations

import re
from dataclasses import dataclass

DELIVERED, DEFERRED, FAILED = "delivered", "deferred", "failed"

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Outcome:
    action: str            # DELIVERED, DEFERRED or FAILED
    status: str            # RFC 3463, e.g. "5.1.1"
    diagnostic: str        # the remote reply ("550 5.1.1 no such user"), or what failed here
    remote_mta: str = ""   # the host that replied; "" when no host did
    smtp_reply: bool = False  # whether `diagnostic` is a remote SMTP reply

    @property
    def diagnostic_code(self) -> str:
        """The Diagnostic-Code field of a DSN (RFC 3464 2.3.6)."""
        return f"{'smtp' if self.smtp_reply else 'X-mailyard'}; {self.diagnostic}"


def from_reply(code: int, text: str, host: str) -> Outcome:
    """The outcome an SMTP reply means: 2xx delivered, 4xx deferred, 5xx failed.
    Anything else from a server (a 3xx where none belongs) is taken as temporary."""
    text = " ".join(text.split())  # multi-line replies become one line
    match = _ENHANCED.match(text)
    klass = code // 100
    if klass == 2:
        action, default = DELIVERED, "2.0.0"
    elif klass == 5:
        action, default = FAILED, "5.0.0"
    else:
        action, default = DEFERRED, "4.0.0"
    status = match.group(0) if match and match.group(1) == default[0] else default
    return Outcome(action, status, f"{code} {text}".strip(), host, smtp_reply=True)


def deferred(status: str, reason: str, host: str = "") -> Outcome:
    return Outcome(DEFERRED, status, reason, host)


def failed(status: str, reason: str, host: str = "") -> Outcome:
    return Outcome(FAILED, status, reason, host)
