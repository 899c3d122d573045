"""Starts the services a configuration enables, like Postfix's `master`.

`mailyard up` runs them all in one process, sharing one set of storage
adapters; `mailyard run SERVICE` runs one (for systemd). Daemon modules are
imported here by name only, so policy/ depends on none of them.
"""
from __future__ import annotations

import asyncio
import importlib
import signal

from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.policy.reload import PidFile, Reloader
from mailyard.policy.metrics import serve_metrics, worker_address
from mailyard.policy.sampler import Sampler
from mailyard.policy.mx_workers import MxWorkers, is_worker

SERVICE_MODULES = {
    "mx": "mailyard.mta.inbound",
    "delivery": "mailyard.delivery.worker",
    "mailbox": "mailyard.store.mailbox.service",
    "indexer": "mailyard.searchd.indexer",
    "gateway": "mailyard.store.mailbox.gateway.server",
    "submission": "mailyard.mta.submission",
    "outbound": "mailyard.mta.outbound.service",
    "tiering": "mailyard.store.tiering",
    "gc": "mailyard.store.gc.service",
}
# What a service needs from a package it may not import (the mailbox service
# searches, but store/ must not import searchd): keyword -> "module:factory",
# each factory called as `await factory(config, stores)`.
SERVICE_COLLABORATORS = {
    "mailbox": {"searcher": "mailyard.searchd.searcher:open_searcher",
                "submitter": "mailyard.mta.submit:open_submitter",
                "spam_feedback": "mailyard.spam.feedback:open_feedback"},
    "gateway": {"searcher": "mailyard.searchd.searcher:open_searcher",
                "submitter": "mailyard.mta.submit:open_submitter",
                "spam_feedback": "mailyard.spam.feedback:open_feedback"},
}


async def _collaborators(config: Config, stores, name: str) -> dict:
    found = {}
    for keyword, target in SERVICE_COLLABORATORS.get(name, {}).items():
        module_name, _, factory = target.partition(":")
        found[keyword] = await getattr(importlib.import_module(module_name), factory)(config, stores)
    return found


# The queue consumers among the services, by their consumer group's name.
CONSUMERS = {"delivery", "indexer", "outbound"}


def _start_metrics(config: Config, names: list[str], log: EventLog, ready):
    """/metrics on `metrics.listen` when no gateway here serves them. A port
    in use is logged, not fatal: mail must flow without its metrics."""
    if "gateway" in names:
        return None
    try:
        server = serve_metrics(config, names)
    except OSError as exc:
        log.error("metrics_unavailable", listen=config.metrics.listen, error=repr(exc))
        return None
    host, port = server.server_address[:2]
    log.info("metrics_listening", address=f"{host}:{port}")
    if ready:
        ready("metrics", (host, port))
    return server


async def run_services(config: Config, names: list[str], stop: asyncio.Event | None = None,
                       ready=None, global_args: list[str] | None = None,
                       config_file: str | None = None) -> None:
    """Runs the named services until SIGINT/SIGTERM (or `stop`), then stops
    them in order: the MX first so nothing new arrives, the workers after they
    commit what they hold. `ready(name, address)` is called as each starts.
    `global_args` (--config, --data-dir) let extra MX processes be started
    with the same configuration. SIGHUP rereads `config_file` (policy/reload.py)."""
    from mailyard.store.stores import Stores

    log = EventLog("master")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    reloader, mx_children = Reloader(config, config_file, log), []

    def hangup() -> None:
        if reloader.reload():
            for children in mx_children:  # each checks and applies the files itself
                children.signal(signal.SIGHUP)

    try:
        loop.add_signal_handler(signal.SIGHUP, hangup)
    except (NotImplementedError, RuntimeError):
        pass
    pid_file = None if is_worker() else PidFile(config.data_path).__enter__()
    stores = Stores(config)
    tasks: dict[str, asyncio.Task] = {}
    metrics_server = _start_metrics(config, names, log, ready)
    # The gateway's dashboard wants every queue; a lone consumer its own lag.
    groups = None if "gateway" in names else CONSUMERS.intersection(names)
    sampler = Sampler(config, stores, groups) if groups is None or groups else None
    if sampler is not None:
        tasks["sampler"] = asyncio.create_task(sampler.run(stop), name="sampler")

    def mx_ready(address) -> None:
        extra = config.mx.processes - 1
        if extra > 0 and global_args is not None and not is_worker():
            workers = MxWorkers(global_args, extra, address,
                                [worker_address(config, n) for n in range(1, extra + 1)])
            tasks["mx-workers"] = asyncio.create_task(workers.supervise(stop), name="mx-workers")
            mx_children.append(workers)
        if ready:
            ready("mx", address)

    try:
        for name in names:
            module = importlib.import_module(SERVICE_MODULES[name])
            # A service with several listeners labels the others (submission's
            # implicit-TLS port reports itself as "submissions").
            on_ready = (lambda address, label=name: ready(label, address)) if ready else None
            if name == "mx":
                on_ready = mx_ready
            extras = await _collaborators(config, stores, name)
            if name == "gateway":
                extras["sampler"] = sampler
            tasks[name] = asyncio.create_task(
                module.serve(config, stores, stop, on_ready, **extras), name=name)
        log.info("started", services=",".join(names), data_dir=config.data_dir)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks.values()],
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception():
                log.error("service_failed", service=task.get_name(), error=repr(task.exception()))
        stop.set()
        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        stopper.cancel()
        failed = [(n, r) for n, r in zip(tasks, results) if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError("; ".join(f"{n}: {r!r}" for n, r in failed))
    finally:
        for task in tasks.values():
            task.cancel()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        await stores.close()
        if pid_file is not None:
            pid_file.__exit__()
        log.info("stopped")
