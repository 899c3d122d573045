"""Sending as the mailbox service sees it: a Submitter it is handed.

The API's SendMessage and SendDraft go through the same path as SMTP
submission (sender check, sending limits, DKIM, the SENT copy, routing), which
lives in mta/; store/ may not import mta/, so it declares here what it needs
and the launcher hands it mta.submit's implementation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from mailyard.store.metadata.base import MessageRecord

# Why a submission was refused (SubmitRefused.kind).
BAD_MESSAGE = "bad_message"        # no usable From:, malformed addresses, no recipients
NOT_YOUR_ADDRESS = "not_your_address"  # From:/MAIL FROM not the user's nor an alias of theirs
UNKNOWN_RECIPIENT = "unknown_recipient"  # a local domain without that user
RATE_LIMITED = "rate_limited"      # hourly messages: try again later
DAILY_LIMIT = "daily_limit"        # daily recipients: not today

_REPLY_CODES = re.compile(r"^\d{3} \d\.\d{1,3}\.\d{1,3} ")


class SubmitRefused(Exception):
    """Nothing was stored or sent. `reply` is the SMTP answer ("553 5.7.1 ...");
    `retry_after` (seconds) is set when waiting helps."""

    def __init__(self, kind: str, reply: str, retry_after: float | None = None):
        super().__init__(_REPLY_CODES.sub("", reply))
        self.kind, self.reply, self.retry_after = kind, reply, retry_after


class SubmitUnavailable(Exception):
    """A backend failed; nothing that matters was kept: retry (451 4.3.0, UNAVAILABLE)."""


@dataclass(slots=True)
class Submitted:
    queue_id: str                  # in the 250 reply, the logs and the SENT record
    sent: MessageRecord            # the sender's SENT copy, already stored
    local: list[str] = field(default_factory=list)   # queued on mail.inbound
    remote: list[str] = field(default_factory=list)  # queued on mail.outbound


class Submitter(Protocol):
    async def send(self, user: str, message: bytes, recipients: list[str]) -> Submitted:
        """Sends `message` (RFC 5322, CRLF) from `user` to `recipients` (the
        envelope; Bcc: headers are removed from what is sent). Raises
        SubmitRefused or SubmitUnavailable."""
        ...
