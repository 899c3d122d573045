"""The Queue port: a durable, partitioned, at-least-once log with consumer groups.

Shaped after Kafka so the Kafka adapter is a thin wrapper: a topic has a fixed
number of partitions, a record's partition is chosen by hashing its key, each
consumer group keeps one committed offset per partition, and consumers of one
group share the partitions between them. A record is handed out again until
its group commits past it, so every consumer must be idempotent.
"""
from __future__ import annotations

import abc
import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int


def partition_for(key: bytes, partitions: int) -> int:
    """Stable partition of a key; every adapter and process must agree on it."""
    return zlib.crc32(key) % partitions


class Consumer(abc.ABC):
    """One member of a consumer group on one topic. A member keeps its
    partitions by fetching: one that stops fetching for longer than the
    adapter's session timeout is taken for dead and its partitions move on."""

    @abc.abstractmethod
    async def fetch(self, max_records: int = 100, timeout: float = 1.0) -> list[Record]:
        """Records past the group's committed offsets on partitions this member
        holds, oldest first per partition. Waits up to `timeout` seconds for the
        first record (woken by publishers, not by busy polling), then returns
        what it has, possibly nothing. Records fetched but not committed are not
        handed out again to this member until `rewind()` or a restart."""

    @abc.abstractmethod
    async def commit(self, records: list[Record]) -> None:
        """Marks these records, and everything before them in their partitions,
        processed for the group. Durable when it returns. A group's offset
        never moves backwards, so committing older records changes nothing."""

    @abc.abstractmethod
    async def rewind(self) -> None:
        """Forgets what was fetched but not committed, so it is fetched again."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leaves the group; its partitions go to the other members."""


class Queue(abc.ABC):
    async def start(self) -> None:
        """Connects or creates what the adapter needs; called once before use."""

    @abc.abstractmethod
    async def publish(self, topic: str, key: bytes, value: bytes) -> Record:
        """Appends a record; durable (acknowledged) when it returns.
        Raises StorageError when it could not be made durable."""

    @abc.abstractmethod
    async def consumer(self, topic: str, group: str) -> Consumer:
        """Joins `group` on `topic`. A new group starts at the oldest record."""

    @abc.abstractmethod
    async def lag(self, topic: str, group: str) -> int:
        """How many records the group has not committed yet, over all partitions.
        A group that never joined counts every record still kept."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Closes the consumers opened here (they leave their groups) and the
        connections. Calling it again does nothing."""
