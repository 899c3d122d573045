"""Sender authentication of one received message: SPF, DKIM, ARC, DMARC, and
what the MX does about it. The daemon and `mailyard authcheck` both call
`authenticate`, so the command shows exactly what the MX would add.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from mailyard.mta.arc import ArcResult, verify_arc
from mailyard.mta.authresults import build_header, remove_forged
from mailyard.mta.dkim import DkimResult, verify_dkim
from mailyard.mta.dmarc import DmarcResult, author_domain, check_dmarc, organizational_domain
from mailyard.mta.dns import Resolver
from mailyard.mta.spf import SpfResult, check_spf
from mailyard.policy.config import Config

ACCEPT, QUARANTINE, REJECT = "accept", "quarantine", "reject"
REJECT_REPLY = "550 5.7.1 Message rejected: DMARC policy of {domain} (RFC 7489)"


@dataclass
class Verdict:
    spf: SpfResult
    dkim: list[DkimResult]
    arc: ArcResult
    dmarc: DmarcResult
    action: str               # accept, quarantine (SPAM label) or reject (550 5.7.1)
    header: bytes             # the Authentication-Results field to prepend
    message: bytes            # the message as received, less forged Authentication-Results
    forged_removed: int = 0

    @property
    def reply(self) -> str | None:
        if self.action == REJECT:
            return REJECT_REPLY.format(domain=self.dmarc.header_from)
        return None


def authserv_id(config: Config) -> str:
    return config.authentication.authserv_id or config.hostname


def dmarc_mode(config: Config, domain: str) -> str:
    """The local mode for an author domain: its override, its organizational
    domain's override, else the global mode."""
    overrides = {k.lower().rstrip("."): v for k, v in config.dmarc.overrides.items()}
    if domain:
        for candidate in (domain, organizational_domain(domain)):
            if candidate in overrides:
                return overrides[candidate]
    return config.dmarc.mode


def action_for(config: Config, dmarc: DmarcResult) -> str:
    if dmarc.result != "fail" or dmarc.disposition == "none":
        return ACCEPT
    mode = dmarc_mode(config, dmarc.header_from)
    if mode == "monitor":
        return ACCEPT
    if dmarc.disposition == "reject" and mode == "enforce":
        return REJECT
    return QUARANTINE


async def authenticate(config: Config, resolver: Resolver, message: bytes, *, client_ip: str,
                       helo: str, mail_from: str, sample=random.random) -> Verdict:
    min_bits = config.authentication.dkim_min_key_bits
    spf, dkim, arc = await asyncio.gather(
        check_spf(resolver, client_ip, helo, mail_from),
        verify_dkim(resolver, message, min_bits),
        verify_arc(resolver, message, min_bits))
    dmarc = await check_dmarc(resolver, author_domain(message), spf, dkim, sample)
    server_id = authserv_id(config)
    cleaned, removed = remove_forged(message, server_id)
    header = build_header(server_id, spf, dkim, dmarc, arc)
    return Verdict(spf, dkim, arc, dmarc, action_for(config, dmarc), header, cleaned, removed)
