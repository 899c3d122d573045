"""DKIM verification (RFC 6376; rsa-sha256 and ed25519-sha256 of RFC 8463).

Every DKIM-Signature is verified on its own, with dkimpy, and gets its own
result, as RFC 8601 reports them: one `dkim=` per signature. Keys are looked
up through our resolver (dkimpy's `dnsfunc`), so a missing key and a DNS
failure can be told apart from a bad signature.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import dkim as dkimpy
from dkim.util import InvalidTagValueList, parse_tag_value

from mailyard.mta.dns import BlockingResolver, DnsTempError, Resolver


@dataclass(frozen=True)
class DkimResult:
    result: str          # pass fail neutral permerror temperror (none: no signature at all)
    domain: str = ""     # d=
    selector: str = ""   # s=
    algorithm: str = ""  # a=
    identity: str = ""   # i=
    b: str = ""          # the first characters of b=, to tell signatures apart (RFC 6008)
    reason: str = ""


class KeyLookup:
    """dkimpy's dnsfunc, remembering why a lookup gave no key."""

    def __init__(self, resolver: BlockingResolver):
        self.resolver = resolver
        self.temp_error = False
        self.missing = False

    def reset(self) -> None:
        self.temp_error = self.missing = False

    def __call__(self, name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        try:
            records = self.resolver.txt(name)
        except DnsTempError:
            self.temp_error = True
            raise dkimpy.DnsTimeoutError(f"DNS timeout for {name}") from None
        keys = [r for r in records if b"p=" in r] or records
        if not keys:
            self.missing = True
            return None
        return keys[0]


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


def _signature_tags(header_value: bytes) -> dict:
    try:
        return parse_tag_value(header_value)
    except InvalidTagValueList:
        return {}


def verify_all(resolver: BlockingResolver, message: bytes, min_key_bits: int = 1024
               ) -> list[DkimResult]:
    """Runs in a worker thread. One result per DKIM-Signature, top first."""
    lookup = KeyLookup(resolver)
    try:
        verifier = dkimpy.DKIM(message, minkey=min_key_bits)
    except dkimpy.DKIMException as exc:
        return [DkimResult("permerror", reason=str(exc))]
    except Exception as exc:  # dkimpy's parser raises IndexError on a leading continuation line
        return [DkimResult("permerror", reason=f"{type(exc).__name__}: {exc}")]
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    results = []
    for index, header_value in enumerate(signatures):
        tags = _signature_tags(header_value)
        fields = dict(domain=_text(tags.get(b"d")).lower(), selector=_text(tags.get(b"s")),
                      algorithm=_text(tags.get(b"a")), identity=_text(tags.get(b"i")),
                      b=re.sub(r"\s+", "", _text(tags.get(b"b")))[:8])
        lookup.reset()
        try:
            ok = verifier.verify(idx=index, dnsfunc=lookup)
        except dkimpy.ValidationError as exc:
            # A body that does not match its hash is a failed signature; any
            # other invalid tag makes the signature unusable (RFC 6376 6.1.1).
            mismatch = "body hash mismatch" in str(exc)
            results.append(DkimResult("fail" if mismatch else "permerror",
                                      reason="body hash mismatch" if mismatch else str(exc),
                                      **fields))
            continue
        except dkimpy.DKIMException as exc:
            results.append(DkimResult("permerror", reason=str(exc), **fields))
            continue
        except Exception as exc:  # a malformed signature must never stop the MX
            results.append(DkimResult("permerror", reason=f"{type(exc).__name__}: {exc}",
                                      **fields))
            continue
        if ok:
            results.append(DkimResult("pass", **fields))
        elif lookup.temp_error:
            results.append(DkimResult("temperror", reason="key lookup failed", **fields))
        elif lookup.missing:
            results.append(DkimResult("permerror", reason="no key for signature", **fields))
        else:
            results.append(DkimResult("fail", reason="signature did not verify", **fields))
    return results


async def verify_dkim(resolver: Resolver, message: bytes, min_key_bits: int = 1024
                      ) -> list[DkimResult]:
    blocking = resolver.blocking()
    return await asyncio.to_thread(verify_all, blocking, message, min_key_bits)
