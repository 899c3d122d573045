"""WatchMailbox with the delivery worker in another process than the API
(`mailyard run mx`, `run delivery`, `run mailbox`): a watcher that drops its
stream and reconnects from its last position sees every change exactly once."""
from __future__ import annotations

import queue
import threading
import time

import grpc

from mailyard.proto import mailbox_pb2 as pb
from tests.e2e.harness import Client, Mailyard, send
from tests.e2e.test_mailbox_api import ALICE, BOB, SENDER, mail


class Watcher:
    """Reads one WatchMailbox stream on a thread into a queue."""

    def __init__(self, client: Client, after: int | None):
        request = pb.WatchMailboxRequest() if after is None else pb.WatchMailboxRequest(after=after)
        self.stream = client.stub.WatchMailbox(request, metadata=client.metadata)
        self.changes: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for change in self.stream:
                self.changes.put(change)
        except grpc.RpcError:
            pass

    def take(self, count: int, timeout: float = 20) -> list:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            try:
                got.append(self.changes.get(timeout=0.1))
            except queue.Empty:
                pass
        return got

    def close(self) -> None:
        self.stream.cancel()


def test_reconnecting_watcher_misses_nothing_across_processes(tmp_path):
    mailyard = Mailyard(tmp_path, settings={"mailbox": {"watch_poll_interval": 0.2}})
    mailyard.add_users(ALICE, BOB)
    mx = mailyard.start("run", "mx")
    delivery = mailyard.start("run", "delivery")
    api = mailyard.start("run", "mailbox")
    try:
        mx.wait_listening("mx")
        api.wait_listening("mailbox")
        alice = Client(api.addresses["mailbox"], mailyard.token(ALICE))
        watcher = Watcher(alice, None)
        (sync,) = watcher.take(1)
        assert sync.kind == pb.MailboxChange.SYNC and sync.position == 0

        send(mx.addresses["mx"], SENDER, [ALICE], mail("first"))
        send(mx.addresses["mx"], SENDER, [BOB], mail("for bob only", to=BOB))
        (added,) = watcher.take(1)
        assert added.kind == pb.MailboxChange.MESSAGE_ADDED and added.position == 1
        assert added.message.subject == "first"  # written by the delivery process
        alice.modify([added.message_id], remove=["UNREAD"])
        (read,) = watcher.take(1)
        assert read.kind == pb.MailboxChange.LABELS_CHANGED and list(read.labels) == ["INBOX"]
        position = read.position

        # The client goes away; mail arrives and things change meanwhile.
        watcher.close()
        for i in range(3):
            send(mx.addresses["mx"], SENDER, [ALICE], mail(f"while away {i}"))
        away = alice.wait_for(4)
        alice.call("TrashMessages", pb.MessageIdsRequest(ids=[added.message_id]))
        alice.call("DeleteMessages", pb.MessageIdsRequest(ids=[added.message_id]))

        watcher = Watcher(alice, position)
        missed = watcher.take(5)
        assert [c.position for c in missed] == list(range(position + 1, position + 6))
        kinds = [c.kind for c in missed]
        assert kinds.count(pb.MailboxChange.MESSAGE_ADDED) == 3
        assert kinds[-2:] == [pb.MailboxChange.LABELS_CHANGED, pb.MailboxChange.MESSAGE_DELETED]
        assert {c.message_id for c in missed[:3]} == {m.id for m in away} - {added.message_id}
        # Live again: a new message from the other process wakes the stream.
        send(mx.addresses["mx"], SENDER, [ALICE], mail("live"))
        (live,) = watcher.take(1)
        assert (live.position, live.message.subject) == (position + 6, "live")
        assert watcher.take(1, timeout=1) == []  # nothing twice, nothing of Bob's
        page = alice.call("ListChanges", pb.ListChangesRequest(after=0, page_size=100))
        assert [c.position for c in page.changes] == list(range(1, position + 7))
        watcher.close()
        alice.close()
    finally:
        for service in (mx, delivery, api):
            assert service.stop() == 0, service.log_path
