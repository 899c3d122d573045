"""The "gc" service: a retention purge and a collector run every `[gc]
interval` seconds (the first one interval after start, when start-up is
over), in the process that runs `up` (or alone under systemd)."""
from __future__ import annotations

import asyncio
import dataclasses

from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.store.errors import StorageError
from mailyard.store.gc.collector import Collector, GcReport
from mailyard.store.gc.retention import purge_expired


async def run_once(config: Config, stores, dry_run: bool = False,
                   stop: asyncio.Event | None = None,
                   log: EventLog | None = None) -> tuple[dict[str, int], GcReport]:
    """Retention first, so what it purges is freed by the same run."""
    metadata, blobs = await stores.metadata(), await stores.blobs()
    queue = None if dry_run else await stores.queue()
    purged = await purge_expired(metadata, queue, config.gc, dry_run, log)
    report = await Collector(metadata, blobs, config.gc, log).run(dry_run, stop)
    return purged, report


async def serve(config: Config, stores, stop: asyncio.Event, ready=None) -> None:
    log = EventLog("gc")
    await stores.metadata(), await stores.blobs()
    if ready is not None:
        ready(None)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), config.gc.interval)
            return
        except asyncio.TimeoutError:
            pass
        try:
            purged, report = await run_once(config, stores, stop=stop, log=log)
            fields = dataclasses.asdict(report)
            del fields["freed_keys"]
            log.info("gc_run", purged_trash=purged["TRASH"], purged_spam=purged["SPAM"], **fields)
        except StorageError as exc:  # a backend outage: the next run tries again
            log.warning("gc_failed", error=str(exc))
