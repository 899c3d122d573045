"""End-to-end latency: from the `250` reply to the message being listed over gRPC.

    python bench/e2e_latency.py --rate 100 [--seconds 20]

An open-loop sender starts one 4 KiB message every 1/rate seconds, whatever
the replies (a late reply does not slow the schedule down, as a closed loop
would), over a pool of persistent SMTP sessions. A poller asks ListMessages
for the INBOX head every few milliseconds and notes when each message first
appears; the latency is that moment minus the moment its `250` arrived. Both
clocks are this process's, so no clock skew enters. Messages not listed
within the grace period count as infinitely late.
"""
from __future__ import annotations

import argparse
import json
import math
import queue
import smtplib
import statistics
import threading
import time
from pathlib import Path

from server import DOMAIN, SENDER, MailyardServer
from stats import percentiles

HERE = Path(__file__).resolve().parent
RCPT = f"rcpt@{DOMAIN}"
POLL_INTERVAL = 0.005


def message(seq: int, size: int) -> bytes:
    head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: e2e {seq}\r\n"
            f"Message-ID: <e2e-{seq}@remote.example>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


class OpenLoopSender:
    """`workers` SMTP sessions take scheduled sends from one queue."""

    def __init__(self, address: tuple[str, int], workers: int, size: int):
        self.address, self.size = address, size
        self.jobs: queue.Queue = queue.Queue()
        self.accepted: dict[int, float] = {}   # seq -> monotonic time of the 250
        self.lateness: list[float] = []         # how far behind schedule each send began
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def _work(self) -> None:
        smtp = smtplib.SMTP(*self.address, timeout=30)
        try:
            smtp.ehlo("bench.client")
            while (job := self.jobs.get()) is not None:
                seq, due = job
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.lateness.append(max(0.0, time.monotonic() - due))
                try:
                    smtp.sendmail(SENDER, [RCPT], message(seq, self.size))
                    self.accepted[seq] = time.monotonic()
                except smtplib.SMTPException as exc:
                    self.errors.append(repr(exc))
        finally:
            smtp.close()

    def run(self, rate: float, seconds: float) -> None:
        for thread in self.threads:
            thread.start()
        start = time.monotonic() + 0.5
        for seq in range(int(rate * seconds)):
            self.jobs.put((seq, start + seq / rate))
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()


def poll_listed(client, seen: dict[int, float], stop: threading.Event,
                failures: list[BaseException]) -> None:
    """Notes the first time each `e2e N` message is listed. The first page of
    50 is the cached inbox head; a batch delivered at once can be longer, so
    the next pages are read while a page still holds a message new to us."""
    try:
        while not stop.is_set():
            token, now = "", None
            while True:
                page = client.list("INBOX", 50, token)
                now = now or time.monotonic()
                fresh = [int(m.subject[4:]) for m in page.messages
                         if m.subject.startswith("e2e ") and int(m.subject[4:]) not in seen]
                for seq in fresh:
                    seen[seq] = now
                token = page.next_page_token
                if not fresh or not token:
                    break
            time.sleep(POLL_INTERVAL)
    except BaseException as exc:  # handed to main: a dead poller would read as "never listed"
        failures.append(exc)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True, help="messages per second")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--grace", type=float, default=10, help="seconds to wait for stragglers")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "e2e.json")
    args = parser.parse_args(argv)
    seen: dict[int, float] = {}
    stop = threading.Event()
    failures: list[BaseException] = []
    with MailyardServer([RCPT]) as server:
        client = server.client(RCPT)
        poller = threading.Thread(target=poll_listed, args=(client, seen, stop, failures), daemon=True)
        poller.start()
        sender = OpenLoopSender(server.smtp, args.sessions, args.size)
        started = time.monotonic()
        try:
            sender.run(args.rate, args.seconds)
            sent_for = time.monotonic() - started
            deadline = time.monotonic() + args.grace
            while (time.monotonic() < deadline and not failures
                   and not sender.accepted.keys() <= seen.keys()):
                time.sleep(0.05)
        finally:
            stop.set()
            poller.join()
            client.close()
    if failures:
        raise RuntimeError(f"ListMessages failed: {failures[0]!r}") from failures[0]
    latencies = [seen[s] - t if s in seen else math.inf for s, t in sender.accepted.items()]
    result = {
        "rate": args.rate, "seconds": args.seconds, "size": args.size,
        "sessions": args.sessions, "accepted": len(sender.accepted),
        "achieved_rate": len(sender.accepted) / sent_for, "errors": sender.errors[:5],
        "error_count": len(sender.errors),
        "not_listed": sum(1 for v in latencies if v == math.inf),
        "max_send_lateness_s": max(sender.lateness, default=0.0),
        "latency_ms": percentiles([v * 1000 for v in latencies]),
        "mean_ms": statistics.fmean(v * 1000 for v in latencies if v != math.inf),
        "samples_ms": sorted(round(v * 1000, 2) for v in latencies if v != math.inf),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    p = result["latency_ms"]
    print(f"e2e at {args.rate:.0f} msgs/s offered ({result['achieved_rate']:.0f} achieved,"
          f" {result['accepted']} accepted, {result['error_count']} refused,"
          f" {result['not_listed']} not listed): p50 {p['p50']:.1f} ms, p90 {p['p90']:.1f} ms,"
          f" p99 {p['p99']:.1f} ms, max {p['max']:.1f} ms")
    return result


if __name__ == "__main__":
    main()
