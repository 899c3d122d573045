"""The MetadataStore port: domains, users, messages, labels, threads, blob links.

Everything is partitioned by user: every message call names the user, and an
adapter must never return a message of another user, so a foreign id behaves
exactly like a missing one. User ids, addresses and domains are compared
case-insensitively (adapters store them lower-cased); labels and ids are
case-sensitive.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

# Gmail's system labels. User labels are any other validated name.
SYSTEM_LABELS = frozenset(
    {"INBOX", "SENT", "DRAFT", "SPAM", "TRASH", "STARRED", "UNREAD", "IMPORTANT"})


@dataclass(slots=True)
class User:
    address: str              # lower-cased, the user id
    password_hash: str = ""   # argon2; empty means no password login
    created_at_ms: int = 0


@dataclass(slots=True)
class AttachmentRef:
    id: str                   # stable within the message ("1", "2", ...)
    filename: str
    content_type: str
    size: int                 # decoded bytes
    sha256: str               # hex, of the decoded bytes
    blob_key: str             # the part's stored (still transfer-encoded) body
    transfer_encoding: str    # how to decode blob_key's bytes: base64, quoted-printable, 7bit, ...


@dataclass(slots=True)
class MessageRecord:
    user_id: str
    message_id: str           # deterministic: replaying a delivery yields the same id
    thread_id: str
    received_at_ms: int
    skeleton_key: str         # BlobStore key of the Skeleton that rebuilds the raw bytes
    size: int                 # raw bytes
    rfc822_message_id: str = ""
    references: list[str] = field(default_factory=list)  # Message-IDs it answers
    sender: str = ""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    subject: str = ""
    snippet: str = ""
    labels: set[str] = field(default_factory=set)
    has_attachments: bool = False
    attachments: list[AttachmentRef] = field(default_factory=list)
    malformed: bool = False
    queue_id: str = ""

    @property
    def unread(self) -> bool:
        return "UNREAD" in self.labels


# A position in a newest-first listing: (received_at_ms, message_id) of the last
# message seen; the next page starts strictly after it.
Cursor = tuple[int, str]


class MetadataStore(abc.ABC):
    async def start(self) -> None:
        """Connects or creates what the adapter needs; called once before use."""

    # --- domains -------------------------------------------------------
    @abc.abstractmethod
    async def add_domain(self, domain: str) -> None:
        """Adds a local domain (idempotent)."""

    @abc.abstractmethod
    async def list_domains(self) -> list[str]:
        ...

    @abc.abstractmethod
    async def has_domain(self, domain: str) -> bool:
        ...

    # --- users ---------------------------------------------------------
    @abc.abstractmethod
    async def put_user(self, user: User) -> None:
        """Creates or replaces a user (a password change is a put)."""

    @abc.abstractmethod
    async def get_user(self, address: str) -> User | None:
        ...

    @abc.abstractmethod
    async def list_users(self) -> list[User]:
        ...

    # --- messages ------------------------------------------------------
    @abc.abstractmethod
    async def put_message(self, record: MessageRecord) -> bool:
        """Stores a message if (user_id, message_id) is new and returns True;
        returns False and changes nothing when it already exists, so a replayed
        delivery never resets labels the user has changed since."""

    @abc.abstractmethod
    async def get_message(self, user_id: str, message_id: str) -> MessageRecord | None:
        ...

    @abc.abstractmethod
    async def list_messages(self, user_id: str, label: str, limit: int,
                            after: Cursor | None = None) -> list[MessageRecord]:
        """Messages carrying `label`, newest first (received_at_ms, then
        message_id, both descending), starting strictly after `after`."""

    @abc.abstractmethod
    async def list_all_messages(self, user_id: str, limit: int,
                                after: Cursor | None = None) -> list[MessageRecord]:
        """Every message of the user whatever its labels (an archived message
        has none), in the order of list_messages; for rebuilding a search index."""

    @abc.abstractmethod
    async def count_messages(self, user_id: str, label: str, unread_only: bool = False) -> int:
        ...

    @abc.abstractmethod
    async def modify_labels(self, user_id: str, message_ids: list[str],
                            add: set[str], remove: set[str]) -> list[MessageRecord]:
        """Applies the change to the user's messages among `message_ids` and
        returns them as they are now, once each in the given order; ids that are
        not the user's are skipped. A label in both `add` and `remove` is removed."""

    @abc.abstractmethod
    async def find_thread(self, user_id: str, rfc822_ids: list[str]) -> str | None:
        """The thread of the user's message whose Message-ID is one of these, if any;
        when several match, the first of `rfc822_ids` that matches wins. The first
        message stored with a given Message-ID decides its thread."""

    # --- blob links ----------------------------------------------------
    @abc.abstractmethod
    async def link_blobs(self, owner: str, keys: list[str]) -> None:
        """Records that `owner` (e.g. "user/message_id") references these blobs;
        idempotent, so garbage collection knows what is still in use."""

    @abc.abstractmethod
    async def blob_owners(self, key: str) -> list[str]:
        """Every owner linked to `key`, sorted."""

    @abc.abstractmethod
    async def close(self) -> None:
        ...
