"""When to try again: the retry schedule, the delay tiers, expiry and the delay warning.

Each distinct step of `outbound.retry_schedule` has its own delay-tier topic,
mail.outbound.delay.<seconds>s. All records of a tier wait the same time, so
within a partition they fall due in the order they were written and a tier
consumer only ever waits for its head record.
"""
from __future__ import annotations

from mailyard.policy.config import OutboundConfig, parse_duration
from mailyard.proto import events_pb2

TIER_PREFIX = "mail.outbound.delay."


def tier_topic(seconds: float) -> str:
    return f"{TIER_PREFIX}{seconds:g}s"


class RetrySchedule:
    def __init__(self, config: OutboundConfig):
        self.steps = [parse_duration(step) for step in config.retry_schedule]
        self.expire_ms = int(config.expire_after * 1000)
        self.warn_ms = int(config.delay_warning_after * 1000)

    @property
    def tiers(self) -> list[float]:
        """The delay of each tier topic, shortest first."""
        return sorted(set(self.steps))

    def step(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
        return self.steps[min(attempts, len(self.steps)) - 1]

    def expires_at_ms(self, envelope: events_pb2.OutboundEnvelope) -> int:
        return envelope.submitted_at_ms + self.expire_ms

    def next_attempt(self, envelope: events_pb2.OutboundEnvelope,
                     now_ms: int) -> tuple[int, float] | None:
        """(due time, tier delay) of the next attempt after `envelope.attempt`
        attempts, or None when the message has expired. The last attempt is
        moved up to the expiry time rather than dropped: it still waits in its
        step's tier, whose consumer releases it when it is due."""
        expires = self.expires_at_ms(envelope)
        if now_ms >= expires:
            return None
        delay = self.step(max(envelope.attempt, 1))
        return min(now_ms + int(delay * 1000), expires), delay

    def warn_now(self, envelope: events_pb2.OutboundEnvelope, now_ms: int) -> bool:
        """Whether the sender should now be told delivery is late (once)."""
        return (self.warn_ms > 0 and not envelope.delay_warned
                and now_ms - envelope.submitted_at_ms >= self.warn_ms)

    def tier_for(self, seconds: float) -> float:
        """The tier to park a record in that is due in `seconds`: the shortest
        that waits at least that long, else the longest (it then goes round again)."""
        return next((t for t in self.tiers if t >= seconds), self.tiers[-1])
