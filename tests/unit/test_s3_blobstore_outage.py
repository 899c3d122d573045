"""S3BlobStore when S3 is absent or failing: retries with backoff, then a
StorageError naming endpoint, bucket and operation. No S3 server needed: a
closed port and a small HTTP server answering 503 stand in for the outages
(the contract suite covers a real one)."""
from __future__ import annotations

import socket

import pytest

pytest.importorskip("aiobotocore")

from aiohttp import web  # noqa: E402

from mailyard.policy.config import S3Config  # noqa: E402
from mailyard.store.blobs.s3 import S3BlobStore  # noqa: E402
from mailyard.store.errors import StorageError  # noqa: E402


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(endpoint: str, **kwargs) -> S3Config:
    return S3Config(endpoint_url=endpoint, bucket="blobs", access_key_id="test",
                    secret_access_key="test", request_timeout=2.0, **kwargs)


async def test_unreachable_endpoint_is_a_storage_error_naming_it():
    endpoint = f"http://127.0.0.1:{closed_port()}"
    store = S3BlobStore(config(endpoint, max_attempts=1))
    with pytest.raises(StorageError) as err:
        await store.start()
    assert str(err.value).startswith(f"s3 {endpoint} bucket blobs: HeadBucket: ")
    await store.close()


async def test_server_errors_are_retried_then_reported():
    requests: list[str] = []

    async def unavailable(request: web.Request) -> web.Response:
        requests.append(f"{request.method} {request.path}")
        return web.Response(status=503, text="<Error><Code>ServiceUnavailable</Code>"
                                             "<Message>try later</Message></Error>")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    store = S3BlobStore(config(f"http://127.0.0.1:{port}", max_attempts=3))
    try:
        with pytest.raises(StorageError) as err:
            await store.start()
        assert requests == ["HEAD /blobs"] * 3
        assert "HeadBucket" in str(err.value) and "503" in str(err.value)
    finally:
        await store.close()
        await runner.cleanup()


async def test_calls_before_start_are_storage_errors():
    store = S3BlobStore(config("http://127.0.0.1:1"))
    with pytest.raises(StorageError, match="not started"):
        await store.get("sha256/" + "0" * 64)


def test_parts_below_the_s3_minimum_are_refused():
    with pytest.raises(ValueError):
        S3BlobStore(config("http://127.0.0.1:1", multipart_part_size=1024 * 1024))
