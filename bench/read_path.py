"""Read path: ListMessages and GetMessage latency and requests/s on one mailbox.

    python bench/read_path.py [--messages 3000] [--requests 1000] [--seconds 5]

Fills one mailbox with 4 KiB messages over SMTP, waits until all are listed,
then times each call alone (one request in flight: latency percentiles) and
under load (`--concurrency` requests in flight for `--seconds`: requests/s).
The calls: the INBOX first page (50, a cache hit under `mailyard up`, where
the delivery worker writes the inbox head into the in-process cache), the
second page (a page token: the MetadataStore), and GetMessage of random
messages in FULL (headers and bodies parsed) and RAW (the bytes rebuilt from
the skeleton and part blobs) form. The client shares the 2 cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import time
from pathlib import Path

import grpc

from server import DOMAIN, SENDER, MailyardServer
from stats import percentiles

from mailyard.proto import mailbox_pb2, mailbox_pb2_grpc

HERE = Path(__file__).resolve().parent
RCPT = f"rcpt@{DOMAIN}"


def fill(server: MailyardServer, messages: int) -> list[str]:
    """Sends `messages` and returns every message id once all are listed."""
    subprocess.run(["smtp-source", "-s", "20", "-m", str(messages), "-l", "4096",
                    "-f", SENDER, "-t", RCPT, f"127.0.0.1:{server.smtp[1]}"],
                   check=True, stdout=subprocess.DEVNULL)
    client = server.client(RCPT)
    try:
        deadline = time.monotonic() + 120
        while client.list("INBOX", 1).unread_count < messages:
            if time.monotonic() > deadline:
                raise TimeoutError("messages were not all delivered within 120 s")
            time.sleep(0.2)
        return [m.id for m in client.list_all("INBOX", 500)]
    finally:
        client.close()


async def timed(calls, requests: int, seconds: float, concurrency: int) -> dict:
    """`calls()` yields a fresh awaitable per request."""
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        await calls()
        latencies.append((time.perf_counter() - start) * 1000)
    done, deadline = 0, time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await calls()
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latency_ms": percentiles(latencies),
            "requests_per_s": done / (time.monotonic() - start), "concurrency": concurrency}


async def measure(address, token: str, ids: list[str], args) -> dict:
    metadata = [("authorization", f"Bearer {token}")]
    rng = random.Random(6)
    async with grpc.aio.insecure_channel(f"{address[0]}:{address[1]}") as channel:
        stub = mailbox_pb2_grpc.MailboxStub(channel)
        first = await stub.ListMessages(mailbox_pb2.ListMessagesRequest(label="INBOX",
                                                                        page_size=50),
                                        metadata=metadata)
        second_page = first.next_page_token
        calls = {
            "ListMessages INBOX page 1 (cache)": lambda: stub.ListMessages(
                mailbox_pb2.ListMessagesRequest(label="INBOX", page_size=50), metadata=metadata),
            "ListMessages INBOX page 2 (store)": lambda: stub.ListMessages(
                mailbox_pb2.ListMessagesRequest(label="INBOX", page_size=50,
                                                page_token=second_page), metadata=metadata),
            "GetMessage FULL": lambda: stub.GetMessage(
                mailbox_pb2.GetMessageRequest(id=rng.choice(ids), format=mailbox_pb2.FULL),
                metadata=metadata),
            "GetMessage RAW": lambda: stub.GetMessage(
                mailbox_pb2.GetMessageRequest(id=rng.choice(ids), format=mailbox_pb2.RAW),
                metadata=metadata),
        }
        results = {}
        for name, call in calls.items():
            for _ in range(50):  # warm-up: connections, SQLite pages, code paths
                await call()
            results[name] = await timed(call, args.requests, args.seconds, args.concurrency)
            r = results[name]
            p = r["latency_ms"]
            print(f"{name:36} p50 {p['p50']:6.2f} ms  p90 {p['p90']:6.2f} ms  "
                  f"p99 {p['p99']:6.2f} ms  {r['requests_per_s']:6.0f} req/s", flush=True)
        return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=1000, help="timed one at a time")
    parser.add_argument("--seconds", type=float, default=5, help="under load, per call")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "read.json")
    args = parser.parse_args(argv)
    with MailyardServer([RCPT]) as server:
        ids = fill(server, args.messages)
        calls = asyncio.run(measure(server.grpc, server.token(RCPT), ids, args))
    result = {"messages": len(ids), "requests": args.requests, "calls": calls}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
