"""Which local users an address of a local domain reaches, and the domain
policy checks the MX makes at RCPT (see DomainConfig).

Resolution order, like Postfix's virtual maps before the mailbox: an alias or
a distribution list of the domain's policy, then a user, then user+tag (the
tag only selects; the message is left as sent, so it stays in To: as Gmail
does), then the domain's catch-all. Alias and list members may be aliases
again, up to MAX_DEPTH hops, so a loop ends instead of spinning.
"""
from __future__ import annotations

import ipaddress

from mailyard.policy.config import Config, DomainConfig, LimitsConfig
from mailyard.store.metadata.base import MetadataStore

MAX_DEPTH = 5


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower().rstrip(".")


async def resolve(config: Config, metadata: MetadataStore, address: str,
                  depth: int = 0) -> list[str]:
    """The user ids mail to `address` is delivered to; [] when nobody."""
    local, domain = split_address(address)
    if not local or not domain or depth > MAX_DEPTH:
        return []
    policy = config.domains.get(domain)
    key = local.lower()
    if policy is not None:
        targets = _policy_targets(policy, key, domain)
        if targets:
            found: list[str] = []
            for target in targets:
                found += await resolve(config, metadata, _in(target, domain), depth + 1)
            return list(dict.fromkeys(found))
    if await metadata.get_user(f"{key}@{domain}") is not None:
        return [f"{key}@{domain}"]
    separator = policy.plus_separator if policy is not None else "+"
    if separator and separator in key:
        base = key.split(separator, 1)[0]
        if base:
            found = await resolve(config, metadata, f"{base}@{domain}", depth + 1)
            if found:
                return found
    if policy is not None and policy.catch_all:
        return await resolve(config, metadata, _in(policy.catch_all, domain), depth + 1)
    return []


def _in(target: str, domain: str) -> str:
    """A policy's target: an address, or a bare local part of its own domain."""
    return target if "@" in target else f"{target}@{domain}"


def _policy_targets(policy: DomainConfig, local: str, domain: str) -> list[str]:
    for name, target in policy.aliases.items():
        if _names(name, local, domain):
            return [target]
    for name, members in policy.lists.items():
        if _names(name, local, domain):
            return list(members)
    return []


def _names(entry: str, local: str, domain: str) -> bool:
    entry = entry.lower()
    return entry == local or entry == f"{local}@{domain}"


def limits_for(config: Config, address: str) -> LimitsConfig:
    """The limits mail to `address` meets: the user's, else the domain's, else
    [mx]'s (0 in a policy means "the next one out")."""
    local, domain = split_address(address)
    policy = config.domains.get(domain)
    effective = LimitsConfig(config.mx.max_message_size, config.mx.max_recipients)
    if policy is None:
        return effective
    for layer in (policy.limits, policy.user_limits.get(local.lower())):
        if layer is not None:
            effective = LimitsConfig(layer.max_message_size or effective.max_message_size,
                                     layer.max_recipients or effective.max_recipients)
    return effective


def sender_blocked(policy: DomainConfig, mail_from: str, client_ip: str) -> bool:
    sender = mail_from.lower()
    sender_domain = split_address(sender)[1]
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        ip = None
    for entry in policy.blocklist:
        entry = entry.lower()
        if entry.startswith("@"):
            if sender_domain and sender_domain == entry[1:].rstrip("."):
                return True
        elif "@" in entry:
            if sender == entry:
                return True
        elif ip is not None and ip in ipaddress.ip_network(entry, strict=False):
            return True
    return False
