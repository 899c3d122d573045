"""ARC verification (RFC 8617) of a received chain, with dkimpy.

The result is recorded in Authentication-Results (`arc=pass|fail|none`); it
changes no delivery decision here, as RFC 8617 leaves its use to local policy.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dkim as dkimpy

from mailyard.mta.dkim import KeyLookup
from mailyard.mta.dns import BlockingResolver, Resolver


@dataclass(frozen=True)
class ArcResult:
    result: str            # pass fail none (RFC 8617 4.4)
    instances: int = 0     # sets in the chain
    reason: str = ""


def verify_chain(resolver: BlockingResolver, message: bytes, min_key_bits: int = 1024
                 ) -> ArcResult:
    """Runs in a worker thread."""
    lookup = KeyLookup(resolver)
    try:
        cv, results, reason = dkimpy.ARC(message, minkey=min_key_bits).verify(dnsfunc=lookup)
    except dkimpy.DKIMException as exc:
        return ArcResult("fail", reason=str(exc))
    except Exception as exc:  # a malformed chain must never stop the MX
        return ArcResult("fail", reason=f"{type(exc).__name__}: {exc}")
    instances = max((r.get("instance", 0) for r in results), default=0)
    if cv == dkimpy.CV_Pass:
        return ArcResult("pass", instances, reason)
    if cv == dkimpy.CV_None:
        return ArcResult("none", 0, reason)
    return ArcResult("fail", instances, reason)  # CV_Fail, or None: chain already failed


async def verify_arc(resolver: Resolver, message: bytes, min_key_bits: int = 1024) -> ArcResult:
    blocking = resolver.blocking()
    return await asyncio.to_thread(verify_chain, blocking, message, min_key_bits)
