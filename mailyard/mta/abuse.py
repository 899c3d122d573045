"""Abuse controls of the MX, each a small check that returns a reply or None.

Counters and greylisting state live in the Cache port (`incr` with a ttl, a
fixed window), so several MX machines share them once the cache is Redis. A
cache that forgot something only makes a check more lenient or greylists a
triple again; it never loses mail.
"""
from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass

from mailyard.mta.dns import DnsTempError, Resolver
from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.store.cache.base import Cache


@dataclass
class ClientContext:
    """What the connect and MAIL checks know: who is connecting, and what they said."""
    client_ip: str
    config: Config
    cache: Cache
    resolver: Resolver | None
    log: EventLog
    mail_from: str = ""

    @property
    def trusted(self) -> bool:
        return is_trusted(self.client_ip, self.config)


def is_trusted(client_ip: str, config: Config) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False)
               for n in config.mx.trusted_networks)


# --- at connect -------------------------------------------------------------

async def connection_rate_limited(ctx: ClientContext) -> str | None:
    limits = ctx.config.ratelimit
    if not limits.enabled or ctx.trusted:
        return None
    count = await ctx.cache.incr(f"ratelimit:conn:{ctx.client_ip}", 1, ttl=limits.window)
    if count > limits.connections:
        return (f"421 4.7.0 Too many connections from {ctx.client_ip}, "
                f"try again later")
    return None


CONNECT_CHECKS = (connection_rate_limited,)


# --- at MAIL FROM -----------------------------------------------------------

async def message_rate_limited(ctx: ClientContext) -> str | None:
    limits = ctx.config.ratelimit
    if not limits.enabled or ctx.trusted:
        return None
    count = await ctx.cache.incr(f"ratelimit:msg:{ctx.client_ip}", 1, ttl=limits.window)
    if count > limits.messages:
        return f"450 4.7.1 Too many messages from {ctx.client_ip}, try again later"
    return None


def dnsbl_name(client_ip: str, zone: str) -> str:
    """1.2.0.192.zone for 192.0.2.1; nibbles for IPv6 (RFC 5782 2.1, 2.4)."""
    address = ipaddress.ip_address(client_ip)
    reversed_ip = address.reverse_pointer.rsplit(".", 2)[0]  # drop in-addr.arpa / ip6.arpa
    return f"{reversed_ip}.{zone.strip('.')}"


async def listed_in(resolver: Resolver, client_ip: str, zones: list[str], log: EventLog,
                    first_only: bool = False) -> list[str]:
    """The zones that list `client_ip` (only the first one when `first_only`)."""
    listed = []
    for zone in zones:
        try:
            answers = await resolver.lookup(dnsbl_name(client_ip, zone), "A")
        except (DnsTempError, ValueError) as exc:
            log.warning("dnsbl_unavailable", zone=zone, error=str(exc))
            continue  # a blocklist that does not answer blocks nobody
        # 127.0.0.0/8 answers list the address (RFC 5782 2.1); 127.255.255.x are
        # the lists' own error codes (over quota, open resolver), not a listing.
        if any(a.startswith("127.") and not a.startswith("127.255.255.") for a in answers):
            listed.append(zone)
            if first_only:
                break
    return listed


async def client_blocklisted(ctx: ClientContext) -> str | None:
    if not ctx.config.dnsbl.zones or ctx.trusted or ctx.resolver is None:
        return None
    for zone in await listed_in(ctx.resolver, ctx.client_ip, ctx.config.dnsbl.zones, ctx.log,
                                first_only=True):
        return f"554 5.7.1 Service unavailable; client [{ctx.client_ip}] blocked using {zone}"
    return None


MAIL_CHECKS = (message_rate_limited, client_blocklisted)


# --- at RCPT TO -------------------------------------------------------------

def client_network(client_ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) a sender's pool of outbound servers shares."""
    address = ipaddress.ip_address(client_ip)
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{client_ip}/{prefix}", strict=False))


async def greylisted(ctx) -> str | None:
    """RcptContext check: 451 4.7.1 for an unknown (network, sender, recipient)
    triple until it is retried after `greylist.delay`."""
    grey = ctx.config.greylist
    if not grey.enabled or ctx.cache is None or is_trusted(ctx.client_ip, ctx.config):
        return None
    try:
        triple = f"{client_network(ctx.client_ip)}|{ctx.mail_from.lower()}|{ctx.address.lower()}"
    except ValueError:
        return None
    if await ctx.cache.get(f"greylist:pass:{triple}") is not None:
        return None
    now = time.time()
    first = await ctx.cache.get(f"greylist:seen:{triple}")
    if first is None:
        await ctx.cache.set(f"greylist:seen:{triple}", str(now).encode(), ttl=grey.retry_window)
        return f"451 4.7.1 Greylisted, please try again in {int(grey.delay)} seconds"
    waited = now - float(first)
    if waited < grey.delay:
        return (f"451 4.7.1 Greylisted, please try again in "
                f"{int(grey.delay - waited) + 1} seconds")
    await ctx.cache.set(f"greylist:pass:{triple}", b"1", ttl=grey.pass_ttl)
    return None


# --- at end of DATA ---------------------------------------------------------

@dataclass
class DataContext:
    content: bytes        # as received, dot-unstuffed
    config: Config


_DOT_LINE = re.compile(rb"(\r\n|\n|\r)\.(\r\n|\n|\r)")
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


async def smtp_smuggling(ctx: DataContext) -> str | None:
    """A lone dot framed by anything but <CR><LF> on both sides is how SMTP
    smuggling hides a second message for a server that would end DATA there.
    aiosmtpd ends DATA only on <CR><LF>.<CR><LF>, so here it is data; we
    refuse it rather than pass it on to a server that might not."""
    for match in _DOT_LINE.finditer(ctx.content):
        if match.group(1) != b"\r\n" or match.group(2) != b"\r\n":
            return ("550 5.5.2 Message refused: bare <CR> or <LF> around a lone dot "
                    "(SMTP smuggling)")
    if ctx.content.startswith((b".\n", b".\r")) and not ctx.content.startswith(b".\r\n"):
        return "550 5.5.2 Message refused: bare <CR> or <LF> around a lone dot (SMTP smuggling)"
    return None


async def bare_newline(ctx: DataContext) -> str | None:
    if ctx.config.mx.reject_bare_newlines and _BARE.search(ctx.content):
        return "550 5.5.2 Message refused: bare <CR> or <LF>; lines end with <CR><LF> (RFC 5321 2.3.8)"
    return None


def header_section_size(content: bytes) -> int:
    if content.startswith((b"\r\n", b"\n")):
        return 0
    end = content.find(b"\r\n\r\n")
    return len(content) if end < 0 else end + 2


async def header_too_large(ctx: DataContext) -> str | None:
    limit = ctx.config.mx.max_header_size
    if header_section_size(ctx.content) > limit:
        return f"552 5.3.4 Header section exceeds {limit} octets"
    return None


DATA_CHECKS = (smtp_smuggling, bare_newline, header_too_large)
