"""`mailyard queue` against a running outbound service, in another process,
as a postmaster uses it: list, show, hold, retry, release, delete."""
from __future__ import annotations

import time

import pytest

from tests.e2e.harness import Mailyard
from tests.e2e.outbound_support import (entry, message, queue, queued_ids, wait_ready,
                                        wait_until)
from tests.e2e.receivers import Receiver, free_port

ALICE = "alice@example.test"
PORT = free_port()
ZONE = """
retry.test.     IN MX 10 mx.retry.test.
mx.retry.test.  IN A  127.0.0.4
"""


def test_queue_commands_list_hold_release_retry_and_delete(tmp_path):
    # One long step: after the first refusal only a command brings a message back.
    mailyard = Mailyard(tmp_path, zone=ZONE, settings={
        "services": ["outbound"],
        "outbound": {"remote_port": PORT, "retry_schedule": ["1h"], "connection_idle": 0.2}})
    refusing = True
    answers = lambda rcpt, tries: "451 4.3.2 Come back later" if refusing else None
    with Receiver("127.0.0.4", PORT, rcpt=answers) as remote:
        service = mailyard.start("run", "outbound")
        try:
            wait_ready(service)
            held, retried, swept, deleted = queue(mailyard, *[
                (ALICE, [f"{name}@retry.test"], message(ALICE, f"{name}@retry.test", name))
                for name in ("held", "retried", "swept", "deleted")])
            ids = (held, retried, swept, deleted)
            wait_until(lambda: all(getattr(entry(mailyard, i), "state", "") == "deferred"
                                   for i in ids), 30, "four deferrals")

            listing = mailyard.cli("queue", "list")
            for queue_id, name in zip(ids, ("held", "retried", "swept", "deleted")):
                block = listing[listing.index(queue_id):].split("\n")
                assert "deferred" in block[0] and ALICE in block[0]
                assert block[1].strip() == "(451 4.3.2 Come back later)"
                assert block[2].strip() == f"{name}@retry.test"
            assert listing.rstrip().endswith("in 4 messages")

            shown = mailyard.cli("queue", "show", held)
            assert "attempts:     1" in shown and "Subject: held" in shown
            assert "last error:   451 4.3.2 Come back later" in shown

            assert mailyard.cli("queue", "hold", held).strip() == f"{held}: on hold"
            assert "on hold" in mailyard.cli("queue", "list")
            assert mailyard.cli("queue", "delete", deleted).strip() == f"{deleted}: deleted"
            assert deleted not in queued_ids(mailyard)
            with pytest.raises(RuntimeError, match="no such message"):
                mailyard.cli("queue", "retry", deleted)

            refusing = False
            mailyard.cli("queue", "retry", retried)
            (first,) = remote.wait_for(1)
            assert first.rcpts == ["retried@retry.test"]
            assert "1 message scheduled" in mailyard.cli("queue", "retry", "--all")
            remote.wait_for(2)
            assert remote.messages[1].rcpts == ["swept@retry.test"]
            time.sleep(2)
            assert len(remote.messages) == 2, "a held message was delivered"
            assert entry(mailyard, held).state == "held"

            mailyard.cli("queue", "release", held)
            remote.wait_for(3)
            assert remote.messages[2].rcpts == ["held@retry.test"]
            wait_until(lambda: not queued_ids(mailyard), 10, "an empty queue")
            assert mailyard.cli("queue", "list") == "Mail queue is empty\n"
            time.sleep(1)
            assert not [m for m in remote.messages if m.rcpts == ["deleted@retry.test"]]
        finally:
            code = service.stop()
    assert code == 0
