"""Backend faults under load: while mail streams in over SMTP, one backend is
paused (SIGSTOP: it holds connections and answers nothing), slowed (paused
and resumed every few tenths of a second), or stopped. The MX must answer
(250, or 451 while it cannot store), never hang and never say 5xx; the API
must answer within its timeouts (a cache fallback, UNAVAILABLE, or the search
circuit breaker); and once the backend is back every acknowledged message is
stored exactly once and searchable.

Stopped Kafka, Redis and OpenSearch have their own tests (test_kafka_faults.py,
test_redis_faults.py, test_search_faults.py); this file adds the pauses and
slowdowns of every backend, and the stopped S3 server, under load.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import pytest

from tests.chaos import driver
from tests.cluster.conftest import cluster_address
from tests.e2e.harness import Mailyard

HOME = Path(os.environ.get("MAILYARD_CLUSTER_HOME", Path.home() / ".cache" / "mailyard-cluster"))
PIDFILES = {"kafka": "kafka/kafka.pid", "cassandra": "cassandra/cassandra.pid",
            "s3": "s3/versitygw.pid", "redis": "redis/redis.pid",
            "opensearch": "opensearch/node.pid"}
# Faults the MX must answer with 451s while they last: without the queue or
# the spool it cannot take mail. A Cassandra pause may only delay answers
# (within HANG): a recipient lookup is tried 4 times (ATTEMPTS in
# store/metadata/cassandra.py), about as long as the pause itself.
MUST_REFUSE = {("kafka", "pause"), ("s3", "pause"), ("s3", "stop")}
FAULT_SECONDS = 12.0
RATE = 6.0  # messages a second
HANG = 30.0  # no SMTP or API answer may take longer than this
TIMEOUTS = {"kafka": {"request_timeout": 3.0}, "cassandra": {"request_timeout": 3.0},
            "s3": {"request_timeout": 3.0, "max_attempts": 2},
            "redis": {"request_timeout": 0.5}, "opensearch": {"request_timeout": 3.0}}


def pid_of(backend: str) -> int:
    return int((HOME / PIDFILES[backend]).read_text().strip())


class Fault:
    """One backend fault, undone whatever happens."""

    def __init__(self, backend: str, kind: str):
        self.backend, self.kind = backend, kind
        self._done = threading.Event()
        self._slower: threading.Thread | None = None

    def __enter__(self):
        if self.kind == "stop":
            driver.server(self.backend, "stop")
        elif self.kind == "pause":
            os.kill(pid_of(self.backend), signal.SIGSTOP)
        else:  # slow: runs a third of the time, in slices short enough to look like latency
            pid = pid_of(self.backend)

            def throttle():
                while not self._done.is_set():
                    os.kill(pid, signal.SIGSTOP)
                    time.sleep(0.4)
                    os.kill(pid, signal.SIGCONT)
                    self._done.wait(0.2)
            self._slower = threading.Thread(target=throttle, daemon=True)
            self._slower.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        if self._slower:
            self._slower.join()
        if self.kind == "stop":
            driver.server(self.backend, "start")
        else:
            os.kill(pid_of(self.backend), signal.SIGCONT)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    cluster_address("MAILYARD_KAFKA")
    settings, prepare = driver.cluster_options(f"mailyard_faults_{uuid.uuid4().hex[:8]}")
    for backend, values in TIMEOUTS.items():
        settings[backend].update(values)
    root = tmp_path_factory.mktemp("faults-under-load")
    mx_port, mailbox_port = driver.free_port(), driver.free_port()
    settings |= {"mx": {"listen": f"127.0.0.1:{mx_port}"},
                 "mailbox": {"listen": f"127.0.0.1:{mailbox_port}", "quota_units": 0}}
    mailyard = Mailyard(root, settings=settings)
    prepare(mailyard)
    users = [f"{name}.{uuid.uuid4().hex[:8]}@faults.test" for name in ("alice", "bob")]
    mailyard.add_users(*users)
    tokens = {user: mailyard.token(user, ttl=86400) for user in users}
    fleet = driver.Fleet(mailyard, ("mx", "delivery", "indexer", "mailbox"))
    fleet.start_all()
    yield fleet, ("127.0.0.1", mx_port), ("127.0.0.1", mailbox_port), users, tokens
    fleet.stop_all()


def api_probe(checker: driver.Checker, user: str) -> list[tuple[str, grpc.StatusCode, float]]:
    """ListMessages and Search once each: (call, status, seconds)."""
    client = checker.clients[user]
    found = []
    for name, call in (("list", lambda: client.list(page_size=10)),
                       ("search", lambda: client.search(f"chaos{checker.tag}"))):
        started = time.monotonic()
        try:
            call()
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        found.append((name, code, time.monotonic() - started))
    return found


CASES = [(backend, "pause") for backend in ("kafka", "cassandra", "s3", "redis", "opensearch")]
CASES += [(backend, "slow") for backend in ("kafka", "cassandra", "s3")]
CASES += [("s3", "stop")]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend,kind", CASES, ids=[f"{b}-{k}" for b, k in CASES])
def test_backend_fault_under_load(system, backend, kind):
    fleet, mx, mailbox, users, tokens = system
    exits_before = sum(fleet.exits.values())
    tag = uuid.uuid4().hex[:10]
    messages = int(RATE * (FAULT_SECONDS + 10))
    sender = driver.Sender(mx, tag, users, messages, threads=3, rate=RATE)
    checker = driver.Checker(mailbox, tokens, tag)
    load = threading.Thread(target=sender.run, daemon=True)
    load.start()
    time.sleep(4)
    probes = []
    with Fault(backend, kind):
        fault_started = time.monotonic()
        while time.monotonic() - fault_started < FAULT_SECONDS:
            probes += api_probe(checker, users[0])
            time.sleep(1)
        fault_ended = time.monotonic()
    load.join(timeout=HANG * 3)
    assert not load.is_alive(), "the sender hung"

    # The MX answered every attempt, promptly, and never refused for good.
    slowest = max(answered - started for _, started, answered in sender.replies.values())
    assert slowest < HANG, f"an SMTP answer took {slowest:.0f} s"
    codes = Counter(code for code, _, _ in sender.replies.values())
    assert not [c for c in codes if 500 <= c < 600], codes
    assert set(codes) <= {250, 421, 451}, codes
    during = Counter(code for code, _, answered in sender.replies.values()
                     if fault_started < answered <= fault_ended)
    if (backend, kind) in MUST_REFUSE:
        assert during[451] > 0, f"mail taken while {backend} was away: {during}"
    # The API answered too (degraded perhaps, never hung).
    slow_calls = [(name, code, round(seconds, 1)) for name, code, seconds in probes
                  if seconds > HANG / 2]
    assert not slow_calls, slow_calls
    allowed = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert {code for _, code, _ in probes} <= allowed, probes
    if backend == "redis":  # the cache is optional: listing falls back to the MetadataStore
        assert all(code == grpc.StatusCode.OK for name, code, _ in probes if name == "list"), probes

    # Everything catches up: each acknowledged message stored once, searchable.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        stored = driver._retrying(checker.stored)
        if driver._complete(sender, stored) and driver._complete(
                sender, driver._retrying(checker.searched)):
            break
        time.sleep(1)
    time.sleep(2)
    figures = driver.tally(sender, driver._retrying(checker.stored),
                           driver._retrying(checker.searched), driver.Figures())
    checker.close()
    print(f"\n{backend} {kind}: codes={dict(codes)} during={dict(during)} "
          f"slowest_smtp_answer={slowest:.1f}s "
          f"api={Counter((n, c.name) for n, c, _ in probes)} {figures.summary()}")
    assert figures.acknowledged > 0
    assert (figures.lost, figures.duplicates, figures.unsearchable) == (0, 0, 0), \
        figures.summary()
    assert sum(fleet.exits.values()) == exits_before, \
        f"a service exited during the fault: {fleet.exit_logs}"
