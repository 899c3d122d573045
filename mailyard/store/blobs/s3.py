"""BlobStore on S3 (aiobotocore): one object per blob, named by the blob key.

The object key is the port's key (`sha256/<hex>`), so the bucket holds the
same names FsBlobStore would. A put first asks HEAD whether the bytes are
there already and writes only when they are not; concurrent writers of the
same bytes all write the same object, which is harmless. Each upload carries
the SHA-256 of its bytes (per part for multipart), so S3 refuses bytes that
arrived damaged; `put_as` stores bytes under a key a layer derived (sealed
blobs keep their plaintext's key). botocore retries throttling and transient errors with
backoff; what still fails becomes a StorageError naming bucket, operation and
key.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator

from aiobotocore.config import AioConfig
from aiohttp import ClientError as HttpError
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from mailyard.policy.config import S3Config
from mailyard.policy.tls import warn_if_unverified
from mailyard.store.blobs.base import BlobStore, key_digest
from mailyard.store.errors import NotFound, StorageError

def _verify(config: S3Config) -> bool | str:
    """botocore's `verify` for an https endpoint: [s3.tls]'s CA bundle, the
    system's (True), or False only when verification is turned off."""
    if not config.tls.verify:
        return False
    return config.tls.ca_file or True


MIN_PART_SIZE = 5 * 1024 * 1024  # S3's lower bound for every part but the last
PART_CONCURRENCY = 4
# Hashing a blob this large is moved off the event loop.
HASH_IN_THREAD = 256 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3BlobStore(BlobStore):
    def __init__(self, config: S3Config) -> None:
        if config.multipart_part_size < MIN_PART_SIZE:
            raise ValueError(f"s3.multipart_part_size must be at least {MIN_PART_SIZE} bytes")
        self.config = config
        self.bucket = config.bucket
        self._exit = AsyncExitStack()
        self._client = None

    async def start(self) -> None:
        c = self.config
        client_config = AioConfig(
            connect_timeout=c.request_timeout, read_timeout=c.request_timeout,
            retries={"total_max_attempts": c.max_attempts, "mode": "standard"},
            # Self-hosted S3 servers answer on one host name or an IP, so
            # path-style; AWS itself wants virtual-hosted buckets.
            s3={"addressing_style": "path" if c.endpoint_url else "auto"},
            max_pool_connections=32,
            client_cert=(c.tls.cert_file, c.tls.key_file) if c.tls.cert_file else None)
        if not c.endpoint_url or c.endpoint_url.startswith("https:"):
            warn_if_unverified(c.tls, f"s3 {c.endpoint_url or c.region}")
        # Empty credentials leave botocore to its usual chain (AWS_* variables,
        # ~/.aws, an instance role).
        self._client = await self._exit.enter_async_context(get_session().create_client(
            "s3", endpoint_url=c.endpoint_url or None, region_name=c.region,
            aws_access_key_id=c.access_key_id or None,
            aws_secret_access_key=c.secret_access_key or None, config=client_config,
            verify=_verify(c)))
        await self._ensure_bucket()

    async def put(self, data: bytes) -> str:
        digest = await _sha256(data)
        key = "sha256/" + digest.hex()
        if not await self.exists(key):
            await self._upload(key, data, digest)
        return key

    async def put_as(self, key: str, data: bytes, *, replace: bool = False) -> None:
        key_digest(key)
        if replace or not await self.exists(key):
            await self._upload(key, data, await _sha256(data))

    async def keys(self) -> AsyncIterator[str]:
        async with self._errors("ListObjectsV2", ""):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix="sha256/")
            async for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"]

    async def get(self, key: str) -> bytes:
        key_digest(key)
        async with self._errors("GetObject", key):
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return await body.read()

    async def stream(self, key: str, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
        key_digest(key)
        async with self._errors("GetObject", key):
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                # The body yields what the socket had; callers get full chunks.
                pending = b""
                while piece := await body.read(chunk_size):
                    pending += piece
                    while len(pending) >= chunk_size:
                        yield pending[:chunk_size]
                        pending = pending[chunk_size:]
                if pending:
                    yield pending

    async def exists(self, key: str) -> bool:
        key_digest(key)
        try:
            async with self._errors("HeadObject", key):
                await self._client.head_object(Bucket=self.bucket, Key=key)
        except NotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        key_digest(key)
        async with self._errors("DeleteObject", key):  # S3 deletes a missing key quietly
            await self._client.delete_object(Bucket=self.bucket, Key=key)

    async def close(self) -> None:
        await self._exit.aclose()
        self._client = None

    async def _upload(self, key: str, data: bytes, digest: bytes) -> None:
        async with self._errors("PutObject", key):
            if len(data) < self.config.multipart_threshold:
                await self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=data,
                    ChecksumSHA256=base64.b64encode(digest).decode())
            else:
                await self._put_multipart(key, data)

    async def _ensure_bucket(self) -> None:
        """Creates the bucket on first use; another process creating it at the
        same moment is fine."""
        try:
            async with self._errors("HeadBucket", ""):
                await self._client.head_bucket(Bucket=self.bucket)
            return
        except NotFound:
            pass
        extra = {}
        if self.config.region != "us-east-1":  # the one region S3 refuses to be told
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        try:
            await self._client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:
            if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise self._error("CreateBucket", "", exc) from exc

    async def _put_multipart(self, key: str, data: bytes) -> None:
        upload = await self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256")
        upload_id = upload["UploadId"]
        size = self.config.multipart_part_size
        slots = asyncio.Semaphore(PART_CONCURRENCY)

        async def send(number: int, part: bytes) -> dict:
            checksum = base64.b64encode(await _sha256(part)).decode()
            async with slots:
                sent = await self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=part, ChecksumSHA256=checksum)
            return {"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": checksum}

        try:
            parts = await asyncio.gather(*(
                send(n, data[offset:offset + size])
                for n, offset in enumerate(range(0, len(data), size), start=1)))
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": list(parts)})
        except BaseException:
            # Parts of an abandoned upload are billed until aborted.
            try:
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (BotoCoreError, ClientError):
                pass  # the bucket's lifecycle rule for incomplete uploads is the backstop
            raise

    @asynccontextmanager
    async def _errors(self, operation: str, key: str) -> AsyncIterator[None]:
        if self._client is None:
            raise self._error(operation, key, RuntimeError("not started"))
        try:
            yield
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound(key or self.bucket) from None
            raise self._error(operation, key, exc) from exc
        except (BotoCoreError, HttpError, OSError, asyncio.TimeoutError) as exc:
            raise self._error(operation, key, exc) from exc

    def _error(self, operation: str, key: str, exc: Exception) -> StorageError:
        what = f"{operation} {key}" if key else operation
        return StorageError(f"s3 {self.config.endpoint_url or 'AWS'} bucket {self.bucket}: "
                            f"{what}: {exc}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def _sha256(data: bytes) -> bytes:
    if len(data) < HASH_IN_THREAD:
        return hashlib.sha256(data).digest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).digest())
