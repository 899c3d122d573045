"""The chaos run on the cluster, short form: every port on its distributed
adapter, service processes SIGKILLed at random, and Kafka, Cassandra, Redis
and the S3 server each stopped and started again while mail streams in.
The full run is `python3 tests/chaos/run.py --cluster` (tests/RELIABILITY.md)."""
from __future__ import annotations

import uuid

import pytest

from tests.chaos import driver
from tests.cluster.conftest import cluster_address


@pytest.mark.timeout(1500)  # a Cassandra restart alone takes minutes on a busy machine
def test_no_acknowledged_message_is_lost_or_stored_twice_while_servers_restart(tmp_path):
    cluster_address("MAILYARD_KAFKA")  # skipped outside the cluster suite
    settings, prepare = driver.cluster_options(f"mailyard_chaos_{uuid.uuid4().hex[:8]}")
    try:
        figures = driver.run(tmp_path, messages=240, settings=settings, rate=2.0,
                             every=(1.0, 3.0), backends=driver.BACKENDS, backend_every=2,
                             catch_up=300, prepare=prepare)
    finally:
        for backend in driver.BACKENDS:  # whatever happened, every server serves again
            driver.server(backend, "start")
    print(f"\nchaos (cluster): {figures.summary()}")
    assert set(figures.restarts) == set(driver.BACKENDS), "a server was never restarted"
    assert figures.acknowledged > 0 and sum(figures.kills.values()) >= 3
    assert figures.lost == 0, figures.summary()
    assert figures.duplicates == 0, figures.summary()
    assert figures.unsearchable == 0, figures.summary()
