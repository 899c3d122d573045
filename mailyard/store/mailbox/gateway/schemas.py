"""The gateway's response models, derived from the .proto messages.

Every reply is the proto3 JSON mapping of a mailbox_pb2 message (with the
.proto's field names and fields without presence always printed), so the
pydantic model of each reply is built here from that message's descriptor,
not written by hand: a field added to mailbox.proto shows up in
/openapi.json by itself. The mapping followed:

| proto | JSON (and the schema here) |
| --- | --- |
| int32, uint32, sint32, fixed32, sfixed32 | integer |
| int64 and the other 64-bit integers | string of decimal digits |
| float, double | number (or "NaN", "Infinity", "-Infinity") |
| bool, string | boolean, string |
| bytes | string, base64 |
| enum | the value's name |
| message | object, absent when unset (it has presence) |
| repeated | array, always present |
| `optional` scalar | absent when unset |

Every field without presence is required, so a reply missing one is a
schema violation, as schemathesis checks.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import BaseModel, ConfigDict, Field, create_model

from mailyard.proto import mailbox_pb2

_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32,
          FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32}
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_FLOAT = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}

_models: dict[str, type[BaseModel]] = {}


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _scalar(field: FieldDescriptor) -> tuple[Any, dict]:
    """The Python type of one (non-repeated) value of `field`, and Field() extras."""
    kind = field.type
    if kind in _INT32:
        return int, {}
    if kind in _INT64:
        return str, {"pattern": r"^-?[0-9]+$", "description": "64-bit integer, as a string"}
    if kind in _FLOAT:
        return float | Literal["NaN", "Infinity", "-Infinity"], {}
    if kind == FieldDescriptor.TYPE_BOOL:
        return bool, {}
    if kind == FieldDescriptor.TYPE_STRING:
        return str, {}
    if kind == FieldDescriptor.TYPE_BYTES:
        return str, {"description": "base64", "json_schema_extra": {"contentEncoding": "base64"}}
    if kind == FieldDescriptor.TYPE_ENUM:
        return Literal[tuple(v.name for v in field.enum_type.values)], {}
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return model_for(field.message_type), {}
    raise TypeError(f"{field.full_name}: no JSON mapping for field type {kind}")


def model_for(descriptor: Descriptor) -> type[BaseModel]:
    """The pydantic model of `descriptor`'s proto3 JSON form (one per message, cached)."""
    if descriptor.full_name in _models:
        return _models[descriptor.full_name]
    fields: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            if key.type in _INT32 | _INT64 | {FieldDescriptor.TYPE_BOOL}:
                raise TypeError(f"{field.full_name}: only string-keyed maps are mapped")
            python, extra = _scalar(value)
            fields[field.name] = (dict[str, python], Field(..., **extra))
            continue
        python, extra = _scalar(field)
        if field.is_repeated:
            fields[field.name] = (list[python], Field(..., **extra))
        elif field.has_presence:  # messages and `optional` scalars: absent when unset
            fields[field.name] = (python, Field(None, **extra))  # absent, never null
        else:
            fields[field.name] = (python, Field(..., **extra))
    model = create_model(descriptor.name, __base__=_Reply,
                         __module__=__name__, **fields)
    model.__doc__ = f"The proto3 JSON form of `{descriptor.full_name}`."
    _models[descriptor.full_name] = model
    return model


def reply_model(message_name: str) -> type[BaseModel]:
    """The model of mailbox_pb2.<message_name>, e.g. reply_model("Message")."""
    return model_for(mailbox_pb2.DESCRIPTOR.message_types_by_name[message_name])


# The gateway's own replies.
class ErrorDetail(BaseModel):
    code: int = Field(description="the HTTP status")
    status: str = Field(description="the gRPC status name, e.g. NOT_FOUND")
    message: str
    retry_after_seconds: Optional[float] = Field(
        None, description="RESOURCE_EXHAUSTED: when the quota allows the call again")


class ErrorReply(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    error: Optional[str] = None


_ERRORS = {
    400: "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE",
    401: "UNAUTHENTICATED: no bearer token, or one that does not verify",
    404: "NOT_FOUND: no such id for the caller (another user's ids included), or no such route",
    409: "ABORTED or ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED: past the caller's quota (with Retry-After)",
    503: "UNAVAILABLE: a backend (search, storage) is down",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorReply, "description": text} for code, text in _ERRORS.items()}
