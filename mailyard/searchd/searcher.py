"""searchd's side of the mailbox service's Searcher protocol: parse, ask the
Bloom filter, then the index. The launcher hands an IndexSearcher to the
service, which knows only store.mailbox.search.Searcher."""
from __future__ import annotations

from dataclasses import dataclass

from mailyard.policy.config import Config
from mailyard.searchd.bloom import BloomFilters, cannot_match
from mailyard.searchd.index import shared_index
from mailyard.searchd.index.base import SearchIndex
from mailyard.searchd.query import parse
from mailyard.store.mailbox.search import SearchResult


@dataclass
class SearchStats:
    searches: int = 0
    answered_by_bloom: int = 0


class IndexSearcher:
    def __init__(self, index: SearchIndex, blooms: BloomFilters | None = None):
        self.index, self.blooms = index, blooms
        self.stats = SearchStats()

    def check(self, query: str) -> None:
        parse(query)

    async def search(self, user_id: str, query: str, limit: int,
                     after: str | None = None) -> SearchResult:
        tree = parse(query)  # QueryError is the protocol's InvalidQuery
        self.stats.searches += 1
        if self.blooms is not None:
            bloom = await self.blooms.load(user_id)
            if bloom is not None and cannot_match(tree, bloom):
                self.stats.answered_by_bloom += 1
                return SearchResult([], None)
        page = await self.index.search(user_id, tree, limit, after)
        return SearchResult([hit.message_id for hit in page.hits], page.next_after)


async def open_searcher(config: Config, stores) -> IndexSearcher:
    blooms = BloomFilters(await stores.cache()) if config.search.bloom_filter else None
    return IndexSearcher(await shared_index(config, stores), blooms)
