"""The outbound service: the worker on mail.outbound and one consumer per delay tier."""
from __future__ import annotations

import asyncio

from mailyard.mta.dns import open_resolver
from mailyard.mta.outbound.tiers import DelayTier
from mailyard.mta.outbound.worker import OutboundWorker
from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog


async def serve(config: Config, stores, stop: asyncio.Event, ready=None) -> None:
    log = EventLog("outbound")
    queue, metadata = await stores.queue(), await stores.metadata()
    worker = OutboundWorker(config, queue, metadata, await stores.blobs(),
                            open_resolver(config.dns), log)
    tiers = [DelayTier(delay, queue, metadata, log) for delay in worker.schedule.tiers]
    started = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop, ready=lambda _: started.set()))]
    tasks += [asyncio.create_task(tier.run(stop)) for tier in tiers]
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait([waiting, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    log.info("ready", tiers=",".join(t.topic for t in tiers),
             port=config.outbound.remote_port, relay=config.outbound.relay_host or None)
    if ready:
        ready(None)
    try:
        await asyncio.gather(*tasks)  # until `stop`; the first failure ends the service
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
