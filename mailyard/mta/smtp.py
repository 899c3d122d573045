"""aiosmtpd's protocol machine with RFC 2034 enhanced status codes on every reply.

The stock replies of aiosmtpd carry no enhanced code ("552 Error: Too much mail
data"); rather than re-implement its commands, we rewrite those replies on
their way out, so our handlers only ever return complete replies.
"""
from __future__ import annotations

import re

from aiosmtpd.smtp import SMTP

from mailyard.policy import metrics

_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}")
_FINAL_REPLY = re.compile(r"^(\d{3})(?: ([245]\.\d{1,3}\.\d{1,3}))?(?: |$)")

# Stock replies whose meaning is more precise than their code's class.
_STOCK = {
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)",
    "503 Error: need RCPT command": "503 5.5.1 Need RCPT command",
    "503 Error: need MAIL command": "503 5.5.1 Need MAIL command",
    "503 Error: nested MAIL command": "503 5.5.1 Nested MAIL command",
    "500 Error: strict ASCII mode": "500 5.6.7 Non-ASCII data without SMTPUTF8",
    "250 OK": "250 2.0.0 OK",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "503 Already authenticated": "503 5.5.1 Already authenticated",
    "221 Bye": "221 2.0.0 Bye",
}
# The enhanced code for other stock replies, by reply code.
_BY_CODE = {
    "250": "2.0.0", "252": "2.5.0", "221": "2.0.0",
    "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "552": "5.3.4", "553": "5.1.3", "554": "5.7.0", "555": "5.5.4",
}


def with_enhanced_code(reply: str) -> str:
    """Adds an enhanced status code to a single-line reply that lacks one.
    The greeting (220) and multi-line EHLO replies are left alone, as RFC 2034 says."""
    if reply in _STOCK:
        return _STOCK[reply]
    if "\r\n" in reply or len(reply) < 4 or reply[3] != " " or _HAS_ENHANCED.match(reply):
        return reply
    code = reply[:3]
    if code not in _BY_CODE or (code == "250" and not reply.startswith("250 OK")):
        return reply  # e.g. "250 hostname" answering HELO
    text = reply[4:].removeprefix("Error: ")
    return f"{code} {_BY_CODE[code]} {text}"


class EnhancedSMTP(SMTP):
    """Also: a per-server line length limit (aiosmtpd reads it at construction),
    and the handler's `connect_check(server, session)`, whose reply replaces the
    greeting and closes the session (RFC 5321 3.8: 421 at any time)."""

    def __init__(self, handler, *args, line_length_limit: int | None = None, **kwargs):
        if line_length_limit is not None:
            self.line_length_limit = line_length_limit
        super().__init__(handler, *args, **kwargs)

    @property
    def service(self) -> str:
        """The daemon's name in metrics: its handler's log's (mx, submission)."""
        return getattr(getattr(self.event_handler, "log", None), "service", "smtp")

    async def push(self, status: str | bytes) -> None:
        # AUTH challenges ("334 <base64>") come as bytes and carry no status code.
        if isinstance(status, bytes):
            await super().push(status)
            return
        status = with_enhanced_code(status)
        final = _FINAL_REPLY.match(status)  # not the "250-" lines before the last
        if final:
            metrics.smtp_replies.labels(self.service, final.group(1),
                                        final.group(2) or "none").inc()
        await super().push(status)

    def _getaddr(self, arg: str):
        # Python 3.11's address parser raises IndexError on "aperson@" (an @
        # that ends the input) where aiosmtpd expects HeaderParseError; the
        # client would get "500 (IndexError) ..." instead of "553 5.1.3".
        try:
            return super()._getaddr(arg)
        except Exception:
            return None, None

    async def _handle_client(self) -> None:
        metrics.smtp_sessions.labels(self.service).inc()
        open_now = metrics.smtp_sessions_open.labels(self.service)
        open_now.inc()
        try:
            await self._converse()
        finally:
            open_now.dec()

    async def _converse(self) -> None:
        check = getattr(self.event_handler, "connect_check", None)
        if check is not None:
            reply = await check(self, self.session)
            if reply:
                await self.push(reply)
                if self.transport is not None:
                    self.transport.close()
                return
        await super()._handle_client()
