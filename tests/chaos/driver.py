"""Chaos under load: distinct messages stream in over SMTP while a killer
SIGKILLs random service processes (and, on the cluster, restarts backend
servers); afterwards every acknowledged message must be in its mailboxes
exactly once and searchable, and no message may be stored twice.

Every service runs as its own `mailyard run SERVICE` process on one data
directory, as under systemd. The MX and the mailbox service listen on fixed
ports so a restarted one is found where the sender and the checker expect it.
"""
from __future__ import annotations

import random
import smtplib
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import grpc

from tests.e2e.harness import Client, Mailyard, Service, wire_form

SERVICES = ("mx", "delivery", "indexer", "outbound", "mailbox")
LISTENERS = {"mx", "mailbox"}
BACKENDS = ("kafka", "redis", "s3", "cassandra")
SERVER_SCRIPTS = Path(__file__).resolve().parents[1] / "cluster" / "servers"
SENDER = "load@remote.example"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Figures:
    """What one run measured. Messages are counted once however many
    recipients they had; a message is stored when every recipient has it."""
    sent: int = 0
    acknowledged: int = 0
    refused: int = 0           # an SMTP error reply: the sender knows it was not taken
    broken: int = 0            # the connection died before the reply: outcome unknown
    stored: int = 0
    duplicates: int = 0        # messages some mailbox holds more than once
    lost: int = 0              # acknowledged, missing from some recipient's mailbox
    unacknowledged_stored: int = 0
    unsearchable: int = 0      # acknowledged and stored, but search does not find every copy
    exits: Counter = field(default_factory=Counter)  # processes that stopped without a kill
    kills: Counter = field(default_factory=Counter)
    restarts: Counter = field(default_factory=Counter)  # backend servers
    seconds: float = 0.0
    catch_up_seconds: float = 0.0

    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.unsearchable == 0

    def summary(self) -> str:
        kills = ",".join(f"{k}:{v}" for k, v in sorted(self.kills.items())) or "none"
        restarts = ",".join(f"{k}:{v}" for k, v in sorted(self.restarts.items())) or "none"
        exits = ",".join(f"{k}:{v}" for k, v in sorted(self.exits.items())) or "none"
        return (f"sent={self.sent} acknowledged={self.acknowledged} refused={self.refused} "
                f"broken={self.broken} stored={self.stored} duplicates={self.duplicates} "
                f"lost={self.lost} unacknowledged_stored={self.unacknowledged_stored} "
                f"unsearchable={self.unsearchable} kills={kills} backend_restarts={restarts} "
                f"exits={exits} "
                f"seconds={self.seconds:.0f} catch_up_seconds={self.catch_up_seconds:.0f}")


class Fleet:
    """One running process per service. The killer replaces what it kills; a
    process that exits on its own (a service that finds its backend down as
    it starts gives up) is started again after RESTART_SEC, as systemd's
    Restart=on-failure does with the units in systemd/, and counted."""

    RESTART_SEC = 2.0

    def __init__(self, mailyard: Mailyard, names=SERVICES):
        self.mailyard = mailyard
        self.names = tuple(names)
        self.running: dict[str, Service] = {}
        self.exits: Counter = Counter()
        self.exit_logs: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)

    def start(self, name: str, timeout: float = 180) -> None:
        service = self.mailyard.start("run", name)
        with self._lock:
            self.running[name] = service
        if name in LISTENERS:
            service.wait_listening(name, timeout=timeout)

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)
        self._supervisor.start()

    def kill(self, name: str) -> bool:
        """SIGKILLs the service; False when it is not running just now."""
        with self._lock:
            service = self.running.pop(name, None)
        if service is None:
            return False
        service.kill()
        return True

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                exited = [(n, s) for n, s in self.running.items() if s.proc.poll() is not None]
                for name, _ in exited:
                    del self.running[name]
            for name, service in exited:
                self.exits[name] += 1
                self.exit_logs.append(str(service.log_path))
                time.sleep(self.RESTART_SEC)
                try:
                    self.start(name)
                except (RuntimeError, TimeoutError):
                    pass  # exited again at once: the next round sees it

    def settle(self, timeout: float = 300) -> None:
        """Waits until every service is running again."""
        deadline = time.monotonic() + timeout
        while len(self.running) < len(self.names) or any(
                s.proc.poll() is not None for s in list(self.running.values())):
            assert time.monotonic() < deadline, f"services not running: {self.running}"
            time.sleep(0.5)

    def stop_all(self) -> None:
        self._stop.set()
        if self._supervisor.is_alive():
            self._supervisor.join()
        self.mailyard.stop_all()


def message(tag: str, serial: int, rcpts: list[str]) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"] = SENDER, ", ".join(rcpts)
    msg["Subject"] = f"chaos {tag} {serial}"
    msg["Message-ID"] = f"<chaos.{tag}.{serial}@remote.example>"
    msg.set_content(f"chaos{tag} s{tag}n{serial}\n" + "filler line of the chaos run\n" * 30)
    return wire_form(msg.as_bytes())


class Sender:
    """Threads that each send one distinct message per SMTP session, never
    retrying one (a retry of an unacknowledged message could rightly be
    stored twice), and note what each attempt was told."""

    def __init__(self, address: tuple[str, int], tag: str, users: list[str], total: int,
                 threads: int = 4, rate: float = 0.0, keep_going=lambda: False):
        """Sends `total` messages, and more while `keep_going()` says so."""
        self.address, self.tag, self.users, self.total = address, tag, users, total
        self.keep_going = keep_going
        self.threads, self.interval = threads, (threads / rate if rate else 0.0)
        self.outcomes: dict[int, str] = {}
        self.recipients: dict[int, list[str]] = {}
        # serial -> (last reply code, 0 for none; started; answered), monotonic times
        self.replies: dict[int, tuple[int, float, float]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def recipients_of(self, serial: int) -> list[str]:
        first = self.users[serial % len(self.users)]
        if serial % 5 == 0:  # some messages go to two mailboxes
            return [first, self.users[(serial + 1) % len(self.users)]]
        return [first]

    def run(self) -> None:
        workers = [threading.Thread(target=self._work, daemon=True) for _ in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _work(self) -> None:
        while True:
            with self._lock:
                serial, self._next = self._next, self._next + 1
            if serial >= self.total and not self.keep_going():
                return
            started = time.monotonic()
            rcpts = self.recipients_of(serial)
            self.recipients[serial] = rcpts
            outcome = self._attempt(serial, rcpts)
            self.outcomes[serial] = outcome
            if outcome != "acknowledged":
                time.sleep(0.2)  # a down MX must not burn through the run in a second
            pause = self.interval - (time.monotonic() - started)
            if pause > 0:
                time.sleep(pause)

    def _attempt(self, serial: int, rcpts: list[str]) -> str:
        started = time.monotonic()
        self.replies[serial] = (0, started, started)
        smtp = smtplib.SMTP(timeout=60)

        def answer(code: int) -> bool:
            self.replies[serial] = (code, started, time.monotonic())
            return code == 250

        try:
            smtp.connect(*self.address)
            smtp.ehlo("client.example.net")
            if not answer(smtp.mail(SENDER)[0]):
                return "refused"
            for rcpt in rcpts:
                if not answer(smtp.rcpt(rcpt)[0]):
                    return "refused"
            code, _ = smtp.data(message(self.tag, serial, rcpts))
            return "acknowledged" if answer(code) else "refused"
        except smtplib.SMTPResponseException as exc:
            answer(exc.smtp_code)
            return "refused"  # 421 greeting, DATA refused: an answer, not an accident
        except (OSError, smtplib.SMTPException):
            self.replies[serial] = (0, started, time.monotonic())
            return "broken"
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()


class Killer(threading.Thread):
    """SIGKILLs a random service every few seconds and starts it again after
    a random pause; with `backends`, every `backend_every`-th strike restarts
    the next backend server instead (stop, then start, which waits until it
    serves again)."""

    def __init__(self, fleet: Fleet, rng: random.Random, every=(1.0, 4.0), down=(0.0, 1.0),
                 backends=(), backend_every: int = 4, log=print):
        super().__init__(daemon=True)
        self.fleet, self.rng, self.every, self.down = fleet, rng, every, down
        self.backends, self.backend_every = list(backends), backend_every
        self.kills, self.restarts = Counter(), Counter()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.log = log

    def run(self) -> None:
        strikes = 0
        try:
            while not self.stop.wait(self.rng.uniform(*self.every)):
                strikes += 1
                if self.backends and strikes % self.backend_every == 0:
                    backend = self.backends[(strikes // self.backend_every - 1) % len(self.backends)]
                    self.restart_backend(backend)
                else:
                    self.kill_service(self.rng.choice(self.fleet.names))
        except BaseException as exc:  # reported by the run, never swallowed
            self.error = exc

    def kill_service(self, name: str) -> None:
        if not self.fleet.kill(name):
            return  # the supervisor is starting it again
        self.kills[name] += 1
        time.sleep(self.rng.uniform(*self.down))
        self.fleet.start(name)

    def restart_backend(self, name: str) -> None:
        started = time.monotonic()
        server(name, "stop")
        try:
            time.sleep(self.rng.uniform(*self.down))
        finally:
            server(name, "start")
        self.restarts[name] += 1
        self.log(f"chaos: restarted {name} in {time.monotonic() - started:.0f} s")


def server(name: str, command: str) -> None:
    subprocess.run(["bash", str(SERVER_SCRIPTS / f"{name}.sh"), command], check=True,
                   stdout=subprocess.DEVNULL, timeout=600)


def cluster_options(keyspace: str) -> tuple[dict, object]:
    """Settings that put every port on the cluster's servers, in a keyspace,
    bucket and index prefix of the run's own, and the `prepare` step that
    creates the schema."""
    from tests.cluster.conftest import cluster_settings
    settings = cluster_settings(keyspace)
    settings["s3"]["bucket"] = keyspace.replace("_", "-")
    settings["opensearch"]["index_prefix"] = keyspace
    settings["kafka"]["client_id"] = keyspace
    # Topics and consumer groups of its own: another run's delivery workers
    # on the shared mail.inbound would take its records, and it theirs.
    settings["kafka"]["topic_prefix"] = f"{keyspace}."
    # Kafka refuses session timeouts under group.min.session.timeout.ms (6 s).
    settings["queue"] = {"member_ttl": 6.0}
    return settings, lambda mailyard: mailyard.cli("schema", "apply")


def _paged(fetch) -> list:
    found, token = [], ""
    while True:
        page = fetch(token)
        found.extend(page.messages)
        token = page.next_page_token
        if not token:
            return found


class Checker:
    """Reads every user's mailbox and search results through the API."""

    def __init__(self, address: tuple[str, int], tokens: dict[str, str], tag: str):
        self.tag = tag
        self.clients = {user: Client(address, token) for user, token in tokens.items()}

    def _serials(self, summaries) -> Counter:
        counts = Counter()
        for summary in summaries:
            word, tag, serial = (summary.subject.split() + ["", "", ""])[:3]
            if word == "chaos" and tag == self.tag:
                counts[int(serial)] += 1
        return counts

    def stored(self) -> dict[str, Counter]:
        return {user: self._serials(client.list_all(page_size=500))
                for user, client in self.clients.items()}

    def searched(self) -> dict[str, Counter]:
        def search(client):
            return lambda token: client.search(f"chaos{self.tag}", page_size=500,
                                               page_token=token)
        return {user: self._serials(_paged(search(client)))
                for user, client in self.clients.items()}

    def search_one(self, user: str, serial: int) -> int:
        return len(self.clients[user].search(f"s{self.tag}n{serial}").messages)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def tally(sender: Sender, stored: dict[str, Counter], searched: dict[str, Counter],
          figures: Figures) -> Figures:
    figures.sent = len(sender.outcomes)
    outcome_counts = Counter(sender.outcomes.values())
    figures.acknowledged = outcome_counts["acknowledged"]
    figures.refused, figures.broken = outcome_counts["refused"], outcome_counts["broken"]
    for serial, outcome in sender.outcomes.items():
        copies = [stored[user][serial] for user in sender.recipients[serial]]
        found = [searched[user][serial] for user in sender.recipients[serial]]
        if any(c > 1 for c in copies):
            figures.duplicates += 1
        if all(c >= 1 for c in copies):
            figures.stored += 1
            if outcome != "acknowledged":
                figures.unacknowledged_stored += 1
        elif outcome == "acknowledged":
            figures.lost += 1
        if outcome == "acknowledged" and all(c >= 1 for c in copies) and found != copies:
            figures.unsearchable += 1
    return figures


def _complete(sender: Sender, counts: dict[str, Counter]) -> bool:
    return all(counts[user][serial] >= 1
               for serial, outcome in sender.outcomes.items() if outcome == "acknowledged"
               for user in sender.recipients[serial])


def _retrying(read, within: float = 60):
    """A read through the API, which may be restarting or catching up."""
    deadline = time.monotonic() + within
    while True:
        try:
            return read()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def run(root: Path, messages: int = 300, settings: dict | None = None, seed: int | None = None,
        senders: int = 4, rate: float = 0.0, every=(1.0, 4.0), down=(0.0, 1.0),
        backends=(), backend_every: int = 4, catch_up: float = 300.0,
        prepare=None, log=print) -> Figures:
    """One chaos run in `root`; returns its figures. `prepare(mailyard)` runs
    before the first service starts (the cluster's `schema apply`)."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    tag = uuid.UUID(int=rng.getrandbits(128)).hex[:10]
    mx_port, mailbox_port = free_port(), free_port()
    base = {"mx": {"listen": f"127.0.0.1:{mx_port}"},
            "mailbox": {"listen": f"127.0.0.1:{mailbox_port}", "quota_units": 0}}
    mailyard = Mailyard(root, member_ttl=2.0, settings={**base, **(settings or {})})
    if prepare:
        prepare(mailyard)
    users = [f"{name}.{tag}@chaos.test" for name in ("alice", "bob", "carol")]
    mailyard.add_users(*users)
    tokens = {user: mailyard.token(user, ttl=86400) for user in users}
    log(f"chaos: seed={seed} tag={tag} messages={messages} root={root}")
    fleet = Fleet(mailyard)
    figures = Figures()
    checker = None
    try:
        fleet.start_all()
        killer = Killer(fleet, rng, every, down, backends, backend_every, log)
        # On the cluster the load lasts until every server has been restarted once.
        sender = Sender(("127.0.0.1", mx_port), tag, users, messages, senders, rate,
                        keep_going=lambda: not set(backends) <= set(killer.restarts))
        started = time.monotonic()
        killer.start()
        sender.run()
        killer.stop.set()
        killer.join()
        if killer.error:
            raise RuntimeError(f"the killer failed: {killer.error!r}") from killer.error
        figures.seconds = time.monotonic() - started
        figures.kills, figures.restarts = killer.kills, killer.restarts

        # Everything runs again; wait until every acknowledged message is
        # listed and found by search, then a little more for late replays.
        fleet.settle()
        checker = Checker(("127.0.0.1", mailbox_port), tokens, tag)
        caught_up = time.monotonic()
        deadline = caught_up + catch_up
        while time.monotonic() < deadline:
            stored = _retrying(checker.stored)
            if _complete(sender, stored) and _complete(sender, _retrying(checker.searched)):
                break
            time.sleep(1)
        figures.catch_up_seconds = time.monotonic() - caught_up
        time.sleep(3)
        tally(sender, _retrying(checker.stored), _retrying(checker.searched), figures)
        # Each message's own words find it too, not only the run's common one.
        acked = [s for s, o in sender.outcomes.items() if o == "acknowledged"]
        for serial in rng.sample(acked, min(20, len(acked))):
            user = sender.recipients[serial][0]
            if _retrying(lambda: checker.search_one(user, serial)) != 1:
                figures.unsearchable += 1
        figures.exits = fleet.exits
        log(f"chaos: {figures.summary()}")
        if fleet.exit_logs:
            log(f"chaos: processes that exited on their own: {', '.join(fleet.exit_logs)}")
        return figures
    finally:
        if checker:
            checker.close()
        fleet.stop_all()
