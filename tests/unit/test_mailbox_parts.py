"""Pure parts of the mailbox API: subject normalization for threading, and
the quota arithmetic (on the real in-process cache, with a fake clock)."""
from __future__ import annotations

import pytest

from mailyard.store.cache.memory import MemoryCache
from mailyard.store.mailbox.ratelimit import COSTS, Quota, QuotaExceeded
from mailyard.store.metadata.base import thread_subject


@pytest.mark.parametrize("subject,key,reply", [
    ("Budget", "budget", False),
    ("Re: Budget", "budget", True),
    ("RE: Fwd: re:  Budget   plan", "budget plan", True),
    ("Re[2]: Budget", "budget", True),
    ("AW: Budget", "budget", True),
    ("Fw: budget", "budget", True),
    ("Regarding budget", "regarding budget", False),
    ("", "", False),
])
def test_thread_subject(subject, key, reply):
    assert thread_subject(subject) == (key, reply)


async def test_quota_windows_per_user():
    now = [1000.0]
    quota = Quota(MemoryCache(), units=12, window=10.0, clock=lambda: now[0])
    await quota.charge("a@x.test", "ListMessages")
    await quota.charge("a@x.test", "ListMessages")
    with pytest.raises(QuotaExceeded) as exc:
        await quota.charge("a@x.test", "ListMessages")
    assert exc.value.retry_after == pytest.approx(10.0)
    await quota.charge("b@x.test", "ListMessages")  # another user's own window
    now[0] = 1010.0
    await quota.charge("a@x.test", "ListMessages")
    with pytest.raises(QuotaExceeded):
        await quota.charge("a@x.test", "SendMessage")
    assert COSTS["SendMessage"] > COSTS["ListMessages"] > COSTS["ListLabels"]


async def test_quota_off_and_cache_failure_let_calls_through():
    class Broken(MemoryCache):
        async def incr(self, *args, **kwargs):
            raise ConnectionError("cache down")

    await Quota(Broken(), units=1, window=1.0).charge("a@x.test", "SendMessage")
    off = Quota(MemoryCache(), units=0, window=1.0)
    for _ in range(100):
        await off.charge("a@x.test", "SendMessage")
