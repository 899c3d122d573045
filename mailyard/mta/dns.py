"""The one DNS resolver of the MX: timeouts, a small cache, and an offline mode.

Every lookup sender authentication makes (SPF, DKIM keys, DMARC records, ARC
keys, blocklists) goes through `Resolver`, which asks a `Source`: the network
(dnspython's async resolver) or a BIND zone file (`dns.zone_file` in the
config, `--dns-zone` for `mailyard authcheck`), so a postmaster or a test can
evaluate a message with no network at all.

pyspf and dkimpy are synchronous and take a lookup function; they run in a
worker thread and reach this resolver through `Resolver.blocking()`, so they
share its cache and timeouts rather than opening their own sockets.
"""
from __future__ import annotations

import asyncio
import time
import typing
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.zone

MAX_CNAME_CHAIN = 16


class DnsTempError(Exception):
    """No answer could be had (timeout, SERVFAIL): try again later, never "no record"."""


@dataclass(frozen=True)
class Record:
    name: str          # owner, lower case, no trailing dot
    rdtype: str        # "A", "TXT", ...
    # A/AAAA: the address as text; TXT: a tuple of byte strings; MX: (preference,
    # exchange); CNAME/PTR/NS: the target name; other types: their text form.
    value: typing.Any
    ttl: int


@dataclass(frozen=True)
class Answer:
    """The answer section for one question, CNAMEs included, as a server gives it."""
    records: tuple[Record, ...] = ()
    nxdomain: bool = False

    def values(self, rdtype: str) -> list:
        return [r.value for r in self.records if r.rdtype == rdtype]


class Source(typing.Protocol):
    async def query(self, name: str, rdtype: str) -> Answer:
        ...


def normalize(name: str) -> str:
    return name.rstrip(".").lower()


def _record(owner: dns.name.Name, rdtype: int, rdata, ttl: int) -> Record:
    kind = dns.rdatatype.to_text(rdtype)
    if kind in ("A", "AAAA"):
        value = rdata.address
    elif kind in ("TXT", "SPF"):
        value = tuple(rdata.strings)
    elif kind == "MX":
        value = (rdata.preference, normalize(rdata.exchange.to_text()))
    elif kind in ("CNAME", "PTR", "NS"):
        value = normalize(rdata.target.to_text())
    else:
        value = rdata.to_text()
    return Record(normalize(owner.to_text()), kind, value, ttl)


class NetworkSource:
    """The system's resolvers (/etc/resolv.conf), through dnspython."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._resolver = dns.asyncresolver.Resolver(configure=True)
        self._resolver.lifetime = timeout

    async def query(self, name: str, rdtype: str) -> Answer:
        try:
            result = await self._resolver.resolve(name + ".", rdtype, search=False,
                                                  raise_on_no_answer=False,
                                                  lifetime=self.timeout)
        except dns.resolver.NXDOMAIN:
            return Answer((), nxdomain=True)
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel):
            return Answer((), nxdomain=True)
        except dns.exception.Timeout as exc:
            raise DnsTempError(f"timeout looking up {name} {rdtype}") from exc
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{name} {rdtype}: {exc}") from exc
        records = [_record(rrset.name, rrset.rdtype, rdata, rrset.ttl)
                   for rrset in result.response.answer for rdata in rrset]
        return Answer(tuple(records))


class ZoneSource:
    """Answers from a BIND zone file, as an authoritative server for every
    name in it would: a name the file lacks is NXDOMAIN. Names may be absolute
    or relative to $ORIGIN; several $ORIGIN lines may share one file.
    Wildcards are not expanded."""

    def __init__(self, zone: dns.zone.Zone):
        self._records: dict[tuple[str, str], list[Record]] = {}
        self._names: set[str] = set()
        for owner, node in zone.nodes.items():
            name = normalize(owner.to_text())
            self._names.add(name)
            for rdataset in node.rdatasets:
                kind = dns.rdatatype.to_text(rdataset.rdtype)
                self._records.setdefault((name, kind), []).extend(
                    _record(owner, rdataset.rdtype, rdata, rdataset.ttl) for rdata in rdataset)
        # Empty non-terminals exist too (NODATA, not NXDOMAIN), as in real DNS.
        for name in list(self._names):
            labels = name.split(".")
            for i in range(1, len(labels)):
                self._names.add(".".join(labels[i:]))

    @classmethod
    def from_text(cls, text: str, filename: str = "<zone>") -> ZoneSource:
        zone = dns.zone.from_text("$TTL 300\n" + text, origin=dns.name.root, relativize=False,
                                  check_origin=False, filename=filename)
        return cls(zone)

    @classmethod
    def from_file(cls, path: str | Path) -> ZoneSource:
        return cls.from_text(Path(path).read_text(encoding="utf-8"), filename=str(path))

    async def query(self, name: str, rdtype: str) -> Answer:
        records: list[Record] = []
        name = normalize(name)
        for _ in range(MAX_CNAME_CHAIN):
            if name not in self._names:
                return Answer(tuple(records), nxdomain=not records)
            found = self._records.get((name, rdtype))
            if found or rdtype == "CNAME":
                return Answer(tuple(records + list(found or ())))
            cname = self._records.get((name, "CNAME"))
            if not cname:
                return Answer(tuple(records))
            records.extend(cname)
            name = cname[0].value
        return Answer(tuple(records))


class Resolver:
    """Asks the source, with a per-answer cache bounded in size and age."""

    def __init__(self, source: Source, *, timeout: float = 5.0, cache_size: int = 10000,
                 cache_ttl: float = 300.0):
        self.source = source
        self.timeout = timeout
        self.cache_size = cache_size
        self.cache_ttl = cache_ttl
        self._cache: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self.queries = 0  # answers fetched from the source, for tests and logs

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (normalize(name), rdtype.upper())
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            return cached[1]
        if not key[0] or len(key[0]) > 253:
            return Answer((), nxdomain=True)
        self.queries += 1
        try:
            answer = await asyncio.wait_for(self.source.query(*key), self.timeout)
        except asyncio.TimeoutError:
            raise DnsTempError(f"timeout looking up {key[0]} {key[1]}") from None
        ttl = min([self.cache_ttl, *(r.ttl for r in answer.records)])
        if ttl > 0 and self.cache_size > 0:
            self._cache[key] = (now + ttl, answer)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return answer

    async def lookup(self, name: str, rdtype: str) -> list:
        """The values of type `rdtype` at the end of the CNAME chain; [] for none."""
        return (await self.query(name, rdtype)).values(rdtype)

    async def txt(self, name: str) -> list[bytes]:
        """Each TXT record with its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(strings) for strings in await self.lookup(name, "TXT")]

    def blocking(self) -> BlockingResolver:
        """A synchronous face for libraries run in a worker thread; call on the loop."""
        return BlockingResolver(self, asyncio.get_running_loop())


class BlockingResolver:
    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop):
        self.resolver = resolver
        self.loop = loop

    def query(self, name: str, rdtype: str) -> Answer:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError("BlockingResolver used on its own event loop thread")
        future = asyncio.run_coroutine_threadsafe(self.resolver.query(name, rdtype), self.loop)
        try:
            return future.result(self.resolver.timeout + 1)
        except TimeoutError:
            future.cancel()
            raise DnsTempError(f"timeout looking up {name} {rdtype}") from None

    def txt(self, name: str) -> list[bytes]:
        return [b"".join(s) for s in self.query(name, "TXT").values("TXT")]


def open_resolver(dns_config, zone_file: str | None = None) -> Resolver:
    """The resolver a config asks for; `zone_file` (from the command line) wins."""
    path = zone_file or dns_config.zone_file
    source: Source = ZoneSource.from_file(path) if path else NetworkSource(dns_config.timeout)
    return Resolver(source, timeout=dns_config.timeout, cache_size=dns_config.cache_size,
                    cache_ttl=dns_config.cache_ttl)
