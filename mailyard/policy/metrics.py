"""The Prometheus metrics every service process exports, in one place.

They live in prometheus_client's default registry, so one scrape of a process
shows every service it runs (all of them under `mailyard up`) with the
client's process_* and python_* metrics. The gateway serves them on its HTTP
port; a process without the gateway serves them on `metrics.listen` (see
`serve_metrics` for the port each process takes). Each process is its own
Prometheus target: counters are per process, as Prometheus expects, and sum
over targets in a query.

Recent SMTP refusals are also kept, in memory, for the dashboard.
"""
from __future__ import annotations

import collections
import os
import time

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from mailyard.policy.config import SERVICES, Config, parse_listen

# Seconds: SMTP to mailbox is milliseconds on one machine, minutes in a backlog.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

smtp_sessions = Counter("mailyard_smtp_sessions", "SMTP sessions opened", ["service"])
smtp_sessions_open = Gauge("mailyard_smtp_sessions_open", "SMTP sessions open now", ["service"])
smtp_replies = Counter("mailyard_smtp_replies", "SMTP replies sent, by reply code and "
                       "enhanced status code (the reason)", ["service", "code", "reason"])
messages_accepted = Counter("mailyard_messages_accepted", "messages accepted (250 after DATA)",
                            ["service"])
messages_rejected = Counter("mailyard_messages_rejected",
                            "connections, senders, recipients and messages refused, by the "
                            "SMTP stage and the check that refused", ["service", "stage", "reason"])
queue_lag = Gauge("mailyard_queue_lag", "records a consumer group has not committed yet",
                  ["topic", "group"])
outbound_queue = Gauge("mailyard_outbound_queue_messages", "messages waiting for remote "
                       "delivery, by state", ["state"])
delivery_seconds = Histogram("mailyard_delivery_seconds", "from acceptance to stored in "
                             "every recipient's mailbox", buckets=LATENCY_BUCKETS)
index_seconds = Histogram("mailyard_index_seconds", "from a message's index event to its "
                          "index write", buckets=LATENCY_BUCKETS)
cache_requests = Counter("mailyard_cache_requests", "cache reads, by hit or miss "
                         "(hit ratio: hit / all)", ["cache", "result"])
api_seconds = Histogram("mailyard_api_request_seconds", "gRPC mailbox API latency",
                        ["method"], buckets=LATENCY_BUCKETS)
api_requests = Counter("mailyard_api_requests", "gRPC mailbox API calls, by status code",
                       ["method", "code"])
outbound_attempts = Counter("mailyard_outbound_attempts", "remote delivery attempts per "
                            "recipient, by result", ["result"])

# The last refusals of this process's SMTP daemons, newest last.
RECENT_REFUSALS: collections.deque = collections.deque(maxlen=200)

# Set in an extra MX process (mx_workers): the metrics address it takes.
LISTEN_ENV = "MAILYARD_METRICS_LISTEN"
# Extra MX process N listens on metrics.listen + WORKER_OFFSET + N - 1: past
# the single-service ports, however many services there are.
WORKER_OFFSET = 100


def refused(service: str, stage: str, reason: str, reply: str, client: str) -> None:
    """Counts a refusal and remembers it for the dashboard. No addresses are
    kept: the client IP, the check and our reply say why."""
    messages_rejected.labels(service, stage, reason).inc()
    RECENT_REFUSALS.append({"at": time.time(), "service": service, "stage": stage,
                            "reason": reason, "reply": reply, "client": client})


def counter_total(name: str, **labels) -> float:
    """The sum of a metric's samples named `name` whose labels include `labels`."""
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                total += sample.value
    return total


def metrics_address(config: Config, names: list[str]) -> tuple[str, int]:
    """Where a process without the gateway serves /metrics: `metrics.listen`
    for a process running several services; its port plus the service's
    place in SERVICES (mx +0, delivery +1, ... outbound +6) for one running a
    single service, so the `mailyard run` units of one machine never collide;
    an extra MX process gets its own port from its parent (LISTEN_ENV,
    `worker_address`).
    Port 0 stays 0: a free port, logged."""
    override = os.environ.get(LISTEN_ENV)
    host, port = parse_listen(override or config.metrics.listen)
    if not override and port and len(names) == 1:
        port += SERVICES.index(names[0])
    return host, port


def worker_address(config: Config, worker: int) -> str:
    """The metrics address of extra MX process number `worker` (1, 2, ...)."""
    host, port = parse_listen(config.metrics.listen)
    port = port + WORKER_OFFSET + worker - 1 if port else 0
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve_metrics(config: Config, names: list[str]):
    """Starts prometheus_client's HTTP server (a thread) on this process's
    metrics address; returns the server (`.shutdown()` stops it)."""
    host, port = metrics_address(config, names)
    server, _ = start_http_server(port, addr=host)
    return server
