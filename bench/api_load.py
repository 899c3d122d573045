"""gRPC API under load, measured by an external load generator (h2load).

    python bench/api_load.py [--messages 600] [--concurrency 4] [--requests 5000]

Starts `mailyard up` on a fresh data directory (tests/e2e/harness.py), fills one
mailbox over SMTP, then drives the gRPC service with h2load (Debian
`nghttp2-client`) over one HTTP/2 connection per client, each request the same
fixed, pre-framed protobuf payload:

- ListMessages INBOX, first page of 50: a cache hit (the delivery worker keeps
  the inbox head in the in-process cache under `mailyard up`);
- ListMessages INBOX, second page (a page token): a cache miss, the MetadataStore;
- GetMessage FULL of one message (headers and bodies parsed from the blobs).

Each scenario prints p50/p99 latency (from h2load's per-request log) and
requests/s, and one JSON line per scenario at the end. Every reply is checked
once with a Python client before the run, and h2load's own count of failed
requests must be zero; gRPC errors travel in trailers with HTTP 200, so the
quota is switched off (quota_units = 0) for the run. The load generator shares
the machine's cores with the server.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import smtplib
import struct
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailyard.proto import mailbox_pb2  # noqa: E402
from tests.e2e.harness import Client, Mailyard, wire_form  # noqa: E402

USER = "load@example.test"
SENDER = "sender@remote.example"
SERVICE = "mailyard.mailbox.v1.Mailbox"


def fill(smtp: tuple[str, int], count: int) -> None:
    """`count` ~4 KiB messages to USER over one SMTP session."""
    with smtplib.SMTP(*smtp, timeout=60) as session:
        session.ehlo("load.example.net")
        for n in range(count):
            message = EmailMessage()
            message["From"], message["To"] = SENDER, USER
            message["Subject"] = f"load message {n}"
            message.set_content(("All work and no play. " * 40 + "\n") * 4)
            session.sendmail(SENDER, [USER], wire_form(message.as_bytes()))


def grpc_frame(request) -> bytes:
    """One uncompressed gRPC message: flag byte, big-endian length, protobuf."""
    body = request.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


def h2load(address: tuple[str, int], method: str, payload: Path, token: str, requests: int,
           clients: int, log: Path, reply_bytes: int) -> dict:
    """One h2load run; `reply_bytes` is the size of the right reply's frame: gRPC
    errors come with HTTP 200, so the DATA received must add up to that many
    bytes per request."""
    log.unlink(missing_ok=True)  # h2load appends to its log file
    command = ["h2load", "-n", str(requests), "-c", str(clients), "-m", "1",
               "-H", "content-type: application/grpc", "-H", "te: trailers",
               "-H", f"authorization: Bearer {token}", "-d", str(payload), "--log-file", str(log),
               f"http://{address[0]}:{address[1]}/{SERVICE}/{method}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    out = result.stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if not done or not rps:
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    total, finished, ok, failed, errored = map(int, done.groups())
    if failed or errored or ok != requests:
        raise RuntimeError(f"h2load: {failed} failed, {errored} errored of {requests}:\n{out}")
    data = re.search(r"\((\d+)\) data", out)
    if not data or int(data.group(1)) != requests * reply_bytes:
        raise RuntimeError(f"h2load: replies are not {reply_bytes} bytes each (an error?):\n{out}")
    # --log-file: one line per request, "start_us<TAB>status<TAB>elapsed_us".
    elapsed = sorted(int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines()
                     if line.strip())
    return {"requests": ok, "concurrency": clients, "rps": round(float(rps.group(1)), 1),
            "p50_ms": round(percentile(elapsed, 50), 3), "p99_ms": round(percentile(elapsed, 99), 3),
            "max_ms": round(elapsed[-1], 3)}


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=4,
                        help="h2load clients, each with one request in flight")
    parser.add_argument("--requests", type=int, default=5000, help="per scenario")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load is missing: apt-get install nghttp2-client")

    with tempfile.TemporaryDirectory(prefix="mailyard-api-load-") as tmp:
        root = Path(tmp)
        mailyard = Mailyard(root, settings={"mailbox": {"quota_units": 0}})
        mailyard.add_users(USER)
        service = mailyard.start("up")
        try:
            service.wait_listening("mx", "mailbox")
            address = service.addresses["mailbox"]
            token = mailyard.token(USER, ttl=24 * 3600)
            started = time.monotonic()
            fill(service.addresses["mx"], args.messages)
            client = Client(address, token)
            while client.list("INBOX", 1).unread_count < args.messages:
                if time.monotonic() - started > 300:
                    raise TimeoutError("the mailbox was not filled within 300 s")
                time.sleep(0.2)
            first = client.list("INBOX", 50)
            assert len(first.messages) == 50 and first.next_page_token
            second = client.list("INBOX", 50, first.next_page_token)
            assert len(second.messages) == 50
            target = second.messages[7].id
            assert client.get(target).text_body
            print(f"{args.messages} messages filled in {time.monotonic() - started:.1f} s; "
                  f"h2load, {args.concurrency} clients, {args.requests} requests per scenario")

            scenarios = {
                "ListMessages (cache hit: INBOX first page)": (
                    "ListMessages", mailbox_pb2.ListMessagesRequest(label="INBOX", page_size=50)),
                "ListMessages (cache miss: second page)": (
                    "ListMessages", mailbox_pb2.ListMessagesRequest(
                        label="INBOX", page_size=50, page_token=first.next_page_token)),
                "GetMessage (FULL)": (
                    "GetMessage", mailbox_pb2.GetMessageRequest(id=target, format=mailbox_pb2.FULL)),
            }
            # The reply each request must get, to check h2load's byte counts.
            replies = {name: client.call(method, request).ByteSize() + 5
                       for name, (method, request) in scenarios.items()}
            client.close()
            results = {}
            for name, (method, request) in scenarios.items():
                payload = root / f"{method}.bin"
                payload.write_bytes(grpc_frame(request))
                # A short warm-up, then the measured run.
                h2load(address, method, payload, token, min(500, args.requests), args.concurrency,
                       root / "h2load.log", replies[name])
                figures = h2load(address, method, payload, token, args.requests,
                                 args.concurrency, root / "h2load.log", replies[name])
                results[name] = figures
                print(f"{name:45s} p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms"
                      f"  {figures['rps']:8.1f} req/s")
            for name, figures in results.items():
                print(json.dumps({"scenario": name, **figures}))
        finally:
            service.stop()


if __name__ == "__main__":
    main()
