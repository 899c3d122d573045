"""Per-user API quotas, in units modelled on Gmail's: reading and listing are
cheap, sending is expensive. Each call adds its cost to the user's counter for
the current fixed window through the Cache port's `incr` (so processes share
it when the cache is Redis); past `mailbox.quota_units` in a window the call
is refused with RESOURCE_EXHAUSTED and told when the window ends. A refused
call counts too, so a client that keeps hammering stays refused until the
window turns. A cache that fails lets calls through: quotas protect the
service, and must not take it down with the cache.
"""
from __future__ import annotations

import time

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mailyard.store.cache.base import Cache

# Units per call, after Gmail's per-method quota table.
COSTS = {
    "ListMessages": 5, "GetMessage": 5, "GetAttachment": 5, "ModifyLabels": 5, "Search": 5,
    "TrashMessages": 5, "UntrashMessages": 5, "DeleteMessages": 10,
    "ListLabels": 1, "CreateLabel": 5, "RenameLabel": 5, "DeleteLabel": 5,
    "GetThread": 10, "ListThreads": 10,
    "CreateDraft": 10, "GetDraft": 5, "UpdateDraft": 15, "ListDrafts": 5, "DeleteDraft": 10,
    "SendDraft": 100, "SendMessage": 100,
    "WatchMailbox": 100, "ListChanges": 2, "GetUsage": 1,
}
DEFAULT_COST = 5


class QuotaExceeded(Exception):
    def __init__(self, retry_after: float, units: int, window: float):
        self.retry_after = retry_after
        super().__init__(f"quota of {units} units per {window:g}s exceeded; "
                         f"retry after {retry_after:.3f}s")

    def status_details(self) -> tuple[tuple[str, str | bytes], ...]:
        """Trailing metadata: a google.rpc.Status with RetryInfo (as Google's
        APIs send it, readable with grpc_status.rpc_status.from_call) and a
        plain `retry-after` in seconds for clients without those protos."""
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, int(self.retry_after * 1000)))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(self),
                                   details=[detail])
        return (("grpc-status-details-bin", status.SerializeToString()),
                ("retry-after", f"{self.retry_after:.3f}"))


class Quota:
    def __init__(self, cache: Cache, units: int, window: float, log=None, clock=time.time):
        self.cache, self.units, self.window, self.log, self.clock = cache, units, window, log, clock

    async def charge(self, user: str, method: str) -> None:
        """Counts the call; raises QuotaExceeded when the user is over quota."""
        if self.units <= 0:
            return
        now = self.clock()
        window_index = int(now // self.window)
        key = f"api-quota:{user}:{window_index}"
        try:
            used = await self.cache.incr(key, COSTS.get(method, DEFAULT_COST), ttl=self.window * 2)
        except Exception as exc:
            if self.log:
                self.log.warning("quota_cache_failed", user=user, error=repr(exc))
            return
        if used > self.units:
            raise QuotaExceeded((window_index + 1) * self.window - now, self.units, self.window)
