"""Composing an RFC 5322 message from the API's structured fields.

Date: and Message-ID: are left to the submit path, which adds them to every
message that lacks them (API or SMTP alike); Bcc: is never written.
"""
from __future__ import annotations

import email.policy
import mimetypes
from email.message import EmailMessage

from mailyard.store.metadata.base import Draft, MessageRecord

DEFAULT_TYPE = "application/octet-stream"


def _bracketed(message_id: str) -> str:
    """Stored Message-IDs keep their angle brackets; older records may not."""
    return message_id if message_id.startswith("<") else f"<{message_id}>"


def attachment_type(filename: str, content_type: str) -> tuple[str, str]:
    """(maintype, subtype): the one given, else guessed from the file name."""
    kind = content_type or mimetypes.guess_type(filename)[0] or DEFAULT_TYPE
    maintype, _, subtype = kind.partition("/")
    return maintype, subtype


def compose(user: str, draft: Draft, parent: MessageRecord | None = None, html: str = "",
            attachments=()) -> bytes:
    """`attachments`: objects with filename, content_type and data (the proto's)."""
    message = EmailMessage()
    message["From"] = user
    if draft.to:
        message["To"] = ", ".join(draft.to)
    if draft.cc:
        message["Cc"] = ", ".join(draft.cc)
    message["Subject"] = draft.subject
    if parent is not None and parent.rfc822_message_id:
        refs = [_bracketed(r) for r in (*parent.references, parent.rfc822_message_id)]
        message["In-Reply-To"] = _bracketed(parent.rfc822_message_id)
        message["References"] = " ".join(dict.fromkeys(refs))
    message.set_content(draft.body)
    if html:
        message.add_alternative(html, subtype="html")
    for attachment in attachments:
        maintype, subtype = attachment_type(attachment.filename, attachment.content_type)
        message.add_attachment(attachment.data, maintype=maintype, subtype=subtype,
                               filename=attachment.filename or None)
    return message.as_bytes(policy=email.policy.SMTP)
