"""Training from users' feedback: the SpamFeedback the mailbox service is handed.

A move into SPAM trains the message's stored features as spam, a move out as
ham, each once: the verdict remembers what it was trained as, so repeating
the same move changes nothing, and reversing it trains the other way.
"""
from __future__ import annotations

import dataclasses

from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.spam.classifier import Classifier
from mailyard.store.metadata.base import MetadataStore

SPAM, HAM = "spam", "ham"


class SpamLearner:
    def __init__(self, config: Config, metadata: MetadataStore, log: EventLog | None = None):
        self.metadata = metadata
        self.classifier = Classifier(config.spam, metadata)
        self.log = log or EventLog("spam")

    async def learn(self, user_id: str, message_ids: list[str], spam: bool) -> int:
        target = SPAM if spam else HAM
        trained = 0
        for message_id in message_ids:
            verdict = await self.metadata.get_spam_verdict(user_id, message_id)
            if verdict is None or verdict.trained_as == target:
                continue  # not scored (spam filtering was off) or already learned
            before = await self.classifier.learn(user_id, verdict.features, spam)
            await self.metadata.put_spam_verdict(dataclasses.replace(verdict, trained_as=target))
            self.log.info("spam_trained", user=user_id, message_id=message_id, as_=target,
                          probability=round(before, 3))
            trained += 1
        return trained


async def open_feedback(config: Config, stores) -> SpamLearner | None:
    """The launcher's factory (SERVICE_COLLABORATORS): none when filtering is off."""
    if not config.spam.enabled:
        return None
    return SpamLearner(config, await stores.metadata())
