"""Online logistic regression over hashed features, global plus per-user.

A message's log-odds of being spam is the sum, over its features, of the
global weight and the user's own weight, each feature valued 1/sqrt(n) so
long and short messages weigh alike. With no training every weight is 0, the
probability 0.5 and the classifier's points 0: it never guesses before it has
learned. Weights live in the MetadataStore (they must survive restarts and be
shared by every delivery worker); a training step is one read of the
message's weights and one atomic add per scope (Stalwart moved to this kind of
model for the same reason: no per-token round trips, as Bayes needs).
"""
from __future__ import annotations

import math

from mailyard.policy.config import SpamConfig
from mailyard.store.metadata.base import MetadataStore

GLOBAL_SCOPE = "global"
MAX_LOGIT = 30.0   # past this the sigmoid is 0 or 1 to double precision
MARGIN = 0.1       # training stops once the message is this close to its class
MAX_STEPS = 4      # steps per training message at most


def user_scope(user_id: str) -> str:
    return "user:" + user_id.lower()


def sigmoid(z: float) -> float:
    z = max(-MAX_LOGIT, min(MAX_LOGIT, z))
    return 1.0 / (1.0 + math.exp(-z))


class Classifier:
    def __init__(self, config: SpamConfig, metadata: MetadataStore):
        self.config, self.metadata = config, metadata

    async def global_weights(self, features: list[int]) -> dict[int, float]:
        return await self.metadata.spam_weights(GLOBAL_SCOPE, features)

    async def probability(self, user_id: str, features: list[int],
                          global_weights: dict[int, float] | None = None) -> float:
        """P(spam) for this user; `global_weights` when the caller has them
        already (one read per message, not per recipient)."""
        if not features:
            return 0.5
        if global_weights is None:
            global_weights = await self.global_weights(features)
        own = await self.metadata.spam_weights(user_scope(user_id), features)
        value = 1.0 / math.sqrt(len(features))
        logit = sum(global_weights.get(f, 0.0) + own.get(f, 0.0) for f in features) * value
        return sigmoid(logit)

    def points(self, probability: float) -> float:
        return self.config.classifier_points * (2.0 * probability - 1.0)

    async def learn(self, user_id: str, features: list[int], spam: bool) -> float:
        """Gradient steps of the log loss toward `spam` on the user's weights
        (and the global ones when learn_global), repeated while the message
        is still short of MARGIN: a correction the user had to make should
        stick ("train until learned"), while a message already well learned
        costs one read. Returns the probability before training."""
        if not features:
            return 0.5
        value = 1.0 / math.sqrt(len(features))
        target = 1.0 if spam else 0.0
        before = probability = await self.probability(user_id, features)
        for _ in range(MAX_STEPS):
            if abs(target - probability) < MARGIN:
                break
            deltas = dict.fromkeys(features,
                                   self.config.learning_rate * (target - probability) * value)
            await self.metadata.add_spam_weights(user_scope(user_id), deltas)
            if self.config.learn_global:
                await self.metadata.add_spam_weights(GLOBAL_SCOPE, deltas)
            probability = await self.probability(user_id, features)
        return before
