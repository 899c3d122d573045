"""Extra MX processes, so SMTP ingest uses every core.

Python runs one core per process, and an MX spends its time in the protocol
machine, so `mx.processes = N` runs N-1 more `mailyard run mx` processes that
bind the same address with SO_REUSEPORT; the kernel spreads new connections
over them. Each is supervised: restarted if it dies, stopped with the parent.
They share the queue, blobs and metadata on disk; an in-process cache is not
shared, so per-IP counters are kept per process unless the cache is a server.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys

from mailyard.policy.logs import EventLog
from mailyard.policy.metrics import LISTEN_ENV as METRICS_LISTEN_ENV

# Set in the children: the address the parent bound (so port 0 means the same
# port everywhere) and that they must not start workers of their own.
LISTEN_ENV = "MAILYARD_MX_LISTEN"
WORKER_ENV = "MAILYARD_MX_WORKER"


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


class MxWorkers:
    def __init__(self, global_args: list[str], count: int, address: tuple[str, int],
                 metrics_listen: list[str] | None = None):
        """`metrics_listen`: each extra process's /metrics address, in order."""
        self.argv = [sys.executable, "-m", "mailyard", *global_args, "run", "mx"]
        self.env = {**os.environ, WORKER_ENV: "1", LISTEN_ENV: f"{address[0]}:{address[1]}"}
        self.count = count
        self.metrics_listen = metrics_listen or []
        self.procs: list[asyncio.subprocess.Process] = []
        self.log = EventLog("master")

    async def _spawn(self, number: int) -> asyncio.subprocess.Process:
        env = dict(self.env)
        if number < len(self.metrics_listen):
            env[METRICS_LISTEN_ENV] = self.metrics_listen[number]
        proc = await asyncio.create_subprocess_exec(*self.argv, env=env,
                                                    stdout=asyncio.subprocess.DEVNULL)
        self.log.info("mx_worker_started", pid=proc.pid)
        return proc

    async def supervise(self, stop: asyncio.Event) -> None:
        self.procs = [await self._spawn(n) for n in range(self.count)]
        try:
            while not stop.is_set():
                for i, proc in enumerate(self.procs):
                    if proc.returncode is not None:
                        self.log.error("mx_worker_died", pid=proc.pid, status=proc.returncode)
                        self.procs[i] = await self._spawn(i)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.stop()

    def signal(self, signum: int) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signum)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout=20)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
