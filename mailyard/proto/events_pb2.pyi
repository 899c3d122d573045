from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InboundEnvelope(_message.Message):
    __slots__ = ("queue_id", "mail_from", "rcpt_to", "spool_key", "received_at_ms", "client_ip", "helo", "size", "smtputf8", "client_hostname", "quarantine", "dnsbl_listed")
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    MAIL_FROM_FIELD_NUMBER: _ClassVar[int]
    RCPT_TO_FIELD_NUMBER: _ClassVar[int]
    SPOOL_KEY_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    HELO_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SMTPUTF8_FIELD_NUMBER: _ClassVar[int]
    CLIENT_HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_FIELD_NUMBER: _ClassVar[int]
    DNSBL_LISTED_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    mail_from: str
    rcpt_to: _containers.RepeatedScalarFieldContainer[str]
    spool_key: str
    received_at_ms: int
    client_ip: str
    helo: str
    size: int
    smtputf8: bool
    client_hostname: str
    quarantine: bool
    dnsbl_listed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, queue_id: _Optional[str] = ..., mail_from: _Optional[str] = ..., rcpt_to: _Optional[_Iterable[str]] = ..., spool_key: _Optional[str] = ..., received_at_ms: _Optional[int] = ..., client_ip: _Optional[str] = ..., helo: _Optional[str] = ..., size: _Optional[int] = ..., smtputf8: _Optional[bool] = ..., client_hostname: _Optional[str] = ..., quarantine: _Optional[bool] = ..., dnsbl_listed: _Optional[_Iterable[str]] = ...) -> None: ...

class OutboundEnvelope(_message.Message):
    __slots__ = ("queue_id", "mail_from", "rcpt_to", "spool_key", "size", "user_id", "submitted_at_ms", "attempt", "generation", "not_before_ms", "smtputf8", "delay_warned", "last_error")
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    MAIL_FROM_FIELD_NUMBER: _ClassVar[int]
    RCPT_TO_FIELD_NUMBER: _ClassVar[int]
    SPOOL_KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    SMTPUTF8_FIELD_NUMBER: _ClassVar[int]
    DELAY_WARNED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    mail_from: str
    rcpt_to: _containers.RepeatedScalarFieldContainer[str]
    spool_key: str
    size: int
    user_id: str
    submitted_at_ms: int
    attempt: int
    generation: int
    not_before_ms: int
    smtputf8: bool
    delay_warned: bool
    last_error: str
    def __init__(self, queue_id: _Optional[str] = ..., mail_from: _Optional[str] = ..., rcpt_to: _Optional[_Iterable[str]] = ..., spool_key: _Optional[str] = ..., size: _Optional[int] = ..., user_id: _Optional[str] = ..., submitted_at_ms: _Optional[int] = ..., attempt: _Optional[int] = ..., generation: _Optional[int] = ..., not_before_ms: _Optional[int] = ..., smtputf8: _Optional[bool] = ..., delay_warned: _Optional[bool] = ..., last_error: _Optional[str] = ...) -> None: ...

class IndexEvent(_message.Message):
    __slots__ = ("kind", "user_id", "message_id", "at_ms")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[IndexEvent.Kind]
        MESSAGE_ADDED: _ClassVar[IndexEvent.Kind]
        LABELS_CHANGED: _ClassVar[IndexEvent.Kind]
        MESSAGE_DELETED: _ClassVar[IndexEvent.Kind]
    KIND_UNSPECIFIED: IndexEvent.Kind
    MESSAGE_ADDED: IndexEvent.Kind
    LABELS_CHANGED: IndexEvent.Kind
    MESSAGE_DELETED: IndexEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    kind: IndexEvent.Kind
    user_id: str
    message_id: str
    at_ms: int
    def __init__(self, kind: _Optional[_Union[IndexEvent.Kind, str]] = ..., user_id: _Optional[str] = ..., message_id: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("topic", "partition", "offset", "key", "value", "reason", "attempts", "failed_at_ms", "group")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    reason: str
    attempts: int
    failed_at_ms: int
    group: str
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., reason: _Optional[str] = ..., attempts: _Optional[int] = ..., failed_at_ms: _Optional[int] = ..., group: _Optional[str] = ...) -> None: ...

class Skeleton(_message.Message):
    __slots__ = ("segments", "size")
    class Segment(_message.Message):
        __slots__ = ("literal", "blob_key")
        LITERAL_FIELD_NUMBER: _ClassVar[int]
        BLOB_KEY_FIELD_NUMBER: _ClassVar[int]
        literal: bytes
        blob_key: str
        def __init__(self, literal: _Optional[bytes] = ..., blob_key: _Optional[str] = ...) -> None: ...
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[Skeleton.Segment]
    size: int
    def __init__(self, segments: _Optional[_Iterable[_Union[Skeleton.Segment, _Mapping]]] = ..., size: _Optional[int] = ...) -> None: ...
