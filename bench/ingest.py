"""Ingest benchmark: smtp-source drives every peer with the same parameters, in one run.

    python bench/ingest.py [--messages 2000] [--sessions 20] [--runs 3] [--sizes 4096,102400]

Peers: Postfix's smtp-sink (the upper bound: it stores nothing), Postfix 3.7 in
a private instance (durable queue, discard on delivery), Haraka with a queue
plugin that appends and fsyncs, and mailyard on its embedded defaults
(`mailyard up`: MX, delivery worker and API in one process). Prints messages/s
(median of the runs), server CPU seconds per 1000 messages, and mailyard's
ratio to each peer; writes the figures as JSON for the report.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from server import ZONE, config_text

HERE = Path(__file__).resolve().parent
DOMAIN, RCPT, SENDER = "bench.test", "rcpt@bench.test", "sender@remote.example"
CLOCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def cpu_seconds(root_pid: int) -> float:
    """CPU time of a process tree: each live process's own time plus what its
    reaped children used (cutime/cstime), so short-lived workers count too."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry))
        times[int(entry)] = sum(int(v) for v in fields[11:15]) / CLOCK
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


@dataclass
class Peer:
    name: str
    port: int = 0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, argv: list[str], **kwargs) -> None:
        log = self.workdir / "server.log"
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                                     **kwargs)
        try:
            wait_port(self.port)
        except TimeoutError as exc:  # stop() removes the log: show it now
            raise RuntimeError(f"{self.name} did not start: {exc}\n{log.read_text()[-3000:]}")


class SmtpSink(Peer):
    def start(self) -> None:
        self.port = free_port()
        self._spawn(["smtp-sink", "-u", "postfix", f"127.0.0.1:{self.port}", "256"])


class Postfix(Peer):
    def start(self) -> None:
        self.port = free_port()
        self.workdir.chmod(0o755)  # Postfix's daemons drop to the postfix user
        etc, queue, data = (self.workdir / d for d in ("etc", "queue", "data"))
        for d in (etc, queue, data):
            d.mkdir()
        shutil.chown(data, "postfix")
        (etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
myhostname = postfix.{DOMAIN}
mydestination = {DOMAIN}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps =
alias_database =
local_transport = discard:
default_transport = discard:
relay_transport = discard:
maillog_file = /dev/stdout
default_process_limit = 100
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
""")
        master = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            parts = line.split()
            if parts[:2] == ["smtp", "inet"]:
                line = f"127.0.0.1:{self.port} inet n - n - - smtpd"
            elif len(parts) >= 8 and not line.startswith(("#", " ", "\t")):
                parts[4] = "n"  # no chroot: the private queue is not set up for one
                line = " ".join(parts)
            master.append(line)
        (etc / "master.cf").write_text("\n".join(master) + "\n")
        self._spawn(["postfix", "-c", str(etc), "start-fg"])

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.workdir / "etc"), "stop"],
                       capture_output=True)
        super().stop()


class Haraka(Peer):
    def start(self) -> None:
        self.port = free_port()
        haraka = HERE / "node_modules" / ".bin" / "haraka"
        instance = self.workdir / "haraka"
        subprocess.run([str(haraka), "-i", str(instance)], check=True, capture_output=True)
        config = instance / "config"
        (config / "smtp.ini").write_text(f"listen=127.0.0.1:{self.port}\nnodes=cpus\n")
        (config / "plugins").write_text("rcpt_to.in_host_list\nqueue_fsync\n")
        (config / "host_list").write_text(f"{DOMAIN}\n")
        (config / "log.ini").write_text("[main]\nlevel=warn\n")
        shutil.copy(HERE / "haraka" / "plugins" / "queue_fsync.js", instance / "plugins")
        self._spawn([str(haraka), "-c", str(instance)],
                    env={**os.environ, "HARAKA_SPOOL": str(self.workdir / "spool.mbox")})


class Mailyard(Peer):
    processes = 1  # mx.processes; --mx-processes sets it
    settings: dict = {}  # more configuration tables ({"antivirus": {...}}), beside [mx]

    def start(self) -> None:
        self.port = free_port()
        config = self.workdir / "mailyard.toml"
        zone = self.workdir / "zone.db"  # SPF answered here: no DNS query leaves the host
        zone.write_text(ZONE)
        config.write_text(config_text(zone, {"mx": {"listen": f"127.0.0.1:{self.port}",
                                                    "processes": self.processes},
                                             **self.settings}))
        base = [sys.executable, "-m", "mailyard", "--config", str(config),
                "--data-dir", str(self.workdir / "data")]
        subprocess.run(base + ["domain", "add", DOMAIN], check=True, capture_output=True)
        subprocess.run(base + ["user", "add", RCPT], input="bench\n", text=True, check=True,
                       capture_output=True)
        self._spawn(base + ["up"])


PEERS = {"smtp-sink": SmtpSink, "postfix": Postfix, "haraka": Haraka, "mailyard": Mailyard}


def drive(port: int, messages: int, sessions: int, size: int) -> float:
    """Wall seconds smtp-source takes to send `messages` of `size` bytes."""
    start = time.monotonic()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def measure(peer: Peer, args, size: int) -> dict:
    drive(peer.port, max(100, args.messages // 10), args.sessions, size)  # warm-up
    rates, cpu = [], []
    for _ in range(args.runs):
        before = cpu_seconds(peer.proc.pid)
        seconds = drive(peer.port, args.messages, args.sessions, size)
        rates.append(args.messages / seconds)
        cpu.append((cpu_seconds(peer.proc.pid) - before) / args.messages * 1000)
    return {"msgs_per_s": statistics.median(rates), "runs": rates,
            "cpu_s_per_1000": statistics.median(cpu)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="4096,102400")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--json", type=Path, default=HERE / "results" / "ingest.json")
    parser.add_argument("--mx-processes", type=int, default=Mailyard.processes,
                        help="mailyard's mx.processes (one per core to use)")
    args = parser.parse_args(argv)
    Mailyard.processes = args.mx_processes
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"parameters": vars(args) | {"json": str(args.json)}, "sizes": {}}
    for size in sizes:
        results["sizes"][size] = {}
        for name in args.peers.split(","):
            peer = PEERS[name](name)
            try:
                peer.start()
                results["sizes"][size][name] = measure(peer, args, size)
            finally:
                peer.stop()
            r = results["sizes"][size][name]
            print(f"{size:>7} B  {name:<10} {r['msgs_per_s']:8.0f} msgs/s  "
                  f"{r['cpu_s_per_1000']:6.2f} CPU s/1000 msgs", flush=True)
    print_ratios(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return results


def print_ratios(results: dict) -> None:
    for size, peers in results["sizes"].items():
        ours = peers.get("mailyard")
        if not ours:
            continue
        ratios = ", ".join(f"{ours['msgs_per_s'] / r['msgs_per_s']:.2f}x {name}"
                           for name, r in peers.items() if name != "mailyard")
        print(f"{size:>7} B  mailyard = {ratios}")


if __name__ == "__main__":
    main()
