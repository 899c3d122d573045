"""The typed configuration model and its loading from TOML.

Every setting has a default that runs on one machine with no servers. A file
only names what it changes; an unknown key or a value of the wrong type is
refused with the file, the line and the dotted key, like `postconf` would.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


@dataclass
class MxConfig:
    """The inbound MX (port 25 in production)."""
    listen: str = "127.0.0.1:2525"
    # Processes accepting SMTP on the listen address (SO_REUSEPORT), one per
    # core to use. In-process cache counters (rate limits, greylisting) are
    # then per process; a shared cache server keeps them exact.
    processes: int = 1
    max_message_size: int = 25 * MiB
    max_recipients: int = 100
    # How long one SMTP session may stay idle before we close it.
    idle_timeout: float = 300.0
    # Longest line in a message, CRLF not counted (RFC 5322 2.1.1: 998).
    max_line_length: int = 998
    # Largest header section, in octets; 552 5.3.4 past it.
    max_header_size: int = 256 * 1024
    # The SMTP smuggling sequences (<LF>.<LF>, <CR>.<CR><LF>, ...) are always
    # refused. When true, any bare <CR> or <LF> in DATA is too (RFC 5321 2.3.8);
    # off by default because malformed mail from broken clients is still mail.
    reject_bare_newlines: bool = False
    # Clients here skip the abuse controls (rate limits, DNSBL, greylisting),
    # like Postfix's mynetworks; sender authentication still applies to them.
    trusted_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])


@dataclass
class ListenerTlsConfig:
    """TLS on the mailbox API or the gateway ([mailbox.tls], [gateway.tls]);
    plaintext while cert_file is empty. See policy/tls.py."""
    cert_file: str = ""                # PEM chain, server certificate first
    key_file: str = ""
    # Mutual TLS for service-to-service calls: clients must present a
    # certificate signed by a CA in this file (bearer tokens still apply).
    client_ca_file: str = ""
    # Refuse to start without a certificate rather than serve plaintext.
    required: bool = False


@dataclass
class BackendTlsConfig:
    """TLS to a distributed backend ([kafka.tls], [redis.tls], ...). Kafka and
    Cassandra use it when `enabled`; Redis, S3 and OpenSearch/Elasticsearch
    when their URL says so (rediss://, https://). See policy/tls.py."""
    enabled: bool = False
    # CA certificates (PEM) the server's certificate must chain to; the
    # system's when empty.
    ca_file: str = ""
    # Check the server's certificate and host name; off only when set false.
    verify: bool = True
    # A client certificate, for servers that ask for one (mutual TLS).
    cert_file: str = ""
    key_file: str = ""


@dataclass
class MailboxConfig:
    """The gRPC mailbox API."""
    listen: str = "127.0.0.1:50051"
    tls: ListenerTlsConfig = field(default_factory=ListenerTlsConfig)
    max_page_size: int = 500
    attachment_chunk_size: int = 64 * 1024
    # Per-user API quota, in Gmail-like units per window (listing costs 5,
    # sending 100, ...: see store/mailbox/ratelimit.py); 0 turns it off.
    quota_units: int = 2500
    quota_window: float = 10.0
    # How often WatchMailbox looks for changes written by another process;
    # changes made in this process wake it at once.
    watch_poll_interval: float = 0.5


@dataclass
class AuthConfig:
    """Who may call the API: bearer JWTs from the local issuer or an external one."""
    issuer: str = "mailyard-local"
    audience: str = "mailyard"
    # External issuer: a JWKS document on disk or at a URL. When both are empty
    # the local issuer's key in the data directory verifies tokens.
    jwks_file: str = ""
    jwks_url: str = ""
    algorithms: list[str] = field(default_factory=lambda: ["EdDSA", "RS256", "ES256"])
    leeway_seconds: int = 30


@dataclass
class StorageConfig:
    """Which adapter serves each port."""
    queue: str = "sqlite"
    metadata: str = "sqlite"
    blobs: str = "fs"
    cache: str = "memory"
    search: str = "fts5"


@dataclass
class QueueConfig:
    partitions: int = 4
    # How often a waiting consumer looks for records published by another
    # process; records from this process wake it at once.
    poll_interval: float = 0.2
    # A consumer silent for this long loses its partitions to the others.
    member_ttl: float = 10.0
    # Records every consumer group has committed are kept this long, then
    # deleted (Kafka's log retention); long enough to replay a day's mistakes.
    retention_hours: float = 168.0


@dataclass
class DeliveryConfig:
    batch_size: int = 64
    # Records of a batch delivered at once; their writes share group commits.
    concurrency: int = 16
    # Attempts inside the worker before a message goes to mail.dlq.
    max_attempts: int = 5
    retry_backoff: float = 0.2
    # Leaf MIME bodies at least this large are stored as shared blobs.
    min_part_size: int = 1024
    inbox_cache_size: int = 50
    inbox_cache_ttl: float = 300.0
    # A reply whose client dropped References/In-Reply-To ("Re: subject")
    # joins the latest thread of that subject within this many seconds; 0: never.
    thread_subject_window: float = 7 * 86400.0


@dataclass
class LogConfig:
    level: str = "info"
    # Addresses in logs appear as a***@example.com unless turned off.
    mask_addresses: bool = True
    # One event per line: "logfmt" (key=value) or "json" (one object a line).
    format: str = "logfmt"


@dataclass
class MetricsConfig:
    """Prometheus /metrics of a process that runs no gateway (the gateway
    serves them on its own port). A process running one service listens on
    this port plus the service's place in `services`' default order (mx +0,
    delivery +1, mailbox +2, indexer +3, gateway +4, submission +5, outbound
    +6, ...); the extra MX processes of mx.processes on +100, +101, ..."""
    listen: str = "127.0.0.1:9464"
    # Seconds between the samples of queue lag and outbound queue the metrics
    # and the dashboard show (an hour of them is kept).
    sample_interval: float = 5.0


@dataclass
class DnsConfig:
    """The one resolver the MX uses for SPF, DKIM, DMARC, ARC and blocklists."""
    # A BIND zone file that answers every query instead of the network, for
    # offline evaluation (`mailyard authcheck`) and tests; empty: the system's.
    zone_file: str = ""
    timeout: float = 5.0
    cache_size: int = 10000
    # Answers are kept at most this long, and never past their own TTL.
    cache_ttl: float = 300.0


@dataclass
class AuthenticationConfig:
    """Sender authentication at the MX: SPF, DKIM, ARC, DMARC (RFC 7208, 6376, 8617, 7489)."""
    enabled: bool = True
    # The authserv-id of our Authentication-Results header (RFC 8601); the
    # hostname when empty. Incoming headers claiming it are removed.
    authserv_id: str = ""
    dkim_min_key_bits: int = 1024


@dataclass
class DmarcConfig:
    """What a DMARC failure does: `enforce` applies the sender's policy
    (reject: 550 5.7.1, quarantine: SPAM label), `quarantine` never rejects,
    `monitor` only records the result."""
    mode: str = "enforce"
    # Per author domain (or its organizational domain): {"example.org" = "monitor"}.
    overrides: dict[str, str] = field(default_factory=dict)


@dataclass
class TlsConfig:
    """STARTTLS on the MX. Without a certificate, a self-signed pair is made in
    the data directory on first start."""
    starttls: bool = True
    cert_file: str = ""
    key_file: str = ""
    min_version: str = "TLSv1.2"


@dataclass
class AntivirusConfig:
    """Malware scanning at the MX through ClamAV's daemon (INSTREAM), before 250.
    Set clamd's StreamMaxLength above mx.max_message_size."""
    enabled: bool = False
    # unix:/path (or a bare /path) for clamd's LocalSocket, HOST:PORT for TCPSocket.
    address: str = "unix:/run/clamav/clamd.ctl"
    timeout: float = 30.0             # for the whole message's verdict
    # reject: 554 5.7.1; quarantine: accept under SPAM, X-Virus-Status: Infected.
    on_infected: str = "reject"
    # tempfail: 451 4.7.0; accept: deliver with X-Virus-Status: Unscanned.
    on_failure: str = "tempfail"
    clean_ttl: float = 7 * 86400.0    # how long a part's clean verdict is remembered


@dataclass
class RateLimitConfig:
    """Per client IP, per window, through the Cache (shared when it is Redis)."""
    enabled: bool = True
    window: float = 60.0
    connections: int = 60             # 421 4.7.0 past it
    messages: int = 120               # 450 4.7.1 past it


@dataclass
class GreylistConfig:
    """Greylisting of unknown (client /24, sender, recipient) triples: 451 4.7.1
    on first sight, accepted on a retry after `delay`. Off by default: it
    delays first mail from every new correspondent."""
    enabled: bool = False
    delay: float = 300.0
    # A first try not retried within this long is forgotten.
    retry_window: float = 86400.0
    # A triple that passed is remembered this long.
    pass_ttl: float = 36 * 86400.0


@dataclass
class DnsblConfig:
    """DNS blocklists the client IP is looked up in (e.g. "zen.spamhaus.org",
    whose terms apply); none by default. A listed client gets 554 5.7.1."""
    zones: list[str] = field(default_factory=list)
    # Blocklists a listing in only adds spam points (DNSBL_LISTED): for lists
    # too eager to refuse on. Looked up at the end of DATA.
    score_zones: list[str] = field(default_factory=list)


@dataclass
class SpamConfig:
    """The delivery path's spam stage: rule points plus a classifier that
    learns from each user's moves into and out of SPAM. A copy scoring at
    least `required_score` is filed under SPAM instead of INBOX."""
    enabled: bool = True
    required_score: float = 5.0
    # Points the classifier adds at full confidence (spam) or takes away (ham);
    # an untrained classifier says 0.
    classifier_points: float = 10.0
    # The step of one training message: 1 moves that message's own log-odds
    # by up to 1; 5 learns from few examples (about 100 of each class).
    learning_rate: float = 5.0
    # Whether users' feedback also trains the global weights, which every
    # user's verdicts share; off, one user's training never moves another's.
    learn_global: bool = False
    # Seconds this process reuses the blocklist's Bloom filter before it
    # reads the Cache's copy again (how soon a newly blocked sender counts).
    blocklist_refresh: float = 30.0
    # Body text the classifier reads, in characters.
    max_text_chars: int = 20_000


@dataclass
class SearchConfig:
    """Full-text search: the indexer that feeds the index and the API's Search."""
    # Index events written to the index in one bulk write.
    batch_size: int = 256
    # Attachments larger than this (decoded) are found by name only.
    max_attachment_bytes: int = 10 * MiB
    # Text taken from each body and each attachment, in characters.
    max_text_chars: int = 1 * MiB
    # A search slower than this fails; `breaker_failures` failures in a row
    # make Search answer UNAVAILABLE at once for `breaker_reset` seconds.
    timeout: float = 5.0
    breaker_failures: int = 3
    breaker_reset: float = 10.0
    # Per-user Bloom filters of indexed terms, in the Cache.
    bloom_filter: bool = True
    # SQLite page cache of each FTS5 index connection.
    cache_mib: int = 64


@dataclass
class GatewayConfig:
    """The REST/JSON gateway over the mailbox API, with /openapi.json,
    /healthz and /metrics on the same port."""
    listen: str = "127.0.0.1:8080"
    tls: ListenerTlsConfig = field(default_factory=ListenerTlsConfig)
    # Clients that may read /metrics and /dashboard (operator data); others
    # get 403. The API itself is open to all and guarded by its tokens.
    operator_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])


SERVICES = ("mx", "delivery", "mailbox", "indexer", "gateway", "submission", "outbound",
            "tiering", "gc")


@dataclass
class SubmissionConfig:
    """SMTP submission for users' mail clients (RFC 6409, RFC 8314): STARTTLS
    on `listen` (587 in production), implicit TLS on `tls_listen` (465), AUTH
    always required. The certificate is [tls]'s, as for the MX."""
    listen: str = "127.0.0.1:2587"
    tls_listen: str = "127.0.0.1:2465"
    max_message_size: int = 25 * MiB
    max_recipients: int = 100
    idle_timeout: float = 300.0
    # Per user, counted through the Cache (shared when it is Redis); the API's
    # SendMessage and SendDraft count against the same limits.
    messages_per_hour: int = 100       # 450 4.7.1 past it
    recipients_per_day: int = 500      # 550 5.7.1 past it
    # Failed AUTHs within `auth_failure_window` seconds after which a client
    # IP, or a login name from anywhere, is refused with 454 4.7.0 until the
    # window ends (even with the right password).
    auth_failures_per_ip: int = 10
    auth_failures_per_user: int = 10
    auth_failure_window: float = 900.0
    # Addresses a user may send as besides their own, like Postfix's
    # smtpd_sender_login_maps: {"postmaster@example.com" = "alice@example.com"}.
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class DkimKeyConfig:
    """One signing key: `mailyard dkim keygen` writes the file and prints these lines."""
    domain: str = ""
    selector: str = ""
    private_key_file: str = ""         # PEM (PKCS#8 or PKCS#1), readable by mailyard only
    algorithm: str = "rsa-sha256"      # or "ed25519-sha256" (RFC 8463)


@dataclass
class DkimConfig:
    """DKIM signing of outgoing mail ([[dkim.keys]] tables): every key of the
    From: domain signs (an RSA and an Ed25519 key give two signatures); mail
    from a domain without a key goes out unsigned, with a warning in the log."""
    keys: list[DkimKeyConfig] = field(default_factory=list)


@dataclass
class GcConfig:
    """The blob garbage collector and mail retention (service "gc", `mailyard
    gc run`); see mailyard/store/gc/__init__.py for why these bounds are safe."""
    interval: float = 600.0            # seconds between scheduled runs
    batch_size: int = 500              # blobs looked at per batch
    batch_pause: float = 0.05          # seconds between batches, leaving I/O to mail
    # How long a deletion's tombstone is kept: longer than any write from put
    # to link; a writer slower than half of it checks its blobs itself.
    grace: float = 3600.0
    # A claim older than this belongs to a collector that died or stalled.
    claim_lease: float = 60.0
    # TRASH and SPAM are purged this many days after the message went there
    # (0 keeps them for ever).
    trash_days: float = 30.0
    spam_days: float = 30.0


@dataclass
class QuotaConfig:
    """Storage quotas, in bytes (0: unlimited). Usage counts each distinct
    blob once per user; past the limit the MX answers 452 4.2.2 at RCPT."""
    default: int = 15 * 1024 * MiB
    domains: dict[str, int] = field(default_factory=dict)   # domain -> bytes
    users: dict[str, int] = field(default_factory=dict)     # address -> bytes


@dataclass
class OutboundConfig:
    """Delivery of outgoing mail to other servers (the outbound service):
    MX lookup, SMTP with opportunistic STARTTLS, retries, DSNs."""
    # Our name in EHLO; `hostname` when empty.
    helo_name: str = ""
    # Seconds to connect and read the greeting; to wait for any later reply
    # (RFC 5321 4.5.3.2 asks for minutes: the end of DATA may take long).
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    # Messages in delivery at once in one process.
    concurrency: int = 100
    # Connections open at once to one destination (a domain, or the relay).
    destination_concurrency: int = 10
    # Messages one connection carries before it is closed for a fresh one.
    messages_per_connection: int = 100
    # How long an idle connection waits for more mail to its destination.
    connection_idle: float = 2.0
    # Waits before each retry ("90s", "2m", "1h", "1d"); the last one repeats.
    retry_schedule: list[str] = field(default_factory=lambda: [
        "2m", "5m", "10m", "15m", "30m", "1h", "2h", "1d"])
    # A message still undelivered this long after it was sent bounces (5 days).
    expire_after: float = 5 * 86400.0
    # The sender is told once (a DSN with Action: delayed) when delivery takes
    # longer than this; 0: never.
    delay_warning_after: float = 4 * 3600.0
    # STARTTLS: "may" (when offered, certificate unchecked, RFC 7435),
    # "encrypt" (required), "verify" (required, certificate checked against
    # the MX host name), "none".
    tls_policy: str = "may"
    # CA certificates (PEM) for "verify"; the system's when empty.
    tls_ca_file: str = ""
    # A smarthost ("host" or "host:port") that takes every message instead of
    # the recipients' MX hosts; empty: deliver directly.
    relay_host: str = ""
    # The port of remote MX hosts: 25. A test and lab setting, so receivers
    # on other loopback addresses can listen on an unprivileged port.
    remote_port: int = 25


def parse_duration(text: str) -> float:
    """Seconds in "90s", "2m", "1h", "1d" or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        seconds = float(number) * scale
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 90s, 2m, 1h, 1d)") from None
    if not seconds > 0:
        raise ValueError(f"a duration must be positive, not {text!r}")
    return seconds


# Connection settings of the distributed adapters, read only when [storage]
# names them. Addresses default to the loopback ports tests/cluster/ uses.

@dataclass
class KafkaConfig:
    """Queue on Kafka (storage.queue = "kafka")."""
    bootstrap_servers: list[str] = field(default_factory=lambda: ["127.0.0.1:19092"])
    client_id: str = "mailyard"
    # Replicas of the topics mailyard creates (on first use, with
    # queue.partitions partitions); a majority of them must hold a record
    # before a publish returns (min.insync.replicas). 3 in production.
    replication_factor: int = 1
    # Bounds every call, retries included: a publish Kafka has not
    # acknowledged by then fails, and the MX answers 451.
    request_timeout: float = 10.0
    tls: BackendTlsConfig = field(default_factory=BackendTlsConfig)
    # Put before every topic and consumer group name, so several mailyard
    # installations (or test runs) can share one Kafka cluster apart.
    topic_prefix: str = ""


@dataclass
class CassandraConfig:
    """MetadataStore on Cassandra (storage.metadata = "cassandra")."""
    contact_points: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    port: int = 19042
    keyspace: str = "mailyard"
    local_datacenter: str = "datacenter1"
    replication_factor: int = 1
    consistency: str = "LOCAL_QUORUM"
    request_timeout: float = 10.0
    username: str = ""
    password: str = ""
    tls: BackendTlsConfig = field(default_factory=BackendTlsConfig)


@dataclass
class AtRestConfig:
    """How blobs are kept at rest ([at_rest]): zstd, then AES-256-GCM (store/blobs/sealed.py)."""
    # Off, blobs are only encrypted (and replies are not delta-encoded).
    compress: bool = True
    # zstd's level, 1-19: 3 is fast; higher saves a little more for much more CPU.
    compression_level: int = 3
    # Off, blobs are only compressed. Blobs written either way stay readable.
    encrypt: bool = True
    # The server secrets (JSON, mode 0600); empty: blob-keys.json in the data
    # dir, created on first start. Every host of a cluster needs the same file.
    keys_file: str = ""
    # Replies quoting their parent are stored compressed against the parent.
    delta: bool = True


@dataclass
class TieringConfig:
    """Hot/cold blob tiers ([tiering]): old mail's blobs move to a cheaper store."""
    enabled: bool = True
    # Messages received longer ago than this move to the cold tier.
    after_days: float = 730.0
    # The cold tier: a directory for storage.blobs = "fs" (empty: blobs-cold
    # in the data dir), a bucket for "s3" (empty: the [s3] bucket + "-cold").
    cold_dir: str = ""
    cold_bucket: str = ""
    # Seconds between the scheduled runs of the tiering service.
    interval: float = 86400.0


@dataclass
class S3Config:
    """BlobStore on S3 (storage.blobs = "s3")."""
    endpoint_url: str = "http://127.0.0.1:17070"
    region: str = "us-east-1"
    bucket: str = "mailyard"
    # Empty: the usual AWS sources (AWS_ACCESS_KEY_ID, ~/.aws, an instance role).
    access_key_id: str = ""
    secret_access_key: str = ""
    request_timeout: float = 30.0
    # Attempts per request, with botocore's backoff between them.
    max_attempts: int = 4
    # Blobs this large or larger go up as a multipart upload in parts this large
    # (S3 wants parts of at least 5 MiB, all but the last).
    multipart_threshold: int = 8 * 1024 * 1024
    multipart_part_size: int = 8 * 1024 * 1024
    tls: BackendTlsConfig = field(default_factory=BackendTlsConfig)


@dataclass
class RedisConfig:
    """Cache on Redis (storage.cache = "redis")."""
    url: str = "redis://127.0.0.1:16379/0"
    # Bounds every call, retry included: a slow or absent Redis must cost
    # little, since callers fall back to the MetadataStore.
    request_timeout: float = 1.0
    max_connections: int = 64
    # Expiries set with `set` are shortened by up to this fraction at random,
    # so entries written together (a cache refill) do not expire together.
    ttl_jitter: float = 0.1
    tls: BackendTlsConfig = field(default_factory=BackendTlsConfig)


@dataclass
class OpenSearchConfig:
    """SearchIndex on OpenSearch (storage.search = "opensearch")."""
    hosts: list[str] = field(default_factory=lambda: ["http://127.0.0.1:19200"])
    index_prefix: str = "mailyard"
    username: str = ""
    password: str = ""
    request_timeout: float = 10.0
    # The messages index, created by the first process that finds it missing.
    shards: int = 1
    replicas: int = 1
    # A bulk write is searchable when it returns (the SearchIndex promise):
    # "true" refreshes the shards it wrote at once; "wait_for" waits for the
    # next periodic refresh (<= 1 s), which caps one indexer at about one batch
    # a second but lets many indexers share refreshes on a large cluster.
    refresh: str = "true"
    tls: BackendTlsConfig = field(default_factory=BackendTlsConfig)


@dataclass
class ElasticsearchConfig(OpenSearchConfig):
    """SearchIndex on Elasticsearch 7.17 (storage.search = "elasticsearch"):
    the same settings as OpenSearch's, in their own [elasticsearch] table."""
    hosts: list[str] = field(default_factory=lambda: ["http://127.0.0.1:19201"])


@dataclass
class LimitsConfig:
    """Limits on mail to a domain or to one user at the MX; 0: the [mx] value."""
    # Larger messages get 552 5.3.4: at RCPT when MAIL FROM declared SIZE=, else after DATA.
    max_message_size: int = 0
    # Recipients at this domain one message may have; 452 4.5.3 past it.
    max_recipients: int = 0


@dataclass
class DomainConfig:
    """One local domain's policy: the file policy.d/DOMAIN.toml (or a
    [domains."DOMAIN"] table of the main file). Addresses are resolved at RCPT
    in this order: aliases and lists, a user, user+tag (delivered to user, the
    tag left in the To: header as Gmail does), then the catch-all."""
    # Local part (or the whole address) -> the address it is delivered to (a
    # bare local part is of this domain). Targets may be aliases or lists too.
    aliases: dict[str, str] = field(default_factory=dict)
    # Distribution lists: local part -> the addresses (or local parts) it expands to.
    lists: dict[str, list[str]] = field(default_factory=dict)
    # Where mail to any other address of the domain goes (an address or a
    # local part); empty: 550 5.1.1 for unknown addresses.
    catch_all: str = ""
    # user+tag@domain reaches user@domain; empty turns plus-addressing off.
    plus_separator: str = "+"
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Per user (local part): limits that replace the domain's.
    user_limits: dict[str, LimitsConfig] = field(default_factory=dict)
    # Mail to this domain only over TLS: RCPT without STARTTLS gets 530 5.7.0.
    require_tls: bool = False
    # Senders refused for this domain (550 5.7.1): "user@host", "@host" (a
    # whole domain) or a client IP network ("192.0.2.0/24").
    blocklist: list[str] = field(default_factory=list)
    # Signing keys of this domain, as [[dkim]] tables ([[dkim.keys]] without domain).
    dkim: list[DkimKeyConfig] = field(default_factory=list)


@dataclass
class Config:
    hostname: str = "localhost"
    data_dir: str = "mailyard-data"
    # Per-domain files DOMAIN.toml; relative to the main file's folder. Empty:
    # policy.d next to the main file, when there is one.
    policy_dir: str = ""
    services: list[str] = field(default_factory=lambda: list(SERVICES))
    mx: MxConfig = field(default_factory=MxConfig)
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    authentication: AuthenticationConfig = field(default_factory=AuthenticationConfig)
    dmarc: DmarcConfig = field(default_factory=DmarcConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    antivirus: AntivirusConfig = field(default_factory=AntivirusConfig)
    greylist: GreylistConfig = field(default_factory=GreylistConfig)
    dnsbl: DnsblConfig = field(default_factory=DnsblConfig)
    spam: SpamConfig = field(default_factory=SpamConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    gc: GcConfig = field(default_factory=GcConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    cassandra: CassandraConfig = field(default_factory=CassandraConfig)
    s3: S3Config = field(default_factory=S3Config)
    at_rest: AtRestConfig = field(default_factory=AtRestConfig)
    tiering: TieringConfig = field(default_factory=TieringConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    opensearch: OpenSearchConfig = field(default_factory=OpenSearchConfig)
    elasticsearch: ElasticsearchConfig = field(default_factory=ElasticsearchConfig)
    # Local domains' policies by domain name, from the main file and policy_dir.
    domains: dict[str, DomainConfig] = field(default_factory=dict)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


DMARC_MODES = ("enforce", "quarantine", "monitor")
DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
# Values a setting may take, where not every value of its type makes sense.
CHOICES = {
    "storage.queue": ("sqlite", "kafka"),
    "storage.metadata": ("sqlite", "cassandra"),
    "cassandra.consistency": ("ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "EACH_QUORUM", "ALL"),
    "storage.blobs": ("fs", "s3"),
    "storage.cache": ("memory", "redis"),
    "storage.search": ("fts5", "opensearch", "elasticsearch"),
    "opensearch.refresh": ("true", "wait_for"),
    "elasticsearch.refresh": ("true", "wait_for"),
    "log.level": ("debug", "info", "warning", "error"),
    "log.format": ("logfmt", "json"),
    "dmarc.mode": DMARC_MODES,
    "tls.min_version": ("TLSv1.2", "TLSv1.3"),
    "outbound.tls_policy": ("may", "encrypt", "verify", "none"),
    "antivirus.on_infected": ("reject", "quarantine"),
    "antivirus.on_failure": ("tempfail", "accept"),
}
POSITIVE = {"mx.processes", "mx.max_message_size", "mx.max_recipients", "mx.idle_timeout",
            "mailbox.max_page_size", "mailbox.attachment_chunk_size",
            "mailbox.quota_window", "mailbox.watch_poll_interval",
            "queue.partitions", "queue.poll_interval", "queue.member_ttl",
            "queue.retention_hours",
            "delivery.batch_size", "delivery.concurrency", "delivery.max_attempts",
            "delivery.inbox_cache_size",
            "delivery.inbox_cache_ttl",
            "mx.max_line_length", "mx.max_header_size", "dns.timeout", "dns.cache_size",
            "dns.cache_ttl", "authentication.dkim_min_key_bits", "ratelimit.window",
            "ratelimit.connections", "ratelimit.messages", "greylist.delay",
            "greylist.retry_window", "greylist.pass_ttl",
            "search.batch_size", "search.max_attachment_bytes", "search.max_text_chars",
            "search.timeout", "search.breaker_failures", "search.breaker_reset",
            "search.cache_mib",
            "spam.required_score", "spam.learning_rate", "spam.blocklist_refresh",
            "spam.max_text_chars",
            "submission.max_message_size", "submission.max_recipients",
            "submission.idle_timeout", "submission.messages_per_hour",
            "submission.recipients_per_day", "submission.auth_failures_per_ip",
            "submission.auth_failures_per_user", "submission.auth_failure_window",
            "opensearch.request_timeout", "opensearch.shards",
            "elasticsearch.request_timeout", "elasticsearch.shards",
            "redis.request_timeout", "redis.max_connections",
            "s3.request_timeout", "s3.max_attempts", "s3.multipart_threshold",
            "s3.multipart_part_size",
            "kafka.request_timeout", "kafka.replication_factor",
            "outbound.connect_timeout", "outbound.command_timeout", "outbound.concurrency",
            "outbound.destination_concurrency", "outbound.messages_per_connection",
            "outbound.connection_idle", "outbound.expire_after", "outbound.remote_port",
            "metrics.sample_interval", "antivirus.timeout", "antivirus.clean_ttl"}
LISTEN_KEYS = {"mx.listen", "mailbox.listen", "gateway.listen", "submission.listen",
               "submission.tls_listen", "metrics.listen"}


class ConfigError(Exception):
    """A configuration the daemons refuse to start with."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 key: str | None = None):
        self.file, self.line, self.key, self.reason = file, line, key, message
        where = ":".join(str(p) for p in (file, line) if p is not None)
        parts = [p for p in (where, key, message) if p]
        super().__init__(": ".join(parts))


def load(path: str | os.PathLike | None = None, data_dir: str | None = None) -> Config:
    """Loads `path`, else ./mailyard.toml when present, else the defaults.
    `data_dir` (the --data-dir option) wins over the file. Raises the first
    error; `check` gives them all."""
    config, errors = check(path, data_dir)
    if errors:
        raise errors[0]
    return config


def check(path: str | os.PathLike | None = None,
          data_dir: str | None = None) -> tuple[Config, list[ConfigError]]:
    """The config of `path` and its domain files, and every error found in
    them, each naming its file; a setting in error keeps its default."""
    if path is None and Path("mailyard.toml").exists():
        path = "mailyard.toml"
    config, errors, locate = Config(), [], None
    if path is not None:
        parsed = _parse(Path(path), errors)
        if parsed is not None:
            document, locate = parsed
            config = _in_file(path, errors, lambda found: _build(
                Config, document, "", locate, found))
            _in_file(path, errors, lambda found: validate(config, locate, found))
    else:
        validate(config, None, errors)
    if data_dir is not None:
        config.data_dir = data_dir
    from mailyard.policy.domains import load_domain_files  # it builds on this module

    load_domain_files(config, path, locate, errors)
    return config, errors


def _parse(path: Path, errors: list[ConfigError]):
    """(document, key locator) of a TOML file, or None with its error added."""
    try:
        text = _read(path)
        try:
            document = tomllib.loads(text)
        except (ValueError, RecursionError) as exc:
            # TOMLDecodeError is a ValueError; tomllib also raises a plain one for
            # an integer past Python's 4300 digits, and RecursionError for arrays
            # or inline tables nested ~1,000 deep.
            at = re.search(r"\(at line (\d+), column \d+\)", str(exc))
            raise ConfigError(f"not valid TOML: {exc}", file=str(path),
                              line=int(at.group(1)) if at else None) from None
    except ConfigError as exc:
        errors.append(exc)
        return None
    return document, _KeyLocator(text)


def _in_file(path, errors: list[ConfigError], work):
    """Runs `work(found)`, adding the errors it collects in `found` to `errors`
    with `path` as their file."""
    found: list[ConfigError] = []
    result = work(found)
    errors.extend(ConfigError(e.reason, file=str(path), line=e.line, key=e.key) for e in found)
    return result


def validate(config: Config, locate: typing.Callable[[str], int | None] | None = None,
             errors: list[ConfigError] | None = None) -> None:
    """Raises the first error, or adds every one to `errors` when given."""
    def fail(key: str, message: str) -> None:
        error = ConfigError(message, key=key, line=locate(key) if locate else None)
        if errors is None:
            raise error
        errors.append(error)

    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            fail(key, f"must be one of {', '.join(allowed)}, not {value!r}")
    for key in POSITIVE:
        if not _get(config, key) > 0:  # nan too: TOML has it, and it is no timeout
            fail(key, "must be greater than 0")
    for key in LISTEN_KEYS:
        try:
            parse_listen(_get(config, key))
        except ValueError as exc:
            fail(key, str(exc))
    for domain, mode in config.dmarc.overrides.items():
        if mode not in DMARC_MODES:
            fail(f"dmarc.overrides.{domain}",
                 f"must be one of {', '.join(DMARC_MODES)}, not {mode!r}")
    for network in config.mx.trusted_networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            fail("mx.trusted_networks", f"not an IP network: {network!r}")
    for network in config.gateway.operator_networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            fail("gateway.operator_networks", f"not an IP network: {network!r}")
    for index, key in enumerate(config.dkim.keys):
        where = f"dkim.keys[{index}]"
        if key.algorithm not in DKIM_ALGORITHMS:
            fail(f"{where}.algorithm",
                 f"must be one of {', '.join(DKIM_ALGORITHMS)}, not {key.algorithm!r}")
        for name in ("domain", "selector", "private_key_file"):
            if not getattr(key, name):
                fail(f"{where}.{name}", "must be set")
    for alias, owner in config.submission.aliases.items():
        if "@" not in alias or "@" not in owner:
            fail(f"submission.aliases.{alias}", "alias and owner must both be addresses")
    if not config.outbound.retry_schedule:
        fail("outbound.retry_schedule", "needs at least one step")
    for step in config.outbound.retry_schedule:
        try:
            parse_duration(step)
        except ValueError as exc:
            fail("outbound.retry_schedule", str(exc))
    if config.outbound.delay_warning_after < 0:
        fail("outbound.delay_warning_after", "must be 0 (never) or more")
    if config.outbound.relay_host:
        try:
            parse_listen(config.outbound.relay_host if ":" in config.outbound.relay_host
                         else f"{config.outbound.relay_host}:25")
        except ValueError as exc:
            fail("outbound.relay_host", str(exc))
    try:
        parse_clamd_address(config.antivirus.address)
    except ValueError as exc:
        fail("antivirus.address", str(exc))
    if bool(config.tls.cert_file) != bool(config.tls.key_file):
        fail("tls.cert_file", "tls.cert_file and tls.key_file go together")
    if not 1 <= config.at_rest.compression_level <= 19:
        fail("at_rest.compression_level", "must be 1 to 19 (zstd's levels)")
    if config.tiering.after_days < 0:
        fail("tiering.after_days", "must be 0 or more")
    if config.tiering.interval <= 0:
        fail("tiering.interval", "must be more than 0")
    for name in config.services:
        if name not in SERVICES:
            fail("services", f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    from mailyard.policy.tls import problems as tls_problems  # it imports this module
    for key, message in tls_problems(config):
        fail(key, message)


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:2525' or '[::1]:2525' into (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_clamd_address(value: str) -> tuple[str, tuple[str, int] | None]:
    """clamd's socket: ('/path', None) for unix:/path or /path, else ('', (host, port))."""
    path = value.removeprefix("unix:")
    if path.startswith("/"):
        return path, None
    if value.startswith("unix:"):
        raise ValueError(f"expected unix:/absolute/path, got {value!r}")
    return "", parse_listen(value)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=str(path)) from None


def _get(config: Config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _build(cls, document: dict, prefix: str, locate: _KeyLocator,
           errors: list[ConfigError] | None = None):
    """`cls` from a TOML table. Raises the first error, or, when `errors` is
    given, adds each there and leaves that setting at its default."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in document.items():
        dotted = f"{prefix}{key}"
        try:
            if key not in known:
                raise ConfigError(f"unknown setting; known here: {', '.join(sorted(known))}",
                                  key=dotted, line=locate(dotted))
            values[key] = _convert(hints[key], raw, dotted, locate, errors)
        except ConfigError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return cls(**values)


def _convert(hint, raw, dotted: str, locate: _KeyLocator,
             errors: list[ConfigError] | None = None):
    def wrong(expected: str):
        return ConfigError(f"expected {expected}, got {type(raw).__name__} {raw!r}",
                           key=dotted, line=locate(dotted))

    if dataclasses.is_dataclass(hint):
        if not isinstance(raw, dict):
            raise wrong(f"a table [{dotted}]")
        return _build(hint, raw, dotted + ".", locate, errors)
    if typing.get_origin(hint) is dict:
        _, item = typing.get_args(hint)
        if dataclasses.is_dataclass(item) or typing.get_origin(item) is list:
            # [domains."example.com"], user_limits.alice, lists.team = [...]
            if not isinstance(raw, dict):
                raise wrong(f"a table [{dotted}]")
            return {str(k): _convert(item, v, f"{dotted}.{k}", locate, errors)
                    for k, v in raw.items()}
        if not isinstance(raw, dict) or not all(isinstance(v, item) for v in raw.values()):
            raise wrong(f"a table of {item.__name__} values")
        return {str(k): v for k, v in raw.items()}
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if dataclasses.is_dataclass(item):  # an array of tables: [[dkim.keys]]
            if not isinstance(raw, list) or not all(isinstance(v, dict) for v in raw):
                raise wrong(f"an array of tables [[{dotted}]]")
            return [_build(item, v, f"{dotted}[{i}].", locate, errors)
                    for i, v in enumerate(raw)]
        if not isinstance(raw, list) or not all(isinstance(v, item) for v in raw):
            raise wrong(f"a list of {item.__name__}")
        return list(raw)
    if hint is bool:
        if not isinstance(raw, bool):
            raise wrong("true or false")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise wrong("an integer")
        if not -2 ** 63 <= raw < 2 ** 63:  # TOML's range; tomllib takes any size
            raise ConfigError("an integer out of range (64 bits)", key=dotted, line=locate(dotted))
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise wrong("a number")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise wrong("a string")
        return raw
    raise TypeError(f"unsupported setting type {hint!r} for {dotted}")


class _KeyLocator:
    """Finds the line that sets a dotted key, since tomllib keeps no positions."""

    def __init__(self, text: str):
        self.lines: dict[str, int] = {}
        table = ""
        arrays: dict[str, int] = {}
        for number, line in enumerate(text.split("\n"), 1):  # TOML's lines, not splitlines()'
            stripped = line.strip()
            if stripped.startswith("[["):  # the next table of an array: name[0], name[1], ...
                name = _dotted(stripped.strip("[] \t").split("#")[0].strip().strip("]").strip())
                arrays[name] = arrays.get(name, -1) + 1
                table = f"{name}[{arrays[name]}]"
                self._add(name, number)
                self._add(table, number)
            elif stripped.startswith("["):
                table = _dotted(stripped.strip("[] \t").split("#")[0].strip().strip("]").strip())
                self._add(table, number)
            elif "=" in stripped and not stripped.startswith("#"):
                key = _key_of(stripped)
                self._add(f"{table}.{key}" if table else key, number)

    def _add(self, dotted: str, number: int) -> None:
        """A key's tables count as set on its line too (`tls.key_file = ...` sets tls)."""
        while dotted:
            self.lines.setdefault(dotted, number)
            dotted = dotted.rpartition(".")[0]

    def __call__(self, dotted: str) -> int | None:
        while dotted:
            if dotted in self.lines:
                return self.lines[dotted]
            dotted = dotted.rpartition(".")[0]
        return None


def _key_of(line: str) -> str:
    """The dotted key a `key = value` line sets. A quoted key may hold "="
    itself ('a = b' = 1), so the key ends at the first "=" before which the
    text reads as a whole key."""
    start = 0
    while (at := line.find("=", start)) != -1:
        try:
            document = tomllib.loads(f"{line[:at]} = 0")
        except Exception:
            start = at + 1
            continue
        return _name(document)
    return line.split("=", 1)[0].strip().strip("\"'")  # a line inside a multi-line value


def _name(document: dict) -> str:
    parts = []
    while isinstance(document, dict) and len(document) == 1:
        name, document = next(iter(document.items()))
        parts.append(name)
    return ".".join(parts)


def _dotted(key: str) -> str:
    """A TOML key as written (bare, quoted, dotted, with blanks: `"mx" . listen`)
    as the dotted name errors use (mx.listen), read by tomllib itself."""
    try:
        document = tomllib.loads(f"{key} = 0")
    except Exception:  # not a key: a line inside a multi-line value
        return key.strip().strip("\"'")
    return _name(document)
