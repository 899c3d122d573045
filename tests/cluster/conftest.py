"""The cluster suite runs only under tests/cluster/run, which starts the real
servers and exports where they listen; outside it these tests are skipped, and
inside it a missing server is an error, never a skip."""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest


def cluster_address(variable: str) -> str:
    """The address tests/cluster/run exported for one server."""
    value = os.environ.get(variable)
    if value:
        return value
    if os.environ.get("MAILYARD_CLUSTER"):
        pytest.fail(f"{variable} is not set: tests/cluster/run did not start its server")
    pytest.skip(f"{variable} not set: run tests/cluster/run")


def cluster_blob_keys() -> Path:
    """A blob keys file with a fixed test secret, beside the servers' cache."""
    home = Path(os.environ.get("MAILYARD_CLUSTER_HOME", "~/.cache/mailyard-cluster"))
    path = home.expanduser() / "blob-keys.json"
    secret = base64.b64encode(hashlib.sha256(b"mailyard cluster suite").digest()).decode()
    text = json.dumps({"current": 1, "keys": {"1": secret}})
    if not path.exists() or path.read_text() != text:  # never rewritten under a reader
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o600)
    return path


def cluster_settings(keyspace: str) -> dict:
    """Config settings that put every port on its distributed adapter, at the
    servers tests/cluster/run started. `keyspace` keeps a test's metadata
    apart; the other backends are shared and tests use fresh users."""
    cassandra_host, _, cassandra_port = cluster_address("MAILYARD_CASSANDRA").rpartition(":")
    return {
        "storage": {"queue": "kafka", "metadata": "cassandra", "blobs": "s3",
                    "cache": "redis", "search": "opensearch"},
        "kafka": {"bootstrap_servers": [cluster_address("MAILYARD_KAFKA")]},
        "cassandra": {"contact_points": [cassandra_host], "port": int(cassandra_port),
                      "keyspace": keyspace},
        "s3": {"endpoint_url": cluster_address("MAILYARD_S3"),
               "access_key_id": cluster_address("MAILYARD_S3_ACCESS_KEY"),
               "secret_access_key": cluster_address("MAILYARD_S3_SECRET_KEY")},
        "redis": {"url": cluster_address("MAILYARD_REDIS")},
        # The shared bucket outlives each test's data dir: one secret for all
        # runs, as one keys file serves a whole cluster.
        "at_rest": {"keys_file": str(cluster_blob_keys())},
        # One node: replicas would leave the index yellow.
        "opensearch": {"hosts": [cluster_address("MAILYARD_OPENSEARCH")], "replicas": 0},
    }
