"""SearchIndex on OpenSearch (opensearch-py's asyncio client); the layout,
writes and reads are QueryDslIndex's (dsl_index.py)."""
from __future__ import annotations

from opensearchpy import AsyncOpenSearch
from opensearchpy.exceptions import OpenSearchException, TransportError

from mailyard.searchd.index.dsl_index import QueryDslIndex


class OpenSearchIndex(QueryDslIndex):
    server = "opensearch"
    client_error = OpenSearchException
    transport_error = TransportError

    def new_client(self) -> AsyncOpenSearch:
        return AsyncOpenSearch(hosts=self.config.hosts, http_auth=self._auth(),
                               timeout=self.config.request_timeout, max_retries=1,
                               retry_on_timeout=False, ssl_context=self.tls_context())
