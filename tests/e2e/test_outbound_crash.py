"""Killing the outbound service during delivery loses nothing, and duplicates
only what SMTP itself can: a message the remote kept at the end of DATA whose
250 we never recorded (RFC 5321 6.1; RFC 1047). The test counts those.

The receiver keeps each message at the end of DATA and answers 250 a little
later, so SIGKILLs land both in transactions and between a remote's 250 and
the removal of the entry. After each kill, every message the receiver has and
whose entry is still queued is "at risk": the next run will send it again.
Duplicates must be at risk, and no message may be lost.
"""
from __future__ import annotations

import time
from collections import Counter

from tests.e2e.harness import Mailyard
from tests.e2e.outbound_support import message, queue, queued_ids, wait_ready, wait_until
from tests.e2e.receivers import Receiver, free_port

ALICE = "alice@example.test"
PORT = free_port()
COUNT = 80
ZONE = """
remote.test.     IN MX 10 mx.remote.test.
mx.remote.test.  IN A  127.0.0.2
"""


def test_killed_outbound_worker_loses_nothing_and_duplicates_only_what_smtp_can(tmp_path):
    mailyard = Mailyard(tmp_path, member_ttl=1.0, zone=ZONE, settings={
        "services": ["outbound"],
        "outbound": {"remote_port": PORT, "retry_schedule": ["1s"], "connect_timeout": 5.0,
                     "destination_concurrency": 4, "messages_per_connection": 10}})
    subjects = [f"crash {n}" for n in range(COUNT)]
    with Receiver("127.0.0.2", PORT, data_delay=0.1) as remote:
        ids = queue(mailyard, *[(ALICE, [f"rcpt{n}@remote.test"],
                                 message(ALICE, f"rcpt{n}@remote.test", subject))
                                for n, subject in enumerate(subjects)])
        subject_of = dict(zip(ids, subjects))

        def received() -> Counter:
            return Counter(m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                           for m in list(remote.messages))

        at_risk: Counter = Counter()
        kills = 0
        for threshold in (10, 30, 50):
            service = mailyard.start("run", "outbound")
            wait_ready(service)
            wait_until(lambda: len(remote.messages) >= threshold, 60, f"{threshold} messages")
            service.kill()
            kills += 1
            time.sleep(0.3)  # the receiver finishes what it was answering
            queued = {subject_of[i] for i in queued_ids(mailyard)}
            assert queued, "the kill came after the last delivery: it proved nothing"
            at_risk.update(set(received()) & queued)
        final = mailyard.start("run", "outbound")
        wait_ready(final)
        wait_until(lambda: not queued_ids(mailyard), 60, "an empty queue")
        time.sleep(1.5)  # anything sent late would show up now
        counts = received()
        assert final.stop() == 0

    lost = [s for s in subjects if s not in counts]
    duplicated = {s: c - 1 for s, c in counts.items() if c > 1}
    print(f"\noutbound crash test: queued={COUNT} kills={kills} received={sum(counts.values())} "
          f"lost={len(lost)} duplicates={sum(duplicated.values())} "
          f"at_risk={sum(at_risk.values())}")
    assert not lost
    assert set(counts) == set(subjects)
    for subject, extra in duplicated.items():
        assert extra <= at_risk[subject], f"{subject} was sent again without being at risk"
