"""Storage quotas: each user's limit from [quota], their usage from the
MetadataStore (each distinct blob counted once per user, kept current by
charge_blobs on delivery and delete_messages).

Writers charge after linking and before the message is visible, so a blob is
never charged without a message of the user linking it. On SQLite the
uncharge is in the delete's transaction; on Cassandra a delete racing a new
delivery of the same part to the same user can uncharge it early (usage reads
low by that part until the user's next change of it), never high.
"""
from __future__ import annotations

from dataclasses import dataclass

from mailyard.policy.config import QuotaConfig
from mailyard.store.metadata.base import MetadataStore


@dataclass(slots=True)
class Usage:
    used: int
    limit: int                     # 0: unlimited

    @property
    def over(self) -> bool:
        return self.limit > 0 and self.used >= self.limit


def quota_limit(config: QuotaConfig, address: str) -> int:
    """The user's limit: [quota.users], else [quota.domains], else the default."""
    address = address.lower()
    users = {user.lower(): limit for user, limit in config.users.items()}
    if address in users:
        return users[address]
    domains = {domain.lower(): limit for domain, limit in config.domains.items()}
    return domains.get(address.rpartition("@")[2], config.default)


async def usage_of(metadata: MetadataStore, config: QuotaConfig, address: str) -> Usage:
    return Usage(await metadata.storage_usage(address), quota_limit(config, address))
