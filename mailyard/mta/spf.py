"""SPF (RFC 7208) on the MAIL FROM identity, or HELO for the null reverse path.

pyspf does the evaluation, with the RFC's limits (10 DNS-querying terms, 2 void
lookups, 10 MX and PTR names). Its lookups go through our resolver: pyspf
calls its module-level `DNSLookup`, which we point at a function that answers
from the resolver bound to the current worker thread.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import spf as pyspf

from mailyard.mta.dns import Answer, BlockingResolver, DnsTempError, Resolver

_bound = threading.local()


def _to_pyspf(answer: Answer) -> list:
    """Our records in the shape pyspf's drivers return: ((name, type), value)."""
    out = []
    for record in answer.records:
        value = record.value
        if record.rdtype == "MX":
            value = (value[0], value[1])
        out.append(((record.name, record.rdtype), value))
    return out


def _dns_lookup(name, qtype, strict=True, timeout=None):
    resolver: BlockingResolver | None = getattr(_bound, "resolver", None)
    if resolver is None:
        raise pyspf.TempError("DNS: no resolver bound to this thread")
    try:
        return _to_pyspf(resolver.query(name, qtype))
    except DnsTempError as exc:
        raise pyspf.TempError(f"DNS {exc}") from None


pyspf.DNSLookup = _dns_lookup


@dataclass(frozen=True)
class SpfResult:
    result: str                 # pass fail softfail neutral none permerror temperror
    identity: str               # "mailfrom" or "helo"
    domain: str                 # the domain whose policy was checked
    sender: str                 # the address evaluated (postmaster@helo for a null sender)
    explanation: str = ""

    @property
    def property(self) -> tuple[str, str]:
        """The Authentication-Results ptype.property and value (RFC 8601 2.7.2)."""
        return ("smtp.mailfrom", self.sender) if self.identity == "mailfrom" \
            else ("smtp.helo", self.domain)


def evaluate(resolver: BlockingResolver, client_ip: str, helo: str, mail_from: str,
             default_explanation: str | None = None) -> SpfResult:
    """Runs in a worker thread; `resolver` answers pyspf's lookups."""
    _bound.resolver = resolver
    try:
        query = pyspf.query(i=client_ip, s=mail_from or "", h=helo or "", strict=True)
        if default_explanation is not None:
            query.set_default_explanation(default_explanation)
        result, _code, explanation = query.check()
    finally:
        _bound.resolver = None
    result = {"unknown": "permerror", "error": "temperror"}.get(result, result)
    identity = "mailfrom" if mail_from else "helo"
    domain = (query.d or "") if mail_from else (helo or "")
    sender = query.s if mail_from else f"postmaster@{helo}"
    return SpfResult(result, identity, domain.lower(), sender, explanation or "")


async def check_spf(resolver: Resolver, client_ip: str, helo: str, mail_from: str,
                    default_explanation: str | None = None) -> SpfResult:
    blocking = resolver.blocking()
    return await asyncio.to_thread(evaluate, blocking, client_ip, helo, mail_from,
                                   default_explanation)
