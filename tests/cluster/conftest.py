"""The cluster suite runs only under tests/cluster/run, which starts the real
servers and exports where they listen; outside it these tests are skipped, and
inside it a missing server is an error, never a skip."""
from __future__ import annotations

import os

import pytest


def cluster_address(variable: str) -> str:
    """The address tests/cluster/run exported for one server."""
    value = os.environ.get(variable)
    if value:
        return value
    if os.environ.get("MAILYARD_CLUSTER"):
        pytest.fail(f"{variable} is not set: tests/cluster/run did not start its server")
    pytest.skip(f"{variable} not set: run tests/cluster/run")
