"""The short chaos run in the embedded suite: 300 messages over SMTP while
random service processes are SIGKILLed and restarted (the full 10,000-message
run is `python3 tests/chaos/run.py`, see tests/RELIABILITY.md)."""
from __future__ import annotations

import os

import pytest

from tests.chaos import driver


@pytest.mark.timeout(600)  # about 1 min of load, then catch-up; slower on a busy machine
def test_no_acknowledged_message_is_lost_or_stored_twice_under_kills(tmp_path):
    seed = os.environ.get("MAILYARD_CHAOS_SEED")  # replays a run (its seed is printed)
    figures = driver.run(tmp_path, messages=300, seed=int(seed) if seed else None, rate=6,
                         every=(0.5, 2.5), catch_up=120)
    print(f"\nchaos: {figures.summary()}")
    assert figures.acknowledged > 0 and sum(figures.kills.values()) >= 3, \
        "too little load or too few kills to prove anything"
    assert not figures.exits, "a service stopped without being killed (see its log)"
    assert figures.lost == 0, figures.summary()
    assert figures.duplicates == 0, figures.summary()
    assert figures.unsearchable == 0, figures.summary()
