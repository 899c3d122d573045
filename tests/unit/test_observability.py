"""Log formats and address masking, the metrics ports of each process, and
who may read the operator routes (/metrics, /dashboard)."""
from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

from mailyard.policy import logs, metrics
from mailyard.policy.config import Config, ConfigError, load
from mailyard.store.mailbox.gateway.app import create_app


@pytest.fixture
def stream():
    out = io.StringIO()
    yield out
    logs.setup("info", stream=None)  # back to the defaults for the other tests


def test_json_lines_carry_the_same_fields_with_addresses_masked(stream):
    logs.setup("info", stream=stream, format="json")
    logs.EventLog("mx").info("accepted", queue_id="Q1", from_="alice@example.com", rcpts=2,
                             tls=True, skipped=None, note='say "hi"\nto bob@example.org')
    logging.getLogger("redis").warning("lost carol@example.net")
    mine, library = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert mine["event"] == "accepted" and mine["service"] == "mx" and mine["level"] == "info"
    assert mine["from"] == "a***@example.com" and "from_" not in mine
    assert mine["rcpts"] == 2 and mine["tls"] is True and "skipped" not in mine
    assert mine["note"] == 'say "hi"\nto b***@example.org'
    assert library["logger"] == "redis" and library["message"] == "lost c***@example.net"


def test_the_debug_switch_shows_addresses_in_both_formats(stream):
    logs.setup("info", mask_addresses=False, stream=stream, format="json")
    logs.EventLog("mx").info("accepted", from_="alice@example.com")
    assert json.loads(stream.getvalue())["from"] == "alice@example.com"
    logs.setup("info", mask_addresses=True, stream=stream)
    logs.EventLog("mx").info("accepted", from_="alice@example.com")
    assert stream.getvalue().splitlines()[-1].endswith("event=accepted from=a***@example.com")


def test_log_format_is_checked(tmp_path):
    path = tmp_path / "mailyard.toml"
    path.write_text('[log]\nformat = "xml"\n')
    with pytest.raises(ConfigError) as error:
        load(path)
    assert error.value.key == "log.format" and error.value.line == 2


def test_each_process_gets_its_own_metrics_port(monkeypatch):
    monkeypatch.delenv(metrics.LISTEN_ENV, raising=False)
    config = Config()
    config.metrics.listen = "127.0.0.1:9464"
    assert metrics.metrics_address(config, ["mx", "delivery", "indexer"]) == ("127.0.0.1", 9464)
    assert metrics.metrics_address(config, ["mx"]) == ("127.0.0.1", 9464)
    assert metrics.metrics_address(config, ["delivery"]) == ("127.0.0.1", 9465)
    assert metrics.metrics_address(config, ["outbound"]) == ("127.0.0.1", 9470)
    assert metrics.worker_address(config, 1) == "127.0.0.1:9564"
    assert metrics.worker_address(config, 3) == "127.0.0.1:9566"
    monkeypatch.setenv(metrics.LISTEN_ENV, "127.0.0.1:9565")  # what an extra MX process is told
    assert metrics.metrics_address(config, ["mx"]) == ("127.0.0.1", 9565)
    config.metrics.listen = "127.0.0.1:0"
    monkeypatch.delenv(metrics.LISTEN_ENV)
    assert metrics.metrics_address(config, ["delivery"]) == ("127.0.0.1", 0)
    assert metrics.worker_address(config, 2) == "127.0.0.1:0"


async def _get(app, client: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(client, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return await http.get(path)


@pytest.mark.parametrize("path", ["/metrics", "/dashboard", "/dashboard/data"])
async def test_operator_routes_answer_only_operator_networks(path):
    app = create_app(service=None, metadata=None, sampler=None,
                     operator_networks=["127.0.0.0/8", "10.1.0.0/16"])
    for outsider in ("203.0.113.9", "10.2.0.1", "::1", "not-an-ip"):
        refused = await _get(app, outsider, path)
        assert refused.status_code == 403, outsider
        assert refused.json()["error"]["status"] == "FORBIDDEN"
    for operator in ("127.0.0.1", "10.1.2.3"):
        answer = await _get(app, operator, path)
        # No sampler runs behind this app: the data route says so.
        assert answer.status_code == (503 if path == "/dashboard/data" else 200), operator
    page = await _get(app, "127.0.0.1", "/dashboard")
    assert page.headers["content-type"].startswith("text/html")
    assert "<canvas" in page.text and "http" not in page.text  # nothing fetched from elsewhere
