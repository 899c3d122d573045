"""Keeps every error status deliverable: refusals quote the caller's ids and
label names, and a quoted 100 KB id would push the grpc-message trailer past
gRPC's 8 KiB metadata limit, so the client got a transport error
("Stream removed", RESOURCE_EXHAUSTED) instead of NOT_FOUND/INVALID_ARGUMENT."""
from __future__ import annotations

import grpc

MAX_DETAILS = 1000  # characters; far below the limit even once percent-encoded


def bounded(details: str | None) -> str | None:
    if details is None or len(details) <= MAX_DETAILS:
        return details
    return details[:MAX_DETAILS] + f"... ({len(details) - MAX_DETAILS} more characters)"


class _BoundedContext:
    """The call's context with abort() shortening its details."""

    def __init__(self, context):
        self._context = context

    def __getattr__(self, name):
        return getattr(self._context, name)

    async def abort(self, code, details="", trailing_metadata=()):
        return await self._context.abort(code, bounded(details), trailing_metadata)


class BoundedDetailsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):
                return await inner(request, _BoundedContext(context))
            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                async for item in inner_stream(request, _BoundedContext(context)):
                    yield item
            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer)
        return handler
