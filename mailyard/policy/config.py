"""The typed configuration model and its loading from TOML.

Every setting has a default that runs on one machine with no servers. A file
only names what it changes; an unknown key or a value of the wrong type is
refused with the file, the line and the dotted key, like `postconf` would.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


@dataclass
class MxConfig:
    """The inbound MX (port 25 in production)."""
    listen: str = "127.0.0.1:2525"
    max_message_size: int = 25 * MiB
    max_recipients: int = 100
    # How long one SMTP session may stay idle before we close it.
    idle_timeout: float = 300.0


@dataclass
class MailboxConfig:
    """The gRPC mailbox API."""
    listen: str = "127.0.0.1:50051"
    max_page_size: int = 500
    attachment_chunk_size: int = 64 * 1024


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


@dataclass
class QueueConfig:
    partitions: int = 4
    # How often a waiting consumer looks for records published by another
    # process; records from this process wake it at once.
    poll_interval: float = 0.5
    # A consumer silent for this long loses its partitions to the others.
    member_ttl: float = 10.0


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


@dataclass
class LogConfig:
    level: str = "info"
    # Addresses in logs appear as a***@example.com unless turned off.
    mask_addresses: bool = True


SERVICES = ("mx", "delivery", "mailbox")


@dataclass
class Config:
    hostname: str = "localhost"
    data_dir: str = "mailyard-data"
    services: list[str] = field(default_factory=lambda: list(SERVICES))
    mx: MxConfig = field(default_factory=MxConfig)
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


# Values a setting may take, where not every value of its type makes sense.
CHOICES = {
    "storage.queue": ("sqlite",),
    "storage.metadata": ("sqlite",),
    "storage.blobs": ("fs",),
    "storage.cache": ("memory",),
    "log.level": ("debug", "info", "warning", "error"),
}
POSITIVE = {"mx.max_message_size", "mx.max_recipients", "mx.idle_timeout",
            "mailbox.max_page_size", "mailbox.attachment_chunk_size",
            "queue.partitions", "queue.poll_interval", "queue.member_ttl",
            "delivery.batch_size", "delivery.concurrency", "delivery.max_attempts",
            "delivery.inbox_cache_size",
            "delivery.inbox_cache_ttl"}
LISTEN_KEYS = {"mx.listen", "mailbox.listen"}


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
    `data_dir` (the --data-dir option) wins over the file."""
    if path is None and Path("mailyard.toml").exists():
        path = "mailyard.toml"
    config = Config()
    locate = None
    if path is not None:
        text = _read(Path(path))
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", file=str(path)) from None
        locate = _KeyLocator(text)
    if data_dir is not None:
        config.data_dir = data_dir
    try:
        if path is not None:
            config = _build(Config, document, "", locate)
            if data_dir is not None:
                config.data_dir = data_dir
        validate(config, locate)
    except ConfigError as exc:
        raise ConfigError(exc.reason, file=str(path) if path else None, line=exc.line,
                          key=exc.key) from None
    return config


def validate(config: Config, locate: typing.Callable[[str], int | None] | None = None) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(message, key=key, line=locate(key) if locate else None)

    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            fail(key, f"must be one of {', '.join(allowed)}, not {value!r}")
    for key in POSITIVE:
        if _get(config, key) <= 0:
            fail(key, "must be greater than 0")
    for key in LISTEN_KEYS:
        try:
            parse_listen(_get(config, key))
        except ValueError as exc:
            fail(key, str(exc))
    for name in config.services:
        if name not in SERVICES:
            fail("services", f"unknown service {name!r}; known: {', '.join(SERVICES)}")


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:2525' or '[::1]:2525' into (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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


def _build(cls, document: dict, prefix: str, locate: _KeyLocator):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in document.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown setting; known here: {', '.join(sorted(known))}",
                              key=dotted, line=locate(dotted))
        values[key] = _convert(hints[key], raw, dotted, locate)
    return cls(**values)


def _convert(hint, raw, dotted: str, locate: _KeyLocator):
    def wrong(expected: str):
        return ConfigError(f"expected {expected}, got {type(raw).__name__} {raw!r}",
                           key=dotted, line=locate(dotted))

    if dataclasses.is_dataclass(hint):
        if not isinstance(raw, dict):
            raise wrong(f"a table [{dotted}]")
        return _build(hint, raw, dotted + ".", locate)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
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
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("[") and not stripped.startswith("[["):
                table = stripped.strip("[] \t").split("#")[0].strip().strip("]").strip()
                self.lines.setdefault(table, number)
            elif "=" in stripped and not stripped.startswith("#"):
                key = stripped.split("=", 1)[0].strip().strip('"\'')
                self.lines.setdefault(f"{table}.{key}" if table else key, number)

    def __call__(self, dotted: str) -> int | None:
        while dotted:
            if dotted in self.lines:
                return self.lines[dotted]
            dotted = dotted.rpartition(".")[0]
        return None
