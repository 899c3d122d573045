"""Running a gRPC servicer method from an HTTP request.

The gateway hands each service method a context with the small surface they
use (the caller's metadata, abort), so authentication, quotas, validation and
isolation are the service's own code; an abort becomes a JSON error with the
gRPC status mapped to its HTTP code, as Google's API gateways map them.
"""
from __future__ import annotations

import grpc

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


class GatewayAbort(Exception):
    """A service method aborted: the status it gave, for the HTTP answer."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata=()):
        super().__init__(details)
        self.code, self.details = code, details
        self.trailing = dict(trailing_metadata or ())

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict:
        error = {"code": self.http_status, "status": self.code.name, "message": self.details}
        if "retry-after" in self.trailing:
            error["retry_after_seconds"] = float(self.trailing["retry-after"])
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if "retry-after" in self.trailing:  # HTTP's Retry-After is whole seconds
            return {"Retry-After": str(max(1, round(float(self.trailing["retry-after"]) + 0.5)))}
        return {}


class GatewayContext:
    """What a servicer method needs of grpc.aio.ServicerContext."""

    def __init__(self, authorization: str | None):
        self._metadata = (("authorization", authorization),) if authorization else ()

    def invocation_metadata(self):
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        raise GatewayAbort(code, details, trailing_metadata)

    def set_trailing_metadata(self, metadata) -> None:
        pass
