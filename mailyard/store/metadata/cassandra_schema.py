"""The Cassandra keyspace of the MetadataStore, as CQL (`mailyard schema apply`).

Every table is partitioned by user, so each call of the port reads or writes
a handful of known partitions and nothing scans across partitions on a hot
path (only the operator's `user list` and `domain list` scan small tables).

Listings. `messages_by_label ((user_id, label, bucket, shard), received_at_ms
DESC, message_id DESC)` holds one key-only row per (message, label); a page is
a range read of the newest partitions, then point reads of `messages
((user_id, message_id))`, the full record. `bucket` is the start of the
message's TIME_BUCKET_MS window, so a partition holds one month of one label;
`shard` splits a month of a very large mailbox: a bucket's first SHARD_ROWS
arrivals go to shard 0, the next to shard 1, and so on, and a listing merges
the shards of a bucket. `label_partitions ((user_id, label), bucket DESC,
shard)` lists the partitions that exist, so a reader never guesses at empty
months. ALL_MAIL, a label no message can carry, lists every message
(list_all_messages).

The change log and the write path. Every change to a user's messages is an
entry of `changes ((user_id, bucket), seq)`, claimed by a conditional batch
(`INSERT ... IF NOT EXISTS` on seq = last + 1, so seqs are gapless across
processes) that holds everything needed to apply it: the record, the label
sets before and after, the new absolute counts. Applying writes every table
with `USING TIMESTAMP seq`, so applying an entry twice, late, or after a newer
one changes nothing: the newest seq wins each cell. Only the last claim of a
user can be unapplied (a writer applies it before claiming the next), and the
next writer or change-log reader of that user applies it, so a crash between
claim and apply loses nothing. `label_counts` holds each label's total and
unread count as absolute values computed under that order, so counting is one
read. The log's partitions hold LOG_BUCKET_SIZE seqs each; `change_heads`
remembers the newest.

Spam filtering. `spam_weights ((scope), feature)` holds the classifier's
weights as counters in millionths, so learners in many processes add their
steps atomically; a scope is "global" or one user's. `spam_verdicts` keeps
each delivered copy's verdict and features for later training.
`blocked_senders ((bucket), entry)` spreads the sender blocklist over
BLOCKLIST_BUCKETS partitions, each sorted, so a filter rebuild pages through
them without a table scan.

Drafts, user labels and outbound-queue entries are single-partition rows
guarded by lightweight transactions (a draft's version, a label's uniqueness,
an outbound entry's generation); `op_id` lets a retried conditional write
recognize that its first attempt had succeeded. The outbound queue is one
partition per queue id; only the admin's listing scans them.
"""
from __future__ import annotations

TIME_BUCKET_MS = 30 * 86_400_000   # one listing partition per label and month
SHARD_ROWS = 100_000               # arrivals per bucket before a new shard opens
LOG_BUCKET_SIZE = 50_000           # change-log entries per partition
BLOCKLIST_BUCKETS = 16             # partitions of the sender blocklist
SPAM_WEIGHT_UNIT = 1_000_000       # counters hold weights in millionths
ALL_MAIL = "\x00all"               # the listing of every message; labels have no control characters

TABLES: dict[str, str] = {
    "domains": """
        CREATE TABLE IF NOT EXISTS {ks}.domains (
            domain text PRIMARY KEY)""",
    "users": """
        CREATE TABLE IF NOT EXISTS {ks}.users (
            address text PRIMARY KEY,
            password_hash text,
            created_at_ms bigint)""",
    "messages": """
        CREATE TABLE IF NOT EXISTS {ks}.messages (
            user_id text, message_id text,
            thread_id text, received_at_ms bigint, skeleton_key text, size bigint,
            rfc822_message_id text, refs list<text>, sender text,
            to_addrs list<text>, cc_addrs list<text>, subject text, snippet text,
            labels set<text>, has_attachments boolean, attachments text,
            malformed boolean, queue_id text,
            bucket bigint, shard int,
            PRIMARY KEY ((user_id, message_id)))""",
    "messages_by_label": """
        CREATE TABLE IF NOT EXISTS {ks}.messages_by_label (
            user_id text, label text, bucket bigint, shard int,
            received_at_ms bigint, message_id text,
            PRIMARY KEY ((user_id, label, bucket, shard), received_at_ms, message_id))
        WITH CLUSTERING ORDER BY (received_at_ms DESC, message_id DESC)""",
    "label_partitions": """
        CREATE TABLE IF NOT EXISTS {ks}.label_partitions (
            user_id text, label text, bucket bigint, shard int,
            PRIMARY KEY ((user_id, label), bucket, shard))
        WITH CLUSTERING ORDER BY (bucket DESC, shard ASC)""",
    "bucket_arrivals": """
        CREATE TABLE IF NOT EXISTS {ks}.bucket_arrivals (
            user_id text, bucket bigint, arrivals bigint,
            PRIMARY KEY ((user_id), bucket))""",
    "label_counts": """
        CREATE TABLE IF NOT EXISTS {ks}.label_counts (
            user_id text, label text, total bigint, unread bigint,
            PRIMARY KEY ((user_id), label))""",
    "messages_by_thread": """
        CREATE TABLE IF NOT EXISTS {ks}.messages_by_thread (
            user_id text, thread_id text, received_at_ms bigint, message_id text,
            PRIMARY KEY ((user_id, thread_id), received_at_ms, message_id))""",
    "thread_ids": """
        CREATE TABLE IF NOT EXISTS {ks}.thread_ids (
            user_id text, rfc822_message_id text, thread_id text,
            PRIMARY KEY ((user_id, rfc822_message_id)))""",
    "thread_subjects": """
        CREATE TABLE IF NOT EXISTS {ks}.thread_subjects (
            user_id text, subject_key text, thread_id text, last_at_ms bigint,
            PRIMARY KEY ((user_id, subject_key)))""",
    "user_labels": """
        CREATE TABLE IF NOT EXISTS {ks}.user_labels (
            user_id text, name text, op_id uuid, renamed_from text,
            PRIMARY KEY ((user_id), name))""",
    "drafts": """
        CREATE TABLE IF NOT EXISTS {ks}.drafts (
            user_id text, draft_id text, version bigint, updated_at_ms bigint,
            content text, op_id uuid,
            PRIMARY KEY ((user_id), draft_id))""",
    "changes": """
        CREATE TABLE IF NOT EXISTS {ks}.changes (
            user_id text, bucket bigint, seq bigint,
            applied_through bigint STATIC,
            kind text, message_id text, labels list<text>, at_ms bigint,
            claim uuid, effects text,
            PRIMARY KEY ((user_id, bucket), seq))""",
    "change_heads": """
        CREATE TABLE IF NOT EXISTS {ks}.change_heads (
            user_id text PRIMARY KEY, bucket bigint)""",
    "outbound": """
        CREATE TABLE IF NOT EXISTS {ks}.outbound (
            queue_id text PRIMARY KEY, generation bigint, state text, envelope blob,
            next_attempt_ms bigint, last_error text, updated_at_ms bigint, op_id uuid)""",
    # `mailyard trace`: each message's steps, kept 30 days (TRACE_RETENTION_MS).
    "trace_events": """
        CREATE TABLE IF NOT EXISTS {ks}.trace_events (
            queue_id text, step text, event_key text, at_ms bigint, detail text,
            PRIMARY KEY ((queue_id), step, event_key))
        WITH default_time_to_live = 2592000""",
    "trace_refs": """
        CREATE TABLE IF NOT EXISTS {ks}.trace_refs (
            ref text, queue_id text,
            PRIMARY KEY ((ref), queue_id))
        WITH default_time_to_live = 2592000""",
    "blob_links": """
        CREATE TABLE IF NOT EXISTS {ks}.blob_links (
            blob_key text, owner text,
            PRIMARY KEY ((blob_key), owner))""",
    "blob_links_by_owner": """
        CREATE TABLE IF NOT EXISTS {ks}.blob_links_by_owner (
            owner text, blob_key text,
            PRIMARY KEY ((owner), blob_key))""",
    # The garbage collector's claims and tombstones (store/gc): a small table.
    "blob_deletions": """
        CREATE TABLE IF NOT EXISTS {ks}.blob_deletions (
            blob_key text PRIMARY KEY, state text, at_ms bigint)""",
    # The distinct blobs charged to each user's quota, with their sizes.
    "user_blobs": """
        CREATE TABLE IF NOT EXISTS {ks}.user_blobs (
            user_id text, blob_key text, size bigint,
            PRIMARY KEY ((user_id), blob_key))""",
    "spam_weights": """
        CREATE TABLE IF NOT EXISTS {ks}.spam_weights (
            scope text, feature int, weight counter,
            PRIMARY KEY ((scope), feature))""",
    "spam_verdicts": """
        CREATE TABLE IF NOT EXISTS {ks}.spam_verdicts (
            user_id text, message_id text, verdict text,
            PRIMARY KEY ((user_id, message_id)))""",
    "blocked_senders": """
        CREATE TABLE IF NOT EXISTS {ks}.blocked_senders (
            bucket int, entry text,
            PRIMARY KEY ((bucket), entry))""",
}


def keyspace_cql(keyspace: str, datacenter: str, replication_factor: int) -> str:
    return (f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
            f"{{'class': 'NetworkTopologyStrategy', '{datacenter}': {replication_factor}}}")


def table_cql(keyspace: str) -> dict[str, str]:
    """Each table's CREATE statement for `keyspace`, in creation order."""
    return {name: " ".join(cql.format(ks=keyspace).split()) for name, cql in TABLES.items()}
