"""Per-domain policy files: policy.d/DOMAIN.toml beside the main file.

Each file is a DomainConfig (aliases, lists, catch-all, plus-addressing,
limits, TLS requirement, blocklist, DKIM keys) for the domain its name gives;
it lands in Config.domains, the one typed model, next to any [domains."..."]
table of the main file. Errors name the domain file, the line and the key
within it, and every file is checked even when an earlier one is broken.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from mailyard.policy.config import (DKIM_ALGORITHMS, Config, ConfigError, DomainConfig,
                                    _build, _in_file, _parse)

DOMAIN_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


def policy_dir(config: Config, main_file: str | os.PathLike | None) -> Path | None:
    """Where the domain files are: policy_dir (relative to the main file's
    folder), else policy.d beside the main file; None without either."""
    base = Path(main_file).parent if main_file is not None else Path(".")
    if config.policy_dir:
        return base / config.policy_dir
    return base / "policy.d" if main_file is not None else None


def load_domain_files(config: Config, main_file, main_locate,
                      errors: list[ConfigError]) -> None:
    """Validates the main file's domain tables, then reads every DOMAIN.toml
    of the policy folder into config.domains, adding what is wrong to `errors`."""
    for name, domain in config.domains.items():
        _in_file(main_file, errors, lambda found: validate_domain(
            name, domain, f"domains.{name}.", main_locate, found))
    folder = policy_dir(config, main_file)
    if folder is None:
        return
    if not folder.is_dir():
        if config.policy_dir:  # named, so expected
            errors.append(ConfigError(f"not a folder: {folder}", file=str(main_file),
                                      key="policy_dir", line=main_locate("policy_dir")
                                      if main_locate else None))
        return
    for path in sorted(folder.glob("*.toml")):
        name = path.stem.lower().rstrip(".")
        if not DOMAIN_NAME.fullmatch(name):
            errors.append(ConfigError(f"{path.stem!r} is not a domain name; domain files "
                                      f"are named DOMAIN.toml", file=str(path)))
            continue
        parsed = _parse(path, errors)
        if parsed is None:
            continue
        document, locate = parsed
        domain = _in_file(path, errors, lambda found: _build(DomainConfig, document, "",
                                                              locate, found))
        _in_file(path, errors, lambda found: validate_domain(name, domain, "", locate, found))
        if name in config.domains:
            errors.append(ConfigError(f"{name} has a [domains.\"{name}\"] table in the main "
                                      f"file too; keep one", file=str(path)))
            continue
        config.domains[name] = domain


def validate_domain(name: str, domain: DomainConfig, prefix: str, locate,
                    errors: list[ConfigError]) -> None:
    def fail(key: str, message: str) -> None:
        key = prefix + key
        errors.append(ConfigError(message, key=key, line=locate(key) if locate else None))

    if not DOMAIN_NAME.fullmatch(name):
        fail("", f"{name!r} is not a domain name")
    for alias, target in domain.aliases.items():
        if not _local_part_of(alias, name):
            fail(f"aliases.{alias}", f"an alias is a local part or an address @{name}")
        if not (_is_address(target) or _local_part_of(target, name)):
            fail(f"aliases.{alias}", f"expected an address or a local part, got {target!r}")
    for list_name, members in domain.lists.items():
        if not _local_part_of(list_name, name):
            fail(f"lists.{list_name}", f"a list is a local part or an address @{name}")
        if not members:
            fail(f"lists.{list_name}", "a list needs at least one member")
        for member in members:
            if not (_is_address(member) or _local_part_of(member, name)):
                fail(f"lists.{list_name}", f"expected addresses or local parts, got {member!r}")
    for both in set(map(str.lower, domain.aliases)) & set(map(str.lower, domain.lists)):
        fail(f"lists.{both}", "is an alias too; keep one")
    if domain.catch_all and not (_is_address(domain.catch_all)
                                 or _local_part_of(domain.catch_all, name)):
        fail("catch_all", f"expected an address, got {domain.catch_all!r}")
    if len(domain.plus_separator) > 1 or domain.plus_separator in ("@", " ", "."):
        fail("plus_separator", "one character such as + or -, or empty for none")
    limits = {"limits": domain.limits,
              **{f"user_limits.{user}": value for user, value in domain.user_limits.items()}}
    for where, value in limits.items():
        for setting in ("max_message_size", "max_recipients"):
            if not getattr(value, setting) >= 0:
                fail(f"{where}.{setting}", "must be 0 (the [mx] value) or more")
    for entry in domain.blocklist:
        if not _is_block_entry(entry):
            fail("blocklist", f"expected user@host, @host or an IP network, got {entry!r}")
    for index, key in enumerate(domain.dkim):
        where = f"dkim[{index}]"
        if key.domain and key.domain.lower().rstrip(".") != name:
            fail(f"{where}.domain", f"a key in {name}'s file signs for {name} only")
        if key.algorithm not in DKIM_ALGORITHMS:
            fail(f"{where}.algorithm",
                 f"must be one of {', '.join(DKIM_ALGORITHMS)}, not {key.algorithm!r}")
        for setting in ("selector", "private_key_file"):
            if not getattr(key, setting):
                fail(f"{where}.{setting}", "must be set")


def _local_part_of(text: str, domain: str) -> bool:
    local, at, host = text.rpartition("@")
    if not at:
        local = text
    elif host.lower().rstrip(".") != domain:
        return False
    return bool(local) and "@" not in local and not any(c.isspace() for c in local)


def _is_address(text: str) -> bool:
    local, at, host = text.rpartition("@")
    return bool(at and local and host) and not any(c.isspace() for c in text)


def _is_block_entry(text: str) -> bool:
    if text.startswith("@"):
        return bool(DOMAIN_NAME.fullmatch(text[1:].lower()))
    if "@" in text:
        return _is_address(text)
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False
