"""One `mailyard up` for a benchmark: a throwaway data directory, offline DNS,
users and tokens, and the memory of its process tree. A `with` block stops it
and removes its data even when the benchmark fails.

The process is run and read through tests/e2e/harness.py, as the end-to-end
tests run it; only the configuration differs (embedded defaults, quiet logs).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailyard.policy import config as model  # noqa: E402
from mailyard.policy.cli import to_toml  # noqa: E402
from tests.e2e.harness import Client, Service, _merge, cli  # noqa: E402

DOMAIN, SENDER = "bench.test", "sender@remote.example"
# SPF passes for the loopback sender, so sender authentication runs its real
# path while every lookup is answered here: the bench sends nothing off-host.
ZONE = 'remote.example. IN TXT "v=spf1 ip4:127.0.0.0/8 -all"\n'


def config_text(zone_file: Path, settings: dict) -> str:
    """The bench's configuration: embedded defaults, every port chosen by the
    system, quiet logs, DNS from `zone_file`, no per-user API quota (the read
    benchmarks measure the service, not its limiter); then `settings`."""
    base = {"hostname": f"mx.{DOMAIN}", "mx": {"listen": "127.0.0.1:0"},
            "mailbox": {"listen": "127.0.0.1:0"}, "log": {"level": "warning"},
            "dns": {"zone_file": str(zone_file)}}
    # Keys that only some versions of the configuration model have.
    if hasattr(model, "GatewayConfig"):
        base["gateway"] = {"listen": "127.0.0.1:0"}
    if hasattr(model, "SubmissionConfig"):
        base["submission"] = {"listen": "127.0.0.1:0", "tls_listen": "127.0.0.1:0"}
    if "quota_units" in model.MailboxConfig.__dataclass_fields__:
        base["mailbox"]["quota_units"] = 0
    return to_toml(_merge(base, settings))


def tree_pids(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(children.get(pid, []))
    return pids


def rss_bytes(root: int) -> int:
    """Resident memory summed over the process tree (forked workers share
    pages, so for several processes this overstates what they use together)."""
    total = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakRss:
    """Samples the tree's RSS every 0.1 s while in a `with` block."""

    def __init__(self, root: int):
        self.root, self.peak = root, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.root))
            if self._stop.wait(0.1):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class MailyardServer:
    """`mailyard up` on embedded defaults plus `settings` (merged into the config)."""

    def __init__(self, users: list[str], settings: dict | None = None,
                 prepare: tuple[tuple[str, ...], ...] = ()):
        """`prepare`: CLI commands run first (`("schema", "apply")` on Cassandra)."""
        self.users, self.prepare = users, prepare
        self.root = Path(tempfile.mkdtemp(prefix="mailyard-bench-"))
        self.data_dir = self.root / "data"
        self.config = self.root / "mailyard.toml"
        zone = self.root / "zone.db"
        zone.write_text(ZONE)
        self.config.write_text(config_text(zone, settings or {}))
        self.service: Service | None = None

    def __enter__(self) -> MailyardServer:
        try:
            for command in self.prepare:
                self.cli(*command)
            self.cli("domain", "add", DOMAIN)
            for user in self.users:
                self.cli("user", "add", user, input="bench\n")
            self.service = Service(self.data_dir, self.config, ["up"], self.root / "server.log")
            self.service.wait_listening("mx", "mailbox", timeout=60)
        except BaseException as exc:
            log = self.root / "server.log"
            tail = log.read_text()[-3000:] if log.exists() else ""
            self.__exit__()
            raise RuntimeError(f"mailyard did not start: {exc}\n{tail}") from exc
        return self

    def __exit__(self, *exc) -> None:
        if self.service is not None:
            self.service.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        """Stops the process but keeps the data directory (to measure it)."""
        self.service.stop()

    def cli(self, *args: str, input: str | None = None) -> str:
        return cli(self.data_dir, self.config, *args, input=input)

    @property
    def pid(self) -> int:
        return self.service.proc.pid

    @property
    def smtp(self) -> tuple[str, int]:
        return self.service.addresses["mx"]

    @property
    def grpc(self) -> tuple[str, int]:
        return self.service.addresses["mailbox"]

    def client(self, user: str) -> Client:
        return Client(self.grpc, self.token(user))

    def token(self, user: str) -> str:
        return self.cli("token", "issue", user, "--ttl", "86400").strip()
