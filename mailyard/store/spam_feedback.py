"""Spam training as the mailbox service sees it: a SpamFeedback it is handed.

A user moving mail into or out of SPAM (ModifyLabels) is the classifier's
teacher, but the classifier lives in spam/, which store/ may not import; the
launcher hands the service spam.feedback's implementation.
"""
from __future__ import annotations

from typing import Protocol


class SpamFeedback(Protocol):
    async def learn(self, user_id: str, message_ids: list[str], spam: bool) -> int:
        """Trains on the user's messages as spam (or ham); returns how many
        were trained (a message not scored, or trained so already, is skipped)."""
        ...
