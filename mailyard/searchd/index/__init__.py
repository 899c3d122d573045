"""The SearchIndex port (base.py) and its adapters, one module each."""
from __future__ import annotations

from mailyard.policy.config import Config
from mailyard.searchd.index.base import SearchIndex


def open_index(config: Config) -> SearchIndex:
    """The adapter `[storage] search` names, not yet started; imported lazily so
    a backend's client library loads only when it is configured."""
    if config.storage.search == "fts5":
        from mailyard.searchd.index.fts5 import Fts5SearchIndex
        return Fts5SearchIndex(config.data_path / "search.db", cache_mib=config.search.cache_mib)
    if config.storage.search == "opensearch":
        from mailyard.searchd.index.opensearch import OpenSearchIndex
        return OpenSearchIndex(config.opensearch)
    if config.storage.search == "elasticsearch":
        from mailyard.searchd.index.elasticsearch import ElasticsearchIndex
        return ElasticsearchIndex(config.elasticsearch)
    raise ValueError(f"unknown search index {config.storage.search!r}")


async def shared_index(config: Config, stores) -> SearchIndex:
    """The one index of this process, shared by the indexer and the mailbox
    service and closed with the other adapters."""
    return await stores.extra("search", lambda: open_index(config))
