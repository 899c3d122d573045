"""API latency and status per gRPC method, as a server interceptor, so every
method is measured the same way without a line in the service itself."""
from __future__ import annotations

import time

import grpc

from mailyard.policy import metrics


def _status(context, failed: bool) -> str:
    """The call's final status: what the service set (abort() sets it too),
    else UNKNOWN for an escaped exception, else OK."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpcio versions keep the raw number
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    return "UNKNOWN" if failed else "OK"


class CallMetricsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]

        def record(context, started: float, failed: bool) -> None:
            metrics.api_seconds.labels(method).observe(time.perf_counter() - started)
            metrics.api_requests.labels(method, _status(context, failed)).inc()

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):
                started, failed = time.perf_counter(), True
                try:
                    reply = await inner(request, context)
                    failed = False
                    return reply
                finally:
                    record(context, started, failed)
            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                started, failed = time.perf_counter(), True
                try:
                    async for item in inner_stream(request, context):
                        yield item
                    failed = False
                finally:
                    record(context, started, failed)
            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer)
        return handler
