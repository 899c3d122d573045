"""Where mail for a domain goes: its MX hosts in preference order (RFC 5321
5.1), the domain itself when it has no MX, nowhere when it publishes a null
MX (RFC 7505), or the configured relay host for everything.

A routing failure is an Outcome for every recipient of the domain: a domain
that does not exist or accepts no mail fails at once, a DNS failure defers.
"""
from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from mailyard.mta.dns import DnsTempError, Resolver
from mailyard.mta.outbound import outcome
from mailyard.mta.outbound.outcome import Outcome
from mailyard.policy.config import parse_listen


class RouteError(Exception):
    def __init__(self, result: Outcome):
        super().__init__(result.diagnostic)
        self.outcome = result


@dataclass(frozen=True)
class Route:
    hosts: tuple[str, ...]  # names (or address literals), most preferred first
    port: int


def destination_of(domain: str, relay_host: str) -> str:
    """What connections are shared and limited by: the relay host when there
    is one, else the recipient domain."""
    return f"relay:{relay_host}" if relay_host else domain.lower()


async def route(resolver: Resolver, domain: str, relay_host: str, remote_port: int) -> Route:
    """The hosts to try for `domain`; raises RouteError."""
    if relay_host:
        host, port = parse_listen(relay_host if ":" in relay_host else f"{relay_host}:25")
        return Route((host,), port)
    if domain.startswith("[") and domain.endswith("]"):  # an address literal, user@[192.0.2.1]
        literal = domain[1:-1].removeprefix("IPv6:").removeprefix("ipv6:")
        try:
            return Route((str(ipaddress.ip_address(literal)),), remote_port)
        except ValueError:
            raise RouteError(outcome.failed("5.1.2", f"bad address literal {domain}")) from None
    try:
        answer = await resolver.query(domain, "MX")
    except DnsTempError as exc:
        raise RouteError(outcome.deferred("4.4.3", f"MX lookup of {domain} failed: {exc}"))
    if answer.nxdomain:
        raise RouteError(outcome.failed(
            "5.1.2", f"Host or domain name not found: {domain} does not exist"))
    records = answer.values("MX")
    real = [(preference, host) for preference, host in records if host]
    if records and not real:
        raise RouteError(outcome.failed(
            "5.1.10", f"{domain} does not accept mail (null MX, RFC 7505)"))
    if not real:
        return Route((domain.lower(),), remote_port)  # the implicit MX
    # Hosts of equal preference are tried in random order (RFC 5321 5.1).
    ordered = sorted(real, key=lambda mx: (mx[0], random.random()))
    return Route(tuple(dict.fromkeys(host for _, host in ordered)), remote_port)


async def addresses(resolver: Resolver, host: str) -> list[str]:
    """The IPv4 then IPv6 addresses of a host; raises DnsTempError."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        found += await resolver.lookup(host, rdtype)
    return found
