"""Killing the delivery worker mid-batch loses nothing and duplicates nothing.

Services run as separate processes on one data directory (as under systemd):
the MX queues a backlog, then the delivery worker is SIGKILLed several times
while a batch is half delivered and restarted each time.
"""
from __future__ import annotations

import time
from email.message import EmailMessage

from tests.e2e.harness import Client, Mailyard, send

ALICE, BOB = "alice@example.test", "bob@example.test"
COUNT = 300


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "load@remote.example", ALICE, f"crash {n}"
    msg.set_content(f"message {n}\n" + "filler line\n" * 40)
    return msg.as_bytes()


def delivered_lines(log_path) -> int:
    return log_path.read_text().count("event=delivered")


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_killed_delivery_worker_stores_each_accepted_message_once(tmp_path):
    mailyard = Mailyard(tmp_path, member_ttl=1.0)
    mailyard.add_users(ALICE, BOB)
    mx = mailyard.start("run", "mx")
    api = mailyard.start("run", "mailbox")
    mx.wait_listening("mx")
    api.wait_listening("mailbox")
    try:
        accepted = [send(mx.addresses["mx"], "load@remote.example",
                         [ALICE, BOB] if n % 3 == 0 else [ALICE], message(n))
                    for n in range(COUNT)]
        assert len(set(accepted)) == COUNT  # every message got its 250 and a queue id

        kills = 0
        for threshold in (10, 25, 40):
            worker = mailyard.start("run", "delivery")
            wait_until(lambda: delivered_lines(worker.log_path) >= threshold, 60,
                       f"{threshold} deliveries")
            worker.kill()
            kills += 1
        final = mailyard.start("run", "delivery")

        alice = Client(api.addresses["mailbox"], mailyard.token(ALICE))
        bob = Client(api.addresses["mailbox"], mailyard.token(BOB))
        expected_bob = len(range(0, COUNT, 3))
        alice_messages = alice.wait_for(COUNT, timeout=120)
        bob_messages = bob.wait_for(expected_bob, timeout=60)
        time.sleep(1.5)  # anything replayed late would show up now
        alice_messages, bob_messages = alice.list_all(), bob.list_all()

        alice_subjects = [m.subject for m in alice_messages]
        assert len(alice_subjects) == COUNT, "lost or duplicated messages"
        assert sorted(alice_subjects) == sorted(f"crash {n}" for n in range(COUNT))
        assert sorted(m.subject for m in bob_messages) == sorted(
            f"crash {n}" for n in range(0, COUNT, 3))
        replays = sum(s.log_path.read_text().count("replay=True") for s in mailyard.services)
        print(f"\ncrash test: sent={COUNT} acknowledged={len(accepted)} kills={kills} "
              f"replayed_deliveries={replays} stored={len(alice_subjects)} duplicates=0 lost=0")
        assert replays > 0, "no kill landed mid-batch, so the test proved nothing"
        alice.close()
        bob.close()
        assert final.stop() == 0
    finally:
        mailyard.stop_all()
