"""One lane per destination: the transactions waiting for it, and up to
`outbound.destination_concurrency` connections carrying them one after the
other (up to `messages_per_connection` each), like Postfix's per-destination
queues. A connection stays open `connection_idle` seconds for more mail, so a
burst to one domain shares connections instead of opening one per message;
a new connection opens only when mail waits and no open one is free.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mailyard.mta.dns import Resolver
from mailyard.mta.outbound.client import Message, Session, Settings, open_session
from mailyard.mta.outbound.outcome import Outcome
from mailyard.mta.outbound.routing import RouteError, destination_of, route
from mailyard.policy.config import OutboundConfig
from mailyard.policy.logs import EventLog


@dataclass
class Job:
    message: Message
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def finish(self, results: dict[str, Outcome] | BaseException) -> None:
        if self.done.done():
            return
        if isinstance(results, BaseException):
            self.done.set_exception(results)
        else:
            self.done.set_result(results)


class Lane:
    def __init__(self, lanes: Lanes, destination: str, domain: str):
        self.lanes, self.destination, self.domain = lanes, destination, domain
        self.waiting: asyncio.Queue[Job] = asyncio.Queue()
        self.connections: set[asyncio.Task] = set()
        self.idle = 0  # connections waiting for a job

    def submit(self, job: Job) -> None:
        self.waiting.put_nowait(job)
        self._grow()

    def _grow(self) -> None:
        if (self.waiting.qsize() > self.idle
                and len(self.connections) < self.lanes.config.destination_concurrency):
            task = asyncio.create_task(self._carry())
            self.connections.add(task)

    async def _carry(self) -> None:
        """One connection's life: take jobs until none comes for a while."""
        config, session = self.lanes.config, None
        try:
            while True:
                if session is None:  # a new connection opens only for waiting mail
                    try:
                        job = self.waiting.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                else:
                    self.idle += 1
                    try:
                        job = await asyncio.wait_for(self.waiting.get(), config.connection_idle)
                    except asyncio.TimeoutError:
                        return
                    finally:
                        self.idle -= 1
                if job.done.done():
                    continue  # its attempt was cancelled (a stop): nobody would record it
                if session is None or not session.usable or \
                        session.sent >= config.messages_per_connection:
                    if session is not None:
                        await session.close()
                    try:
                        session = await self._open(job)
                    except Exception as exc:  # a bug: the record is retried
                        job.finish(exc)
                        session = None
                    if session is None:
                        return
                try:
                    job.finish(await session.send(job.message))
                except Exception as exc:  # a bug: the record is retried, the connection dropped
                    session.broken = True
                    job.finish(exc)
        finally:
            if session is not None:
                await session.close()
            self.connections.discard(asyncio.current_task())
            if not self.waiting.empty():
                self._grow()  # jobs arrived as this connection gave up
            elif not self.connections:
                self.lanes.retire(self)

    async def _open(self, job: Job) -> Session | None:
        """A session, or None after answering `job` and every job waiting
        behind it with why the destination cannot be reached now."""
        lanes = self.lanes
        try:
            where = await route(lanes.resolver, self.domain, lanes.config.relay_host,
                                lanes.config.remote_port)
            session = await open_session(lanes.resolver, where, lanes.settings)
        except RouteError as exc:
            jobs = [job]
            while not self.waiting.empty():
                jobs.append(self.waiting.get_nowait())
            for waiting in jobs:
                waiting.finish({rcpt: exc.outcome for rcpt in waiting.message.rcpts})
            lanes.log.info("destination_unavailable", destination=self.destination,
                           status=exc.outcome.status, reason=exc.outcome.diagnostic)
            return None
        lanes.log.info("connected", destination=self.destination, peer=session.peer,
                       tls=session.tls or "none")
        return session


class Lanes:
    def __init__(self, resolver: Resolver, settings: Settings, config: OutboundConfig,
                 log: EventLog):
        self.resolver, self.settings, self.config, self.log = resolver, settings, config, log
        self._lanes: dict[str, Lane] = {}

    async def deliver(self, domain: str, message: Message) -> dict[str, Outcome]:
        """Carries one transaction to the recipients of one domain."""
        destination = destination_of(domain, self.config.relay_host)
        lane = self._lanes.get(destination)
        if lane is None:
            lane = self._lanes[destination] = Lane(self, destination, domain)
        job = Job(message)
        lane.submit(job)
        return await job.done

    def retire(self, lane: Lane) -> None:
        if self._lanes.get(lane.destination) is lane:
            del self._lanes[lane.destination]

    async def close(self) -> None:
        tasks = [t for lane in self._lanes.values() for t in lane.connections]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
