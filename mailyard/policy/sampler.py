"""Samples of the queues and of this process's counters, every
`metrics.sample_interval` seconds, an hour of them kept in a ring buffer.

The lag and outbound gauges of /metrics are set here (a scrape must not wait
on the stores), and the dashboard draws its charts from the buffer. Lag and
the outbound queue are read from the stores, so they are the installation's;
throughput and latency are this process's counters, all of them under
`mailyard up`. A store that fails leaves that part of a sample empty.
"""
from __future__ import annotations

import asyncio
import collections
import time

from mailyard.policy import metrics, status
from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog, mask

HOUR = 3600.0
# The outbound queue is read whole (its admin listing), so only every this
# many samples (30 s by default); the samples between repeat the last counts.
OUTBOUND_EVERY = 6
MAX_SAMPLES = 7200  # a sub-second interval (tests) keeps less than an hour
# The counters a sample turns into per-minute rates, and the histograms into
# mean latencies over the interval: (key, metric sample name, labels).
RATES = (("accepted", "mailyard_messages_accepted_total", {}),
         ("refused", "mailyard_messages_rejected_total", {}),
         ("delivered", "mailyard_delivery_seconds_count", {}),
         ("indexed", "mailyard_index_seconds_count", {}),
         ("sent", "mailyard_outbound_attempts_total", {"result": "sent"}),
         ("deferred", "mailyard_outbound_attempts_total", {"result": "deferred"}),
         ("api_calls", "mailyard_api_request_seconds_count", {}))
LATENCIES = (("delivery", "mailyard_delivery_seconds"), ("index", "mailyard_index_seconds"),
             ("api", "mailyard_api_request_seconds"))


class Sampler:
    def __init__(self, config: Config, stores, groups: set[str] | None = None):
        """`groups`: the consumer groups whose lag to read; None for all."""
        self.config, self.stores, self.groups = config, stores, groups
        self.interval = config.metrics.sample_interval
        self.samples: collections.deque = collections.deque(
            maxlen=min(int(HOUR / self.interval) + 1, MAX_SAMPLES))
        self.deferrals: list[dict] = []
        self._last: tuple[float, dict[str, float]] | None = None
        self._failing: set[str] = set()
        self._taken = 0
        self._outbound_counts: dict[str, int] = {}
        self.log = EventLog("metrics")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def sample(self) -> dict:
        found = {"t": time.time(), **self._rates()}
        parts = [("lag", self._lag)]
        if self._taken % OUTBOUND_EVERY == 0:
            parts.append(("outbound", self._outbound))
        elif self._outbound_counts:
            found["outbound"] = self._outbound_counts
        self._taken += 1
        for name, part in parts:
            try:
                found[name] = await asyncio.wait_for(part(), max(self.interval, 5.0))
                self._failing.discard(name)
            except Exception as exc:  # noqa: BLE001 - a store outage is a gap in the chart
                if name not in self._failing:  # once per outage, not every sample
                    self.log.warning("sample_failed", part=name, error=repr(exc))
                self._failing.add(name)
        self.samples.append(found)
        return found

    def _rates(self) -> dict:
        now = time.monotonic()
        counts = {key: metrics.counter_total(name, **labels) for key, name, labels in RATES}
        for key, name in LATENCIES:
            counts[f"{key}_sum"] = metrics.counter_total(f"{name}_sum")
            counts[f"{key}_count"] = metrics.counter_total(f"{name}_count")
        last, self._last = self._last, (now, counts)
        if last is None:
            return {}
        minutes = max(now - last[0], 1e-6) / 60
        before = last[1]
        rates = {f"{key}_per_min": round((counts[key] - before[key]) / minutes, 3)
                 for key, _, _ in RATES}
        for key, _ in LATENCIES:
            calls = counts[f"{key}_count"] - before[f"{key}_count"]
            if calls:
                spent = counts[f"{key}_sum"] - before[f"{key}_sum"]
                rates[f"{key}_ms"] = round(spent / calls * 1000, 3)
        return rates

    async def _lag(self) -> dict[str, int]:
        queue = await self.stores.queue()
        lags = {}
        for topic, group in status.consumers(self.config):
            if group is None or (self.groups is not None and group not in self.groups):
                continue
            lags[topic] = await queue.lag(topic, group)
            metrics.queue_lag.labels(topic, group).set(lags[topic])
        return lags

    async def _outbound(self) -> dict[str, int]:
        """Messages by state, and the deferred ones by destination domain."""
        from mailyard.proto import events_pb2
        from mailyard.store.metadata.base import OUTBOUND_DEFERRED, OUTBOUND_HELD, OUTBOUND_QUEUED

        if self.groups is not None and "outbound" not in self.groups:
            return {}
        metadata = await self.stores.metadata()
        counts = dict.fromkeys((OUTBOUND_QUEUED, OUTBOUND_DEFERRED, OUTBOUND_HELD), 0)
        destinations: dict[str, dict] = {}
        after = ""
        while True:
            page = await metadata.list_outbound(status.OUTBOUND_PAGE, after)
            for entry in page:
                counts[entry.state] = counts.get(entry.state, 0) + 1
                if entry.state != OUTBOUND_DEFERRED:
                    continue
                envelope = events_pb2.OutboundEnvelope.FromString(entry.envelope)
                for domain in {r.rpartition("@")[2].lower() for r in envelope.rcpt_to}:
                    row = destinations.setdefault(domain, {"destination": domain, "messages": 0,
                                                           "last_error": "", "next_attempt": 0})
                    row["messages"] += 1
                    if entry.updated_at_ms >= row.get("_updated", 0):
                        # A remote reply may quote an address: masked like the logs.
                        row.update(last_error=mask(entry.last_error), _updated=entry.updated_at_ms)
                    row["next_attempt"] = min(filter(None, (row["next_attempt"],
                                                            entry.next_attempt_ms / 1000)),
                                              default=0)
            if len(page) < status.OUTBOUND_PAGE:
                break
            after = page[-1].queue_id
        for state, count in counts.items():
            metrics.outbound_queue.labels(state).set(count)
        self._outbound_counts = counts
        self.deferrals = sorted(({k: v for k, v in row.items() if k != "_updated"}
                                 for row in destinations.values()),
                                key=lambda row: (-row["messages"], row["destination"]))
        return counts

    def dashboard(self, since: float = 0.0) -> dict:
        """What the dashboard polls: samples after `since`, the recent refusals
        of this process's SMTP daemons and the deferrals by destination."""
        return {"interval": self.interval, "now": time.time(),
                "samples": [s for s in self.samples if s["t"] > since],
                "refusals": list(metrics.RECENT_REFUSALS)[-50:][::-1],
                "deferrals": self.deferrals[:50]}
