"""DMARC (RFC 7489): the author domain's policy, alignment, and the disposition.

The record is fetched through our resolver and parsed here rather than with
checkdmarc: checkdmarc queries DNS by itself (no way to hand it our resolver,
its cache or the offline zone file), and the receiver's part of the grammar
(v, p, sp, adkim, aspf, pct, rua) is a few lines. The organizational domain
comes from the Public Suffix List that `publicsuffixlist` ships, so nothing is
downloaded at run time.
"""
from __future__ import annotations

import email.parser
import email.policy
import email.utils
import random
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from mailyard.mta.dkim import DkimResult
from mailyard.mta.dns import DnsTempError, Resolver
from mailyard.mta.spf import SpfResult

POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DmarcRecord:
    p: str
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True)
class DmarcResult:
    result: str                   # pass fail none temperror permerror
    header_from: str = ""         # the RFC5322.From domain
    policy: str = "none"          # p (or sp) that applies to this domain, as published
    disposition: str = "none"     # after pct sampling: none quarantine reject
    reason: str = ""


_psl: PublicSuffixList | None = None


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label (itself when it is a suffix)."""
    global _psl
    if _psl is None:
        _psl = PublicSuffixList()
    domain = domain.rstrip(".").lower()
    return _org(domain)


@lru_cache(maxsize=4096)
def _org(domain: str) -> str:
    return _psl.privatesuffix(domain) or domain


def aligned(identifier: str, author: str, mode: str) -> bool:
    identifier, author = identifier.rstrip(".").lower(), author.rstrip(".").lower()
    if not identifier or not author:
        return False
    if mode == "s":
        return identifier == author
    return organizational_domain(identifier) == organizational_domain(author)


def parse_record(text: str) -> DmarcRecord | None:
    """A record, or None when it is not one DMARC applies (RFC 7489 6.3, 6.6.3)."""
    tags: dict[str, str] = {}
    parts = [p.strip() for p in text.split(";")]
    for index, part in enumerate(parts):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            return None
        name, value = name.strip().lower(), value.strip()
        if index == 0 and (name != "v" or value != "DMARC1"):
            return None
        tags.setdefault(name, value)
    if "v" not in tags:
        return None
    p, sp = tags.get("p", "").lower(), tags.get("sp")
    valid_sp = sp is None or sp.lower() in POLICIES
    if p not in POLICIES or not valid_sp:
        # 6.6.3: without a valid p (or with a bad sp), a record with a usable
        # rua is treated as p=none; otherwise DMARC does not apply.
        if any(u.strip().lower().startswith("mailto:") for u in tags.get("rua", "").split(",")):
            return DmarcRecord(p="none")
        return None
    pct = tags.get("pct", "100")
    return DmarcRecord(
        p=p, sp=sp.lower() if sp else None,
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        pct=min(100, max(0, int(pct))) if pct.isdigit() else 100)


async def fetch_record(resolver: Resolver, domain: str) -> DmarcRecord | None:
    """The one DMARC record at _dmarc.DOMAIN; several mean none (6.6.3)."""
    texts = [t.decode("utf-8", "replace") for t in await resolver.txt(f"_dmarc.{domain}")]
    candidates = [t for t in texts if t.strip().startswith("v=DMARC1")]
    if len(candidates) != 1:
        return None
    return parse_record(candidates[0])


def author_domain(message: bytes) -> str | None:
    """The domain of the single RFC5322.From address; None when there is not exactly one."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message)
    values = headers.get_all("From") or []
    if len(values) != 1:
        return None
    addresses = [a for _, a in email.utils.getaddresses([str(values[0])]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].strip().rstrip(">").lower()
    # A hostile From puts anything after the @ (controls, 8-bit bytes as
    # surrogates); such a name is no domain to look up or to report.
    if not domain.isprintable() or " " in domain:
        return None
    return domain or None


async def check_dmarc(resolver: Resolver, from_domain: str | None, spf: SpfResult | None,
                      dkim: list[DkimResult], sample=random.random) -> DmarcResult:
    if not from_domain:
        return DmarcResult("permerror", reason="no single author address in From")
    org = organizational_domain(from_domain)
    try:
        record, at_org = await fetch_record(resolver, from_domain), False
        if record is None and org != from_domain:
            record, at_org = await fetch_record(resolver, org), True
    except DnsTempError as exc:
        return DmarcResult("temperror", from_domain, reason=str(exc))
    if record is None:
        return DmarcResult("none", from_domain, reason="no DMARC record")
    policy = record.sp if at_org and record.sp else record.p
    spf_ok = spf is not None and spf.result == "pass" and aligned(spf.domain, from_domain,
                                                                  record.aspf)
    dkim_ok = any(d.result == "pass" and aligned(d.domain, from_domain, record.adkim)
                  for d in dkim)
    if spf_ok or dkim_ok:
        how = "spf" if spf_ok else "dkim"
        return DmarcResult("pass", from_domain, policy, "none", reason=f"aligned {how}")
    disposition = policy
    if record.pct < 100 and not sample() * 100 < record.pct:
        # 6.6.4: outside the sampled percentage, the next less strict policy.
        disposition = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
    return DmarcResult("fail", from_domain, policy, disposition,
                       reason="neither SPF nor DKIM aligned and passed")
