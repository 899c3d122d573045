"""SearchIndex on Elasticsearch 7.17 (elasticsearch-py 7.17's asyncio client);
the layout, writes and reads are QueryDslIndex's (dsl_index.py), the same
index, documents and queries as on OpenSearch.

The 7.17 client, not a newer one: 8.x and later clients send versioned
media types that a 7.x server refuses. 7.17 is the last Elasticsearch line
whose server jars Maven Central serves, so it is the one the cluster suite
can run (tests/cluster/servers/elasticsearch.sh)."""
from __future__ import annotations

from elasticsearch import AsyncElasticsearch
from elasticsearch.exceptions import ElasticsearchException, TransportError

from mailyard.searchd.index.dsl_index import QueryDslIndex


class ElasticsearchIndex(QueryDslIndex):
    server = "elasticsearch"
    client_error = ElasticsearchException
    transport_error = TransportError

    def new_client(self) -> AsyncElasticsearch:
        return AsyncElasticsearch(hosts=self.config.hosts, http_auth=self._auth(),
                                  timeout=self.config.request_timeout, max_retries=1,
                                  retry_on_timeout=False, ssl_context=self.tls_context())
