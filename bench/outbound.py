"""Outbound benchmark: how fast `mailyard run outbound` empties its queue into
Postfix's smtp-sink (the upper bound of a receiver: it stores nothing).

    python bench/outbound.py [--messages 2000] [--size 4096] [--runs 3]
                             [--destination-concurrency 10] [--recipients 1]

Each run queues the messages with the outbound service stopped (through
store/outbox.queue_outbound, as submission does), starts it, and times from
its "ready" log line until the queue is empty; every message goes to one
destination (smtp-sink on 127.0.0.2, found through MX in a local zone file).
Prints messages/s for each run and their median; each run checks that every
delivery was logged as sent.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailyard.mta.ids import new_queue_id  # noqa: E402
from mailyard.policy import config as model  # noqa: E402
from mailyard.policy.cli import to_toml  # noqa: E402
from mailyard.proto import events_pb2  # noqa: E402
from mailyard.store.outbox import queue_outbound  # noqa: E402
from mailyard.store.stores import Stores  # noqa: E402

HERE = Path(__file__).resolve().parent
SINK_HOST = "127.0.0.2"
SENDER = "sender@bench.test"
ZONE = f"sink.test. IN MX 10 mx.sink.test.\nmx.sink.test. IN A {SINK_HOST}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((SINK_HOST, 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((SINK_HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"smtp-sink does not listen on {SINK_HOST}:{port}")


def body(size: int, n: int) -> bytes:
    head = (f"From: {SENDER}\r\nTo: rcpt@sink.test\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench.{n}@bench.test>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def fill(config: model.Config, messages: int, size: int, recipients: int) -> None:
    """Queues the messages, 100 at a time so their writes share group commits."""
    stores = Stores(config)
    try:
        blobs, metadata, queue = (await stores.blobs(), await stores.metadata(),
                                  await stores.queue())

        async def one(n: int) -> None:
            envelope = events_pb2.OutboundEnvelope(
                queue_id=new_queue_id(), mail_from=SENDER, user_id=SENDER,
                rcpt_to=[f"rcpt{n}.{r}@sink.test" for r in range(recipients)])
            await queue_outbound(blobs, metadata, queue, body(size, n), envelope)

        for start in range(0, messages, 100):
            await asyncio.gather(*(one(n) for n in range(start, min(messages, start + 100))))
    finally:
        await stores.close()


async def queue_empty(config: model.Config) -> bool:
    stores = Stores(config)
    try:
        return not await (await stores.metadata()).list_outbound(1)
    finally:
        await stores.close()


def run_once(args, port: int) -> float:
    root = Path(tempfile.mkdtemp(prefix="mailyard-bench-outbound-"))
    try:
        zone, config_path, log = root / "zone.db", root / "mailyard.toml", root / "outbound.log"
        zone.write_text(ZONE)
        settings = {"hostname": "out.bench.test", "data_dir": str(root / "data"),
                    "services": ["outbound"], "log": {"level": "info"},
                    "dns": {"zone_file": str(zone)},
                    "outbound": {"remote_port": port,
                                 "destination_concurrency": args.destination_concurrency}}
        config_path.write_text(to_toml(settings))
        config = model.load(config_path)
        asyncio.run(fill(config, args.messages, args.size, args.recipients))
        with open(log, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "mailyard", "--config",
                                     str(config_path), "run", "outbound"],
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 60
            while "event=ready" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"outbound did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.01)
            started = time.monotonic()
            while not asyncio.run(queue_empty(config)):
                if time.monotonic() - started > 600:
                    raise RuntimeError("the queue did not empty in 10 minutes")
                time.sleep(0.02)
            seconds = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(30)
        sent = log.read_text().count("event=sent ")
        if sent != args.messages * args.recipients:
            raise RuntimeError(f"{sent} deliveries logged, expected "
                               f"{args.messages * args.recipients}")
        return seconds
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recipients", type=int, default=1, help="per message")
    parser.add_argument("--destination-concurrency", type=int, default=10)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "outbound.json")
    args = parser.parse_args(argv)
    if not shutil.which("smtp-sink"):
        sys.exit("bench/outbound.py needs smtp-sink (Debian package postfix)")
    port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", f"{SINK_HOST}:{port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        rates = []
        for run in range(args.runs):
            seconds = run_once(args, port)
            rates.append(args.messages / seconds)
            print(f"run {run + 1}: {args.messages} messages of {args.size} B in {seconds:.2f} s "
                  f"= {rates[-1]:.0f} msgs/s", flush=True)
    finally:
        sink.terminate()
        sink.wait()
    result = {"parameters": {k: v for k, v in vars(args).items() if k != "json"},
              "msgs_per_s": statistics.median(rates), "runs": rates}
    print(f"outbound to smtp-sink: {result['msgs_per_s']:.0f} msgs/s (median of {args.runs}; "
          f"{args.size} B, {args.recipients} recipient(s) per message, "
          f"destination_concurrency {args.destination_concurrency})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
