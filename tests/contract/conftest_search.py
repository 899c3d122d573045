"""Fixtures for the SearchIndex contract suite, one parameter per adapter.

FTS5 always runs; OpenSearch and Elasticsearch join when MAILYARD_OPENSEARCH
and MAILYARD_ELASTICSEARCH point at servers (started by tests/cluster/). Tests
use fresh uuid users, so they also hold on a shared server.
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from mailyard.searchd.index.base import SearchIndex

SEARCH_ADAPTERS = (["fts5"] + (["opensearch"] if os.environ.get("MAILYARD_OPENSEARCH") else [])
                   + (["elasticsearch"] if os.environ.get("MAILYARD_ELASTICSEARCH") else []))


@pytest.fixture(params=SEARCH_ADAPTERS)
async def search_index(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[SearchIndex]:
    if request.param == "opensearch":
        from mailyard.policy.config import OpenSearchConfig
        from mailyard.searchd.index.opensearch import OpenSearchIndex
        index = OpenSearchIndex(OpenSearchConfig(
            hosts=[os.environ["MAILYARD_OPENSEARCH"]], index_prefix="mailyard-contract",
            replicas=0))
    elif request.param == "elasticsearch":
        from mailyard.policy.config import ElasticsearchConfig
        from mailyard.searchd.index.elasticsearch import ElasticsearchIndex
        index = ElasticsearchIndex(ElasticsearchConfig(
            hosts=[os.environ["MAILYARD_ELASTICSEARCH"]], index_prefix="mailyard-contract",
            replicas=0))
    else:
        from mailyard.searchd.index.fts5 import Fts5SearchIndex
        index = Fts5SearchIndex(tmp_path / "search.db")
    await index.start()
    yield index
    await index.close()
