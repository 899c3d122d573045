"""The MetadataStore port: domains, users, messages, labels, threads, blob links.

Everything is partitioned by user: every message call names the user, and an
adapter must never return a message of another user, so a foreign id behaves
exactly like a missing one. User ids, addresses and domains are compared
case-insensitively (adapters store them lower-cased); labels and ids are
case-sensitive.
"""
from __future__ import annotations

import abc
import asyncio
import re
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


@dataclass(slots=True)
class Draft:
    """A message being written. `version` counts the writes (1 after the
    create), so a device that edits an old copy is refused instead of
    overwriting the newer one."""
    user_id: str
    draft_id: str
    version: int = 0
    updated_at_ms: int = 0
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    subject: str = ""
    body: str = ""                 # text/plain
    reply_to_id: str = ""          # message_id (ours) it answers, for threading


# Where an outgoing message stands (OutboundEntry.state).
OUTBOUND_QUEUED, OUTBOUND_DEFERRED, OUTBOUND_HELD = "queued", "deferred", "held"


@dataclass(slots=True)
class OutboundEntry:
    """One message in the outbound queue, like a Postfix queue file: the queue
    admin commands read and change it, and a delivery worker acts on a queue
    record only while its generation is the entry's. Every reschedule (a
    deferral, `queue retry`, `queue release`) bumps the generation, so older
    records still travelling through the delay tiers are recognised as stale."""
    queue_id: str
    generation: int
    state: str                     # OUTBOUND_QUEUED, OUTBOUND_DEFERRED or OUTBOUND_HELD
    envelope: bytes                # the latest events_pb2.OutboundEnvelope, serialized
    next_attempt_ms: int = 0
    last_error: str = ""
    updated_at_ms: int = 0


@dataclass(slots=True)
class SpamVerdict:
    """What the spam stage decided for one user's copy of a message, kept so
    the user's later move into or out of SPAM can train the classifier on the
    same features without reparsing the message."""
    user_id: str
    message_id: str
    score: float
    spam: bool
    tests: list[str] = field(default_factory=list)     # rules that fired, "NAME=points"
    features: list[int] = field(default_factory=list)  # hashed classifier features
    trained_as: str = ""           # "spam" or "ham" once feedback trained on it


# Where a blob's deletion by the garbage collector stands (BlobDeletion.state).
DELETION_PENDING, DELETION_DONE = "pending", "done"


@dataclass(slots=True)
class BlobDeletion:
    """A collector's claim on a blob it is deleting, then the tombstone of
    the deletion; see mailyard/store/gc/__init__.py for the protocol."""
    key: str
    state: str                     # DELETION_PENDING or DELETION_DONE
    at_ms: int


# How long `mailyard trace` can look back (Cassandra: the tables' TTL).
TRACE_RETENTION_MS = 30 * 86_400_000


@dataclass(slots=True)
class TraceEvent:
    """One step of a message's life, for `mailyard trace`."""
    queue_id: str
    at_ms: int
    step: str                 # accepted, authenticated, queued, delivered, indexed, attempt, ...
    key: str = ""             # tells events of one step apart: a recipient, an attempt number
    detail: dict[str, str] = field(default_factory=dict)


# What a change-log entry says happened to a message.
CHANGE_ADDED, CHANGE_LABELS, CHANGE_DELETED = "added", "labels", "deleted"


@dataclass(slots=True)
class Change:
    """One entry of a user's change log: `seq` grows by one per change of that
    user's mailbox and is written in the same transaction as the change."""
    seq: int
    kind: str                      # CHANGE_ADDED, CHANGE_LABELS or CHANGE_DELETED
    message_id: str
    labels: list[str] = field(default_factory=list)  # as they are after the change
    at_ms: int = 0


_SUBJECT_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|tr|antw)\s*(?:\[\d+\])?\s*:\s*)+",
                             re.IGNORECASE)


def thread_subject(subject: str) -> tuple[str, bool]:
    """The subject as threading compares it (Re:/Fwd: prefixes, case and runs
    of spaces ignored) and whether a reply or forward prefix was there."""
    stripped = _SUBJECT_PREFIX.sub("", subject)
    return " ".join(stripped.lower().split()), stripped != subject


class ChangeSignal:
    """Wakes this process's watchers when a user's mailbox changed here.
    Adapters call `notify` after the change is durable; other processes'
    changes are found by the watchers' bounded poll of the change log."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def subscribe(self, user_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(user_id.lower(), set()).add(event)
        return event

    def unsubscribe(self, user_id: str, event: asyncio.Event) -> None:
        events = self._events.get(user_id.lower())
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[user_id.lower()]

    def notify(self, user_id: str) -> None:
        for event in self._events.get(user_id.lower(), ()):
            event.set()


# A position in a newest-first listing: (received_at_ms, message_id) of the last
# message seen; the next page starts strictly after it.
Cursor = tuple[int, str]


class MetadataStore(abc.ABC):
    @property
    def changes(self) -> ChangeSignal:
        """In-process wake-ups for change-log readers (see ChangeSignal)."""
        signal = self.__dict__.get("_change_signal")
        if signal is None:
            signal = self.__dict__["_change_signal"] = ChangeSignal()
        return signal

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
    async def delete_messages(self, user_id: str, message_ids: list[str]) -> list[MessageRecord]:
        """Deletes the user's messages among `message_ids` for good: the record,
        its listings and its blob links (the blobs themselves are left to a
        garbage collector, which frees those no owner links any more). Returns
        the deleted records once each in the given order; other ids are skipped."""

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

    @abc.abstractmethod
    async def list_thread(self, user_id: str, thread_id: str) -> list[MessageRecord]:
        """The user's messages of one thread, oldest first (received_at_ms, then
        message_id); empty for a thread that is not the user's."""

    @abc.abstractmethod
    async def find_thread_by_subject(self, user_id: str, subject: str,
                                     since_ms: int) -> str | None:
        """The thread of the user's latest message whose `thread_subject` equals
        that of `subject` and which arrived at or after `since_ms`, if any."""

    # --- user labels ---------------------------------------------------
    @abc.abstractmethod
    async def create_label(self, user_id: str, name: str) -> bool:
        """Adds a user label; False when the user already has it. Names are
        validated by the caller (case-sensitive, system names excluded)."""

    @abc.abstractmethod
    async def list_labels(self, user_id: str) -> list[str]:
        """The user's own labels, sorted."""

    @abc.abstractmethod
    async def rename_label(self, user_id: str, old: str, new: str) -> list[str]:
        """Renames a user label, on every message carrying it too, and returns
        those messages' ids. Raises NotFound when the user has no label `old`
        and AlreadyExists when they have `new`."""

    @abc.abstractmethod
    async def delete_label(self, user_id: str, name: str) -> list[str]:
        """Deletes a user label and removes it from every message; returns
        those messages' ids. Raises NotFound when the user has no such label."""

    # --- drafts --------------------------------------------------------
    @abc.abstractmethod
    async def put_draft(self, draft: Draft, expected_version: int) -> Draft:
        """Writes a draft and returns it as stored, with version
        `expected_version + 1` and updated_at_ms as given. `expected_version`
        0 creates it (AlreadyExists if the id is taken); otherwise the stored
        version must equal it: VersionConflict if not, NotFound if there is no
        such draft of the user. Durable and readable when it returns."""

    @abc.abstractmethod
    async def get_draft(self, user_id: str, draft_id: str) -> Draft | None:
        ...

    @abc.abstractmethod
    async def list_drafts(self, user_id: str, limit: int,
                          after: Cursor | None = None) -> list[Draft]:
        """Most recently updated first (updated_at_ms, then draft_id, both
        descending), starting strictly after `after`."""

    @abc.abstractmethod
    async def delete_draft(self, user_id: str, draft_id: str, expected_version: int = 0) -> bool:
        """Deletes the draft; False when the user has no such draft. With a
        non-zero `expected_version` the stored one must match (VersionConflict)."""

    # --- change log ----------------------------------------------------
    @abc.abstractmethod
    async def list_changes(self, user_id: str, after: int, limit: int) -> list[Change]:
        """The user's changes with seq > `after`, oldest first. put_message (a
        new message), modify_labels (labels that changed), delete_messages,
        rename_label and delete_label append them in their own transaction."""

    @abc.abstractmethod
    async def last_change(self, user_id: str) -> int:
        """The seq of the user's latest change, 0 when there is none."""

    # --- outbound queue ------------------------------------------------
    @abc.abstractmethod
    async def put_outbound(self, entry: OutboundEntry, expected_generation: int = -1) -> bool:
        """Writes the entry. With `expected_generation` -1 it is an upsert;
        otherwise it is written only when a stored entry has that generation
        (compare-and-set), and False says another writer got there first or the
        entry was deleted. Durable when it returns."""

    @abc.abstractmethod
    async def get_outbound(self, queue_id: str) -> OutboundEntry | None:
        ...

    @abc.abstractmethod
    async def list_outbound(self, limit: int, after: str = "") -> list[OutboundEntry]:
        """Entries in queue_id order, starting strictly after `after`. For the
        admin commands: it may read every partition, never on a hot path."""

    @abc.abstractmethod
    async def delete_outbound(self, queue_id: str, expected_generation: int = -1) -> bool:
        """Deletes the entry (only at that generation unless -1); False when
        there was none to delete."""

    # --- spam filtering ------------------------------------------------
    @abc.abstractmethod
    async def spam_weights(self, scope: str, features: list[int]) -> dict[int, float]:
        """The classifier weights of `scope` ("global" or a user's scope) for
        these features; a feature never trained is absent (weight 0)."""

    @abc.abstractmethod
    async def add_spam_weights(self, scope: str, deltas: dict[int, float]) -> None:
        """Adds each delta to its feature's weight atomically, so concurrent
        learners of one scope lose no step (a retried add may apply twice,
        which an online learner tolerates). Precision: 1e-6."""

    @abc.abstractmethod
    async def put_spam_verdict(self, verdict: SpamVerdict) -> None:
        """Creates or replaces the verdict of (user_id, message_id)."""

    @abc.abstractmethod
    async def get_spam_verdict(self, user_id: str, message_id: str) -> SpamVerdict | None:
        ...

    @abc.abstractmethod
    async def set_sender_blocked(self, entry: str, blocked: bool) -> bool:
        """Adds (or removes) a blocklist entry: an address or a domain, lower-cased.
        Returns whether that changed anything."""

    @abc.abstractmethod
    async def blocked_senders(self, candidates: list[str]) -> list[str]:
        """The candidates that are blocklist entries, in the given order."""

    @abc.abstractmethod
    async def list_blocked_senders(self, limit: int, after: str = "") -> list[str]:
        """Entries in sorted order, strictly after `after` (to rebuild a filter)."""

    # --- message trace -------------------------------------------------
    @abc.abstractmethod
    async def add_trace(self, events: list[TraceEvent], refs: list[str] = ()) -> None:
        """Records steps; (queue_id, step, key) is the identity, so a replayed
        step replaces its first record. `refs` are other ids the events' queue
        ids are known by (a Message-ID, an API message id), for find_trace."""

    @abc.abstractmethod
    async def get_trace(self, queue_id: str) -> list[TraceEvent]:
        """The steps of `queue_id`, oldest first (ties: step, key)."""

    @abc.abstractmethod
    async def find_trace(self, ref: str) -> list[str]:
        """The queue ids `ref` was recorded for by add_trace, sorted."""

    # --- blob links ----------------------------------------------------
    @abc.abstractmethod
    async def link_blobs(self, owner: str, keys: list[str]) -> None:
        """Records that `owner` (e.g. "user/message_id") references these blobs;
        idempotent, so garbage collection knows what is still in use."""

    @abc.abstractmethod
    async def blob_owners(self, key: str) -> list[str]:
        """Every owner linked to `key`, sorted."""

    @abc.abstractmethod
    async def unlink_blobs(self, owner: str, keys: list[str]) -> None:
        """Drops `owner`'s links to these blobs (missing ones are skipped).
        delete_messages drops a message's links itself, and delete_outbound
        those of owner `outbound/<queue_id>`."""

    # --- blob deletions (the garbage collector's protocol, store/gc) ---
    @abc.abstractmethod
    async def claim_blob_deletion(self, key: str, at_ms: int) -> bool:
        """Records that a collector is about to delete `key` (state
        DELETION_PENDING at `at_ms`) unless any record of `key` exists;
        True when this call created it. Atomic across processes."""

    @abc.abstractmethod
    async def end_blob_deletion(self, key: str, deleted: bool, at_ms: int) -> None:
        """Ends a claim: `deleted` turns it into a DELETION_DONE tombstone at
        `at_ms` (writers that linked meanwhile restore the blob); otherwise
        the record goes."""

    @abc.abstractmethod
    async def blob_deletions(self, keys: list[str]) -> dict[str, BlobDeletion]:
        """The deletion records of these keys, those that have one."""

    @abc.abstractmethod
    async def list_blob_deletions(self, limit: int, after: str = "") -> list[BlobDeletion]:
        """Every deletion record in key order, strictly after `after`."""

    @abc.abstractmethod
    async def forget_blob_deletion(self, key: str) -> None:
        """Drops a DELETION_DONE tombstone (a pending claim stays)."""

    # --- storage usage (quotas) ----------------------------------------
    @abc.abstractmethod
    async def charge_blobs(self, user_id: str, sizes: dict[str, int]) -> None:
        """Counts these blobs (key -> bytes) in the user's usage, each once
        however many of the user's messages link it (idempotent). Call after
        linking them to a message `user_id/...`; delete_messages uncharges a
        blob once no message of the user links it any more."""

    @abc.abstractmethod
    async def storage_usage(self, user_id: str) -> int:
        """Bytes charged to the user: the sum over the distinct blobs charged."""

    @abc.abstractmethod
    async def close(self) -> None:
        ...
