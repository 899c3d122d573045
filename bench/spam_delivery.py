"""Delivery with the spam stage off and on, in one run: generated mail through `mailyard up`.

    python bench/spam_delivery.py [--messages 1000] [--sessions 8] [--runs 2]

The same server twice, [spam] enabled = false and true (the default), fed
the generated ham/spam corpus of the tests (1-2 KB of text each) over SMTP
by `--sessions` parallel sessions. The spam stage runs in the delivery
worker, after the 250, so two rates are measured: ingest (SMTP accepted
messages/s) and delivery (messages/s until the last one is stored, polled
in the metadata database). In `on` the recipient has trained the classifier
first, so every verdict reads real per-user weights. Prints both rates
(median of the runs), server CPU s per 1000 messages, and the ratios to
`off`; writes JSON for the report.
"""
from __future__ import annotations

import argparse
import json
import smtplib
import sqlite3
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ingest import RCPT, SENDER, Mailyard, cpu_seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.spam_corpus import corpus  # noqa: E402

HERE = Path(__file__).resolve().parent
MODES = {"off": {"spam": {"enabled": False}}, "on": {"spam": {"enabled": True}}}


def send_all(port: int, messages: list[bytes], sessions: int) -> float:
    """Wall seconds to have every message accepted, over `sessions` connections."""
    shares = [messages[i::sessions] for i in range(sessions)]

    def session(share: list[bytes]) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
            smtp.ehlo("client.example.net")
            for message in share:
                smtp.sendmail(SENDER, [RCPT], message)

    start = time.monotonic()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(session, shares))
    return time.monotonic() - start


def stored(peer: Mailyard) -> int:
    db = sqlite3.connect(f"file:{peer.workdir / 'data' / 'metadata.db'}?mode=ro", uri=True,
                         timeout=30)
    try:
        return db.execute("SELECT count(*) FROM messages WHERE user_id = ?",
                          (RCPT,)).fetchone()[0]
    finally:
        db.close()


def wait_stored(peer: Mailyard, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while stored(peer) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stored(peer)} of {count} messages stored")
        time.sleep(0.05)


def train(peer: Mailyard, training: list[tuple[bool, bytes]]) -> None:
    """The recipient trains the classifier on the training mail, in-process on
    the same data directory, as the mailbox service's ModifyLabels would."""
    import asyncio

    from mailyard.spam import features as feats
    from mailyard.spam.classifier import Classifier
    from mailyard.policy.config import SpamConfig
    from mailyard.store.metadata.sqlite import SqliteMetadataStore
    from mailyard.store.mime import summarize

    async def run() -> None:
        store = SqliteMetadataStore(peer.workdir / "data" / "metadata.db")
        await store.start()
        classifier = Classifier(SpamConfig(), store)
        for spam, raw in training:
            names = feats.tokens(feats.read_headers(raw), summarize(raw), None, 20_000)
            await classifier.learn(RCPT, feats.hashed(names), spam)
        await store.close()

    asyncio.run(run())


def measure(peer: Mailyard, args, mode: str) -> dict:
    messages = [m.replace(b"\n", b"\r\n") for _, m in corpus(21, args.messages, RCPT)]
    if mode == "on":
        train(peer, corpus(20, 200, RCPT))
    send_all(peer.port, messages[:100], args.sessions)  # warm-up
    total = 100
    wait_stored(peer, total)
    ingest, delivery, cpu = [], [], []
    for _ in range(args.runs):
        before = cpu_seconds(peer.proc.pid)
        start = time.monotonic()
        ingest.append(args.messages / send_all(peer.port, messages, args.sessions))
        total += args.messages
        wait_stored(peer, total)
        delivery.append(args.messages / (time.monotonic() - start))
        cpu.append((cpu_seconds(peer.proc.pid) - before) / args.messages * 1000)
    return {"ingest_msgs_per_s": statistics.median(ingest), "ingest_runs": ingest,
            "delivered_msgs_per_s": statistics.median(delivery), "delivery_runs": delivery,
            "cpu_s_per_1000": statistics.median(cpu)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "spam_delivery.json")
    args = parser.parse_args(argv)
    results: dict = {"parameters": vars(args) | {"json": str(args.json)}, "modes": {}}
    for mode, settings in MODES.items():
        peer = Mailyard("mailyard")
        peer.settings = settings | {"services": ["mx", "delivery"]}
        try:
            peer.start()
            time.sleep(1)  # the delivery worker finishes starting
            figures = results["modes"][mode] = measure(peer, args, mode)
        finally:
            peer.stop()
        base = results["modes"]["off"]
        print(f"spam {mode:<4} ingest {figures['ingest_msgs_per_s']:7.0f} msgs/s  "
              f"delivered {figures['delivered_msgs_per_s']:7.0f} msgs/s "
              f"({figures['delivered_msgs_per_s'] / base['delivered_msgs_per_s']:.2f}x off)  "
              f"{figures['cpu_s_per_1000']:6.2f} CPU s/1000 msgs", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
