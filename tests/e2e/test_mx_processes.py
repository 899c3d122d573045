"""`mx.processes = 2`: two MX processes share the port and are stopped with `up`."""
from __future__ import annotations

import os
import re
import time
from email.message import EmailMessage

from tests.e2e.harness import Client, Mailyard, send

ALICE = "alice@example.test"


def worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                environ = open(f"/proc/{entry}/environ", "rb").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent \
                    and b"MAILYARD_MX_WORKER=1" in environ:
                pids.append(int(entry))
    return pids


def test_two_mx_processes_accept_on_one_port_and_stop_with_up(tmp_path):
    mailyard = Mailyard(tmp_path, settings={"mx": {"processes": 2}})
    mailyard.add_users(ALICE)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    mx = service.addresses["mx"]
    try:
        deadline = time.monotonic() + 20
        while not worker_pids(service.proc.pid):
            assert time.monotonic() < deadline, "no extra MX process started"
            time.sleep(0.1)
        (worker,) = worker_pids(service.proc.pid)
        for n in range(40):  # new connections, spread over both processes
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "s@remote.example", ALICE, f"m{n}"
            msg.set_content("hello")
            send(mx, "s@remote.example", [ALICE], msg.as_bytes())
        client = Client(service.addresses["mailbox"], mailyard.token(ALICE))
        assert sorted(m.subject for m in client.wait_for(40)) == sorted(f"m{n}" for n in range(40))
        client.close()
        # Both log to the same stderr; the kernel spread the 40 connections.
        accepted_by = {re.search(r" pid=(\d+) ", line).group(1)
                       for line in service.log_path.read_text().splitlines()
                       if "event=accepted" in line}
        assert accepted_by == {str(service.proc.pid), str(worker)}
    finally:
        assert service.stop() == 0
    assert not os.path.exists(f"/proc/{worker}"), "the extra MX process outlived `up`"
