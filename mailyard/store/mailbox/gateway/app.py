"""The gateway's routes: each one builds the gRPC request, calls the
MailboxService method of the same name and answers its reply as JSON (the
proto3 JSON mapping with the .proto's field names; 64-bit integers are
strings, as that mapping says). Errors are `{"error": {"code", "status",
"message"}}` with the gRPC status mapped to HTTP (context.py).
"""
from __future__ import annotations

import time
from http import HTTPStatus
from typing import Literal

from fastapi import FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from google.protobuf.json_format import MessageToDict
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from mailyard.proto import mailbox_pb2
from mailyard.store.errors import StorageError
from mailyard.store.mailbox.gateway.context import GatewayAbort, GatewayContext
from mailyard.store.mailbox.gateway.dashboard import add_operator_routes
from mailyard.store.mailbox.gateway.schemas import ERROR_RESPONSES, Health, reply_model

bearer = HTTPBearer(auto_error=False, description="A JWT from `mailyard token issue ADDRESS`")
FORMATS = {"full": mailbox_pb2.FULL, "metadata": mailbox_pb2.METADATA, "raw": mailbox_pb2.RAW}
# Replies: the model derived from the proto message (schemas.py), keys absent
# from the proto3 JSON left absent, and the JSON errors a call can answer.
REPLY = {"response_model_exclude_unset": True, "responses": ERROR_RESPONSES}
# Integers the .proto declares as int32 and int64: larger ones are a 422, not
# a ValueError in the protobuf constructor.
INT32 = {"ge": -2**31, "le": 2**31 - 1}
INT64 = {"ge": -2**63, "le": 2**63 - 1}


class DraftContentInput(BaseModel):
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str = ""
    body: str = Field("", description="text/plain")
    reply_to_id: str = Field("", description="id of the caller's message it answers")

    def proto(self) -> mailbox_pb2.DraftContent:
        return mailbox_pb2.DraftContent(**self.model_dump())


class DraftUpdate(BaseModel):
    version: int = Field(description="the version this update was made from", **INT64)
    content: DraftContentInput


class MessageIds(BaseModel):
    ids: list[str]


class Modify(BaseModel):
    ids: list[str]
    add_labels: list[str] = Field(default_factory=list)
    remove_labels: list[str] = Field(default_factory=list)


class LabelName(BaseModel):
    name: str


class LabelRename(BaseModel):
    new_name: str


def _json(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def _authorization(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return f"{credentials.scheme} {credentials.credentials}" if credentials else None


def _allowed_methods(app: FastAPI, scope) -> set[str]:
    """The methods of the documented path the URL is taken for: the first
    route matching it (/v1/messages/inbox before /v1/messages/{id}), with the
    other routes of that same path."""
    routes = [r for r in app.routes if getattr(r, "methods", None)]
    path = next((r.path for r in routes if r.matches(scope)[0] != Match.NONE), None)
    return {m for r in routes if r.path == path for m in r.methods}


def create_app(service, metadata, sampler=None,
               operator_networks: list[str] = ("127.0.0.0/8", "::1/128")) -> FastAPI:
    """The ASGI app over `service` (a MailboxService); `sampler` feeds the
    dashboard, which `operator_networks` may see (dashboard.py)."""
    app = FastAPI(title="mailyard mailbox API", version="v1",
                  description="REST/JSON mirror of the gRPC service mailyard.mailbox.v1.Mailbox.")
    registry = CollectorRegistry()
    requests = Counter("mailyard_gateway_requests", "HTTP requests answered",
                       ["method", "route", "status"], registry=registry)
    latency = Histogram("mailyard_gateway_request_seconds", "HTTP request latency",
                        ["method", "route"], registry=registry)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(GatewayAbort)
    async def aborted(request: Request, exc: GatewayAbort):
        return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # No such route (404), method (405): the same JSON error shape as the calls'.
        status = HTTPStatus(exc.status_code)
        name = "NOT_FOUND" if status == HTTPStatus.NOT_FOUND else status.name
        headers = dict(exc.headers or {})
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            # Starlette's Allow names one route's method only; each method is a
            # route of its own here, so Allow lists those of the documented path.
            headers["Allow"] = ", ".join(sorted(_allowed_methods(app, request.scope)))
        return JSONResponse({"error": {"code": exc.status_code, "status": name,
                                       "message": str(exc.detail)}},
                            status_code=exc.status_code, headers=headers)

    async def call(method: str, request, credentials: HTTPAuthorizationCredentials | None):
        return await getattr(service, method)(request, GatewayContext(_authorization(credentials)))

    async def reply(method: str, request, credentials) -> dict:
        return _json(await call(method, request, credentials))

    Auth = Security(bearer)

    # --- operations --------------------------------------------------------
    @app.get("/healthz", tags=["operations"], response_model=Health,
             response_model_exclude_unset=True,
             responses={503: {"model": Health, "description": "the MetadataStore is unreachable"}})
    async def healthz():
        try:
            await metadata.list_domains()
        except StorageError as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        return {"status": "ok"}

    add_operator_routes(app, registry, sampler, list(operator_networks))

    # --- messages ----------------------------------------------------------
    @app.get("/v1/messages", tags=["messages"],
             response_model=reply_model("ListMessagesResponse"), **REPLY)
    async def list_messages(label: str = "INBOX", page_size: int = Query(0, **INT32),
                            page_token: str = "", credentials=Auth) -> dict:
        return await reply("ListMessages", mailbox_pb2.ListMessagesRequest(
            label=label, page_size=page_size, page_token=page_token), credentials)

    @app.get("/v1/messages/inbox", tags=["messages"],
             response_model=reply_model("ListMessagesResponse"), **REPLY)
    async def inbox(page_size: int = Query(0, **INT32), page_token: str = "",
                    credentials=Auth) -> dict:
        return await reply("ListMessages", mailbox_pb2.ListMessagesRequest(
            label="INBOX", page_size=page_size, page_token=page_token), credentials)

    @app.post("/v1/messages", tags=["messages"],
              description="Sends a message: the SENT copy is stored before the reply, local "
                          "recipients get it here, remote ones through the outbound queue.",
             response_model=reply_model("SendResponse"), **REPLY)
    async def send_message(content: DraftContentInput, credentials=Auth) -> dict:
        return await reply("SendMessage", mailbox_pb2.SendMessageRequest(content=content.proto()),
                           credentials)

    @app.post("/v1/messages/modify", tags=["messages"],
             response_model=reply_model("ModifyLabelsResponse"), **REPLY)
    async def modify(body: Modify, credentials=Auth) -> dict:
        return await reply("ModifyLabels", mailbox_pb2.ModifyLabelsRequest(
            ids=body.ids, add_labels=body.add_labels, remove_labels=body.remove_labels), credentials)

    @app.post("/v1/messages/trash", tags=["messages"],
             response_model=reply_model("ModifyLabelsResponse"), **REPLY)
    async def trash(body: MessageIds, credentials=Auth) -> dict:
        return await reply("TrashMessages", mailbox_pb2.MessageIdsRequest(ids=body.ids), credentials)

    @app.post("/v1/messages/untrash", tags=["messages"],
             response_model=reply_model("ModifyLabelsResponse"), **REPLY)
    async def untrash(body: MessageIds, credentials=Auth) -> dict:
        return await reply("UntrashMessages", mailbox_pb2.MessageIdsRequest(ids=body.ids),
                           credentials)

    @app.post("/v1/messages/delete", tags=["messages"], description="Deletes many, for good.",
             response_model=reply_model("DeleteMessagesResponse"), **REPLY)
    async def batch_delete(body: MessageIds, credentials=Auth) -> dict:
        return await reply("DeleteMessages", mailbox_pb2.MessageIdsRequest(ids=body.ids),
                           credentials)

    @app.get("/v1/messages/{id}", tags=["messages"],
             response_model=reply_model("Message"), **REPLY)
    async def get_message(id: str, format: Literal["full", "metadata", "raw"] = "full",
                          allow_remote_images: bool = False, credentials=Auth) -> dict:
        return await reply("GetMessage", mailbox_pb2.GetMessageRequest(
            id=id, format=FORMATS[format], allow_remote_images=allow_remote_images),
            credentials)

    @app.delete("/v1/messages/{id}", tags=["messages"], description="Deletes one, for good.",
             response_model=reply_model("DeleteMessagesResponse"), **REPLY)
    async def delete_message(id: str, credentials=Auth) -> dict:
        return await reply("DeleteMessages", mailbox_pb2.MessageIdsRequest(ids=[id]), credentials)

    @app.get("/v1/messages/{id}/attachments/{attachment_id}", tags=["messages"],
             response_class=Response,
             responses=ERROR_RESPONSES | {200: {"content": {"application/octet-stream": {}}}})
    async def attachment(id: str, attachment_id: str, credentials=Auth):
        authorization = _authorization(credentials)
        request = mailbox_pb2.GetAttachmentRequest(message_id=id, attachment_id=attachment_id)
        chunks = [chunk.data async for chunk in
                  service.GetAttachment(request, GatewayContext(authorization))]
        # The sender's bytes (an HTML attachment too): a browser must save, never render them.
        return Response(b"".join(chunks), media_type="application/octet-stream",
                        headers={"Content-Disposition": "attachment",
                                 "X-Content-Type-Options": "nosniff"})

    @app.get("/v1/search", tags=["messages"],
             response_model=reply_model("SearchResponse"), **REPLY)
    async def search(q: str = "", page_size: int = Query(0, **INT32),
                     page_token: str = "", credentials=Auth) -> dict:
        return await reply("Search", mailbox_pb2.SearchRequest(
            query=q, page_size=page_size, page_token=page_token), credentials)

    # --- storage usage ------------------------------------------------------
    @app.get("/v1/usage", tags=["usage"], response_model=reply_model("Usage"), **REPLY)
    async def get_usage(credentials=Auth) -> dict:
        return await reply("GetUsage", mailbox_pb2.GetUsageRequest(), credentials)

    # --- labels ------------------------------------------------------------
    @app.get("/v1/labels", tags=["labels"],
             response_model=reply_model("ListLabelsResponse"), **REPLY)
    async def list_labels(credentials=Auth) -> dict:
        return await reply("ListLabels", mailbox_pb2.ListLabelsRequest(), credentials)

    @app.post("/v1/labels", tags=["labels"], status_code=201,
             response_model=reply_model("Label"), **REPLY)
    async def create_label(body: LabelName, credentials=Auth) -> dict:
        return await reply("CreateLabel", mailbox_pb2.CreateLabelRequest(name=body.name),
                           credentials)

    @app.patch("/v1/labels/{name}", tags=["labels"],
             response_model=reply_model("Label"), **REPLY)
    async def rename_label(name: str, body: LabelRename, credentials=Auth) -> dict:
        return await reply("RenameLabel", mailbox_pb2.RenameLabelRequest(
            name=name, new_name=body.new_name), credentials)

    @app.delete("/v1/labels/{name}", tags=["labels"],
             response_model=reply_model("DeleteLabelResponse"), **REPLY)
    async def delete_label(name: str, credentials=Auth) -> dict:
        return await reply("DeleteLabel", mailbox_pb2.DeleteLabelRequest(name=name), credentials)

    # --- threads -----------------------------------------------------------
    @app.get("/v1/threads", tags=["threads"],
             response_model=reply_model("ListThreadsResponse"), **REPLY)
    async def list_threads(label: str = "INBOX", page_size: int = Query(0, **INT32),
                           page_token: str = "", credentials=Auth) -> dict:
        return await reply("ListThreads", mailbox_pb2.ListThreadsRequest(
            label=label, page_size=page_size, page_token=page_token), credentials)

    @app.get("/v1/threads/{id}", tags=["threads"],
             response_model=reply_model("Thread"), **REPLY)
    async def get_thread(id: str, credentials=Auth) -> dict:
        return await reply("GetThread", mailbox_pb2.GetThreadRequest(id=id), credentials)

    # --- drafts ------------------------------------------------------------
    @app.get("/v1/drafts", tags=["drafts"],
             response_model=reply_model("ListDraftsResponse"), **REPLY)
    async def list_drafts(page_size: int = Query(0, **INT32), page_token: str = "",
                          credentials=Auth) -> dict:
        return await reply("ListDrafts", mailbox_pb2.ListDraftsRequest(
            page_size=page_size, page_token=page_token), credentials)

    @app.post("/v1/drafts", tags=["drafts"], status_code=201,
             response_model=reply_model("Draft"), **REPLY)
    async def create_draft(content: DraftContentInput, credentials=Auth) -> dict:
        return await reply("CreateDraft", mailbox_pb2.CreateDraftRequest(content=content.proto()),
                           credentials)

    @app.get("/v1/drafts/{id}", tags=["drafts"],
             response_model=reply_model("Draft"), **REPLY)
    async def get_draft(id: str, credentials=Auth) -> dict:
        return await reply("GetDraft", mailbox_pb2.GetDraftRequest(id=id), credentials)

    @app.put("/v1/drafts/{id}", tags=["drafts"],
             description="409 (ABORTED) when another device wrote since `version`.",
             response_model=reply_model("Draft"), **REPLY)
    async def update_draft(id: str, body: DraftUpdate, credentials=Auth) -> dict:
        return await reply("UpdateDraft", mailbox_pb2.UpdateDraftRequest(
            id=id, version=body.version, content=body.content.proto()), credentials)

    @app.delete("/v1/drafts/{id}", tags=["drafts"],
             response_model=reply_model("DeleteDraftResponse"), **REPLY)
    async def delete_draft(id: str, version: int = Query(0, **INT64), credentials=Auth) -> dict:
        return await reply("DeleteDraft", mailbox_pb2.DeleteDraftRequest(id=id, version=version),
                           credentials)

    @app.post("/v1/drafts/{id}/send", tags=["drafts"],
             response_model=reply_model("SendResponse"), **REPLY)
    async def send_draft(id: str, version: int = Query(0, **INT64), credentials=Auth) -> dict:
        return await reply("SendDraft", mailbox_pb2.SendDraftRequest(id=id, version=version),
                           credentials)

    # --- changes -----------------------------------------------------------
    @app.get("/v1/changes", tags=["changes"],
             description="The caller's mailbox changes after a position, oldest first.",
             response_model=reply_model("ListChangesResponse"), **REPLY)
    async def list_changes(after: int = Query(0, **INT64), page_size: int = Query(0, **INT32), credentials=Auth) -> dict:
        return await reply("ListChanges", mailbox_pb2.ListChangesRequest(
            after=after, page_size=page_size), credentials)

    return app
