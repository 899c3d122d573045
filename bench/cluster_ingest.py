"""Ingest on the cluster beside the embedded defaults, in one run.

    bash tests/cluster/run ... starts the servers; then, with their env:
    python bench/cluster_ingest.py [--messages 2000] [--sessions 20] [--runs 3] [--size 4096]

smtp-source drives `mailyard up` twice with the same parameters: on its
embedded adapters, then with every port on its distributed adapter (Kafka,
Cassandra, S3, Redis, OpenSearch at the addresses tests/cluster/run exports).
Prints, per setup, the accept rate (messages/s answered 250, median of the
runs) and the delivered rate (messages/s until the last one is listable over
gRPC, from the start of the run), and the cluster's ratio to embedded.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import SENDER, drive  # noqa: E402
from server import DOMAIN, MailyardServer  # noqa: E402
from tests.cluster.conftest import cluster_settings  # noqa: E402
from tests.e2e.harness import Client  # noqa: E402


def wait_delivered(client: Client, count: int, timeout: float = 600) -> None:
    """Until the inbox holds `count` messages (all unread: the count is one call)."""
    deadline = time.monotonic() + timeout
    while client.list(page_size=1).unread_count < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} messages not delivered within {timeout} s")
        time.sleep(0.1)


def run(name: str, settings: dict, args) -> dict:
    rcpt = f"bench.{uuid.uuid4().hex[:8]}@{DOMAIN}"
    prepare = (("schema", "apply"),) if settings else ()
    with MailyardServer([rcpt], settings, prepare) as server:
        token = server.cli("token", "issue", rcpt).strip()
        client = Client(server.service.addresses["mailbox"], token)
        accepted, delivered, total = [], [], 0
        for _ in range(args.runs):
            start = time.monotonic()
            seconds = drive_to(server, rcpt, args)
            total += args.messages
            accepted.append(args.messages / seconds)
            wait_delivered(client, total)
            delivered.append(args.messages / (time.monotonic() - start))
        client.close()
    result = {"accepted": statistics.median(accepted), "delivered": statistics.median(delivered)}
    print(f"{name:<9} accepted {result['accepted']:7.0f} msgs/s   "
          f"delivered {result['delivered']:7.0f} msgs/s", flush=True)
    return result


def drive_to(server: MailyardServer, rcpt: str, args) -> float:
    import ingest
    ingest.RCPT = rcpt  # smtp-source's -t
    return drive(server.service.addresses["mx"][1], args.messages, args.sessions, args.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    embedded = run("embedded", {}, args)
    cluster = run("cluster", cluster_settings(f"mailyard_bench_{uuid.uuid4().hex[:8]}"), args)
    print(f"cluster/embedded: accepted {cluster['accepted'] / embedded['accepted']:.2f}x, "
          f"delivered {cluster['delivered'] / embedded['delivered']:.2f}x")


if __name__ == "__main__":
    main()
