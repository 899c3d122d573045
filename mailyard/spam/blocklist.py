"""The sender blocklist: addresses and domains whose mail is always spam.

The entries live in the MetadataStore (durable, any size); a Bloom filter of
them lives in the Cache port, and each process keeps the copy it read for
`spam.blocklist_refresh` seconds. A sender the filter has never seen, nearly
every sender, costs no storage round trip; a "maybe" is confirmed by the exact
lookup. Blocking or unblocking drops the cached filter, and the next reader
rebuilds it from the store; the cached copy also expires after FILTER_TTL, so
a filter rebuilt while an entry was being added cannot stay stale for long.
A cache that is down only makes lookups exact (slower), never wrong.
"""
from __future__ import annotations

import email.utils
import time

from mailyard.spam.bloom import BloomFilter
from mailyard.store.cache.base import Cache
from mailyard.store.errors import StorageError
from mailyard.store.metadata.base import MetadataStore

FILTER_KEY = "spam:blocklist:bloom"
FILTER_TTL = 600.0
REBUILD_PAGE = 5000


def candidates(mail_from: str, header_from: str) -> list[str]:
    """The entries that would block this sender: each address, then its
    domain and the parent domains (blocking example.com blocks a.example.com)."""
    found: list[str] = []
    for address in (mail_from, email.utils.parseaddr(header_from)[1]):
        address = address.strip().lower()
        if "@" not in address:
            continue
        found.append(address)
        labels = address.rpartition("@")[2].strip(".").split(".")
        found += [".".join(labels[i:]) for i in range(len(labels) - 1)]
    return list(dict.fromkeys(found))


class SenderBlocklist:
    def __init__(self, metadata: MetadataStore, cache: Cache, refresh: float):
        self.metadata, self.cache, self.refresh = metadata, cache, refresh
        self._local: BloomFilter | None = None
        self._read_at = 0.0

    async def matches(self, mail_from: str, header_from: str) -> list[str]:
        wanted = candidates(mail_from, header_from)
        if not wanted:
            return []
        bloom = await self._filter()
        maybe = wanted if bloom is None else [c for c in wanted if c in bloom]
        return await self.metadata.blocked_senders(maybe) if maybe else []

    async def block(self, entry: str) -> bool:
        changed = await self.metadata.set_sender_blocked(entry.strip().lower(), True)
        await self._invalidate()
        return changed

    async def unblock(self, entry: str) -> bool:
        changed = await self.metadata.set_sender_blocked(entry.strip().lower(), False)
        await self._invalidate()
        return changed

    async def _invalidate(self) -> None:
        self._local = None
        try:
            await self.cache.delete(FILTER_KEY)
        except StorageError:
            pass  # the cached copy expires within FILTER_TTL anyway

    async def _filter(self) -> BloomFilter | None:
        """The filter, or None when none can be had (then every lookup is exact)."""
        now = time.monotonic()
        if self._local is not None and now - self._read_at < self.refresh:
            return self._local
        try:
            cached = await self.cache.get(FILTER_KEY)
        except StorageError:
            return self._local
        bloom = BloomFilter.from_bytes(cached) if cached else None
        if bloom is None:
            bloom = await self._rebuild()
            try:
                await self.cache.set(FILTER_KEY, bloom.to_bytes(), ttl=FILTER_TTL)
            except StorageError:
                pass
        self._local, self._read_at = bloom, now
        return bloom

    async def _rebuild(self) -> BloomFilter:
        entries: list[str] = []
        while True:
            page = await self.metadata.list_blocked_senders(REBUILD_PAGE,
                                                           entries[-1] if entries else "")
            entries += page
            if len(page) < REBUILD_PAGE:
                break
        bloom = BloomFilter(len(entries) * 2)  # room to grow before the next rebuild
        for entry in entries:
            bloom.add(entry)
        return bloom
