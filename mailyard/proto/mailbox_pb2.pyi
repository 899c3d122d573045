from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FULL: _ClassVar[Format]
    METADATA: _ClassVar[Format]
    RAW: _ClassVar[Format]
FULL: Format
METADATA: Format
RAW: Format

class GetUsageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Usage(_message.Message):
    __slots__ = ("used_bytes", "limit_bytes")
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    used_bytes: int
    limit_bytes: int
    def __init__(self, used_bytes: _Optional[int] = ..., limit_bytes: _Optional[int] = ...) -> None: ...

class MessageSummary(_message.Message):
    __slots__ = ("id", "thread_id", "to", "subject", "snippet", "received_at", "labels", "unread", "has_attachments", "size")
    ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    HAS_ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    id: str
    thread_id: str
    to: _containers.RepeatedScalarFieldContainer[str]
    subject: str
    snippet: str
    received_at: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    unread: bool
    has_attachments: bool
    size: int
    def __init__(self, id: _Optional[str] = ..., thread_id: _Optional[str] = ..., to: _Optional[_Iterable[str]] = ..., subject: _Optional[str] = ..., snippet: _Optional[str] = ..., received_at: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., unread: _Optional[bool] = ..., has_attachments: _Optional[bool] = ..., size: _Optional[int] = ..., **kwargs) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("label", "page_size", "page_token")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    label: str
    page_size: int
    page_token: str
    def __init__(self, label: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token", "unread_count")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UNREAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[MessageSummary]
    next_page_token: str
    unread_count: int
    def __init__(self, messages: _Optional[_Iterable[_Union[MessageSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., unread_count: _Optional[int] = ...) -> None: ...

class GetMessageRequest(_message.Message):
    __slots__ = ("id", "format", "allow_remote_images")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ALLOW_REMOTE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    id: str
    format: Format
    allow_remote_images: bool
    def __init__(self, id: _Optional[str] = ..., format: _Optional[_Union[Format, str]] = ..., allow_remote_images: _Optional[bool] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("id", "filename", "content_type", "size", "sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    def __init__(self, id: _Optional[str] = ..., filename: _Optional[str] = ..., content_type: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("summary", "headers", "text_body", "html_body", "attachments", "raw", "malformed", "cc", "rfc822_message_id", "remote_content_blocked")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TEXT_BODY_FIELD_NUMBER: _ClassVar[int]
    HTML_BODY_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_FIELD_NUMBER: _ClassVar[int]
    CC_FIELD_NUMBER: _ClassVar[int]
    RFC822_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CONTENT_BLOCKED_FIELD_NUMBER: _ClassVar[int]
    summary: MessageSummary
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    text_body: str
    html_body: str
    attachments: _containers.RepeatedCompositeFieldContainer[Attachment]
    raw: bytes
    malformed: bool
    cc: _containers.RepeatedScalarFieldContainer[str]
    rfc822_message_id: str
    remote_content_blocked: bool
    def __init__(self, summary: _Optional[_Union[MessageSummary, _Mapping]] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., text_body: _Optional[str] = ..., html_body: _Optional[str] = ..., attachments: _Optional[_Iterable[_Union[Attachment, _Mapping]]] = ..., raw: _Optional[bytes] = ..., malformed: _Optional[bool] = ..., cc: _Optional[_Iterable[str]] = ..., rfc822_message_id: _Optional[str] = ..., remote_content_blocked: _Optional[bool] = ...) -> None: ...

class GetAttachmentRequest(_message.Message):
    __slots__ = ("message_id", "attachment_id")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    attachment_id: str
    def __init__(self, message_id: _Optional[str] = ..., attachment_id: _Optional[str] = ...) -> None: ...

class AttachmentChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ModifyLabelsRequest(_message.Message):
    __slots__ = ("ids", "add_labels", "remove_labels")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ADD_LABELS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_LABELS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    add_labels: _containers.RepeatedScalarFieldContainer[str]
    remove_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., add_labels: _Optional[_Iterable[str]] = ..., remove_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ModifyLabelsResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[MessageSummary]
    def __init__(self, messages: _Optional[_Iterable[_Union[MessageSummary, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("query", "page_size", "page_token")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    query: str
    page_size: int
    page_token: str
    def __init__(self, query: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[MessageSummary]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[MessageSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MessageIdsRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteMessagesResponse(_message.Message):
    __slots__ = ("deleted_ids",)
    DELETED_IDS_FIELD_NUMBER: _ClassVar[int]
    deleted_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("name", "type", "messages_total", "messages_unread")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        USER: _ClassVar[Label.Type]
        SYSTEM: _ClassVar[Label.Type]
    USER: Label.Type
    SYSTEM: Label.Type
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_UNREAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: Label.Type
    messages_total: int
    messages_unread: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[Label.Type, str]] = ..., messages_total: _Optional[int] = ..., messages_unread: _Optional[int] = ...) -> None: ...

class ListLabelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLabelsResponse(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class CreateLabelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RenameLabelRequest(_message.Message):
    __slots__ = ("name", "new_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    new_name: str
    def __init__(self, name: _Optional[str] = ..., new_name: _Optional[str] = ...) -> None: ...

class DeleteLabelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteLabelResponse(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Thread(_message.Message):
    __slots__ = ("id", "messages")
    ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    id: str
    messages: _containers.RepeatedCompositeFieldContainer[MessageSummary]
    def __init__(self, id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[MessageSummary, _Mapping]]] = ...) -> None: ...

class GetThreadRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ThreadSummary(_message.Message):
    __slots__ = ("id", "latest", "message_count", "unread")
    ID_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    latest: MessageSummary
    message_count: int
    unread: bool
    def __init__(self, id: _Optional[str] = ..., latest: _Optional[_Union[MessageSummary, _Mapping]] = ..., message_count: _Optional[int] = ..., unread: _Optional[bool] = ...) -> None: ...

class ListThreadsRequest(_message.Message):
    __slots__ = ("label", "page_size", "page_token")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    label: str
    page_size: int
    page_token: str
    def __init__(self, label: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListThreadsResponse(_message.Message):
    __slots__ = ("threads", "next_page_token")
    THREADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    threads: _containers.RepeatedCompositeFieldContainer[ThreadSummary]
    next_page_token: str
    def __init__(self, threads: _Optional[_Iterable[_Union[ThreadSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DraftContent(_message.Message):
    __slots__ = ("to", "cc", "bcc", "subject", "body", "reply_to_id")
    TO_FIELD_NUMBER: _ClassVar[int]
    CC_FIELD_NUMBER: _ClassVar[int]
    BCC_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_ID_FIELD_NUMBER: _ClassVar[int]
    to: _containers.RepeatedScalarFieldContainer[str]
    cc: _containers.RepeatedScalarFieldContainer[str]
    bcc: _containers.RepeatedScalarFieldContainer[str]
    subject: str
    body: str
    reply_to_id: str
    def __init__(self, to: _Optional[_Iterable[str]] = ..., cc: _Optional[_Iterable[str]] = ..., bcc: _Optional[_Iterable[str]] = ..., subject: _Optional[str] = ..., body: _Optional[str] = ..., reply_to_id: _Optional[str] = ...) -> None: ...

class Draft(_message.Message):
    __slots__ = ("id", "version", "updated_at", "content")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    updated_at: int
    content: DraftContent
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., updated_at: _Optional[int] = ..., content: _Optional[_Union[DraftContent, _Mapping]] = ...) -> None: ...

class CreateDraftRequest(_message.Message):
    __slots__ = ("content",)
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content: DraftContent
    def __init__(self, content: _Optional[_Union[DraftContent, _Mapping]] = ...) -> None: ...

class GetDraftRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UpdateDraftRequest(_message.Message):
    __slots__ = ("id", "version", "content")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    content: DraftContent
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., content: _Optional[_Union[DraftContent, _Mapping]] = ...) -> None: ...

class ListDraftsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDraftsResponse(_message.Message):
    __slots__ = ("drafts", "next_page_token")
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    drafts: _containers.RepeatedCompositeFieldContainer[Draft]
    next_page_token: str
    def __init__(self, drafts: _Optional[_Iterable[_Union[Draft, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDraftRequest(_message.Message):
    __slots__ = ("id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteDraftResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SendDraftRequest(_message.Message):
    __slots__ = ("id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("content", "html", "attachments", "raw")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    content: DraftContent
    html: str
    attachments: _containers.RepeatedCompositeFieldContainer[OutgoingAttachment]
    raw: bytes
    def __init__(self, content: _Optional[_Union[DraftContent, _Mapping]] = ..., html: _Optional[str] = ..., attachments: _Optional[_Iterable[_Union[OutgoingAttachment, _Mapping]]] = ..., raw: _Optional[bytes] = ...) -> None: ...

class OutgoingAttachment(_message.Message):
    __slots__ = ("filename", "content_type", "data")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    filename: str
    content_type: str
    data: bytes
    def __init__(self, filename: _Optional[str] = ..., content_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("sent", "queue_id")
    SENT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    sent: MessageSummary
    queue_id: str
    def __init__(self, sent: _Optional[_Union[MessageSummary, _Mapping]] = ..., queue_id: _Optional[str] = ...) -> None: ...

class WatchMailboxRequest(_message.Message):
    __slots__ = ("after",)
    AFTER_FIELD_NUMBER: _ClassVar[int]
    after: int
    def __init__(self, after: _Optional[int] = ...) -> None: ...

class MailboxChange(_message.Message):
    __slots__ = ("position", "kind", "message_id", "labels", "at", "message")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SYNC: _ClassVar[MailboxChange.Kind]
        MESSAGE_ADDED: _ClassVar[MailboxChange.Kind]
        LABELS_CHANGED: _ClassVar[MailboxChange.Kind]
        MESSAGE_DELETED: _ClassVar[MailboxChange.Kind]
    SYNC: MailboxChange.Kind
    MESSAGE_ADDED: MailboxChange.Kind
    LABELS_CHANGED: MailboxChange.Kind
    MESSAGE_DELETED: MailboxChange.Kind
    POSITION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    position: int
    kind: MailboxChange.Kind
    message_id: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    at: int
    message: MessageSummary
    def __init__(self, position: _Optional[int] = ..., kind: _Optional[_Union[MailboxChange.Kind, str]] = ..., message_id: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., at: _Optional[int] = ..., message: _Optional[_Union[MessageSummary, _Mapping]] = ...) -> None: ...

class ListChangesRequest(_message.Message):
    __slots__ = ("after", "page_size")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    after: int
    page_size: int
    def __init__(self, after: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListChangesResponse(_message.Message):
    __slots__ = ("changes", "position")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[MailboxChange]
    position: int
    def __init__(self, changes: _Optional[_Iterable[_Union[MailboxChange, _Mapping]]] = ..., position: _Optional[int] = ...) -> None: ...
