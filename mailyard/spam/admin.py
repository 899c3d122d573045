"""`mailyard spam block|unblock|blocked`: the operator's view of the blocklist."""
from __future__ import annotations

import asyncio

from mailyard.policy.config import Config
from mailyard.spam.blocklist import REBUILD_PAGE, SenderBlocklist


def command(config: Config, action: str, entries: list[str]) -> int:
    return asyncio.run(_command(config, action, entries))


async def _command(config: Config, action: str, entries: list[str]) -> int:
    from mailyard.store.stores import Stores

    stores = Stores(config)
    try:
        blocklist = SenderBlocklist(await stores.metadata(), await stores.cache(),
                                    config.spam.blocklist_refresh)
        if action == "blocked":
            after = ""
            while page := await blocklist.metadata.list_blocked_senders(REBUILD_PAGE, after):
                print("\n".join(page))
                after = page[-1]
            return 0
        for entry in entries:
            entry = entry.strip().lower()
            if action == "block":
                changed = await blocklist.block(entry)
                print(f"{entry}: {'blocked' if changed else 'already blocked'}")
            else:
                changed = await blocklist.unblock(entry)
                print(f"{entry}: {'unblocked' if changed else 'was not blocked'}")
        return 0
    finally:
        await stores.close()
