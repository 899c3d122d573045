"""TLS for every hop that is not SMTP (mta/tls.py has the MX's): the mailbox
API and the gateway as servers, optionally asking callers for a certificate
(mutual TLS between services), and the distributed adapters as clients.

One place decides what verification means, so every backend checks the same
way: the server's certificate must chain to `ca_file` (the system's CAs when
empty) and name the host dialled. Only `verify = false` turns that off, and
the adapter then says so in the log when it starts. Everything here is also
run by config validation, so a missing or unreadable file, a file that holds
no certificate or a key that does not match its certificate is a config
error naming file, line and key, before any service starts.
"""
from __future__ import annotations

import os
import ssl
from urllib.parse import urlsplit

from mailyard.policy.config import BackendTlsConfig, Config, ConfigError, ListenerTlsConfig
from mailyard.policy.logs import EventLog

MIN_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(settings: ListenerTlsConfig, where: str) -> ssl.SSLContext | None:
    """The listener's context, None when it serves plaintext. `where` is its
    table ("mailbox.tls"), for the errors."""
    if not settings.cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    _load_pair(context, settings.cert_file, settings.key_file, where)
    if settings.client_ca_file:
        context.verify_mode = ssl.CERT_REQUIRED
        _load_ca(context, settings.client_ca_file, f"{where}.client_ca_file")
    return context


def listener_mode(settings: ListenerTlsConfig) -> str:
    """How a listener serves, for its log line: plaintext, tls or mutual-tls."""
    if not settings.cert_file:
        return "plaintext"
    return "mutual-tls" if settings.client_ca_file else "tls"


def client_context(settings: BackendTlsConfig, where: str) -> ssl.SSLContext:
    """A client context that verifies unless `verify` is false."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host name checked
    context.minimum_version = MIN_VERSION
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif settings.ca_file:
        _load_ca(context, settings.ca_file, f"{where}.ca_file")
    else:
        context.load_default_certs()
    if settings.cert_file:
        _load_pair(context, settings.cert_file, settings.key_file, where)
    return context


def warn_if_unverified(settings: BackendTlsConfig, server: str) -> None:
    """An adapter connecting without checking certificates says so once, at start."""
    if not settings.verify:
        EventLog("tls").warning("certificate_not_verified", server=server,
                                why="verify = false: anyone on the path can pose as it")


def read_pem(path: str, key: str) -> bytes:
    """A file's bytes (gRPC takes PEM bytes, not paths)."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key) from None


def url_uses_tls(url: str) -> bool:
    try:
        return urlsplit(url).scheme in ("https", "rediss")
    except ValueError:  # not a URL at all: the adapter's own check says so
        return False


def backends_in_use(config: Config) -> list[tuple[str, bool]]:
    """(table, TLS on) of each distributed backend [storage] names."""
    used = []
    if config.storage.queue == "kafka":
        used.append(("kafka", config.kafka.tls.enabled))
    if config.storage.metadata == "cassandra":
        used.append(("cassandra", config.cassandra.tls.enabled))
    if config.storage.blobs == "s3":
        # No endpoint is AWS itself, always https.
        endpoint = config.s3.endpoint_url
        used.append(("s3", not endpoint or url_uses_tls(endpoint)))
    if config.storage.cache == "redis":
        used.append(("redis", url_uses_tls(config.redis.url)))
    if config.storage.search in ("opensearch", "elasticsearch"):
        hosts = getattr(config, config.storage.search).hosts
        used.append((config.storage.search, all(map(url_uses_tls, hosts))))
    return used


_URL_KEYS = {"s3": "s3.endpoint_url", "redis": "redis.url",
             "opensearch": "opensearch.hosts", "elasticsearch": "elasticsearch.hosts"}


def problems(config: Config):
    """(dotted key, message) of each TLS setting the services would fail on."""
    if config.tls.cert_file and config.tls.key_file:  # the MX's and submission's
        try:
            _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), config.tls.cert_file,
                       config.tls.key_file, "tls")
        except ConfigError as exc:
            yield exc.key, exc.reason
    for name in ("mailbox", "gateway"):
        settings: ListenerTlsConfig = getattr(config, name).tls
        where = f"{name}.tls"
        if bool(settings.cert_file) != bool(settings.key_file):
            yield f"{where}.cert_file", f"{where}.cert_file and key_file go together"
        if settings.required and not settings.cert_file:
            yield f"{where}.required", ("TLS is required, but no certificate is set "
                                        f"({where}.cert_file and key_file)")
        if settings.client_ca_file and not settings.cert_file:
            yield f"{where}.client_ca_file", (f"mutual TLS needs a server certificate too "
                                              f"({where}.cert_file and key_file)")
        try:
            server_context(settings, where)
        except ConfigError as exc:
            yield exc.key, exc.reason
    for name, tls_on in backends_in_use(config):
        settings: BackendTlsConfig = getattr(config, name).tls
        where = f"{name}.tls"
        if name in _URL_KEYS:
            if settings.enabled and not tls_on:
                yield _URL_KEYS[name], (f"{where}.enabled is set, but the address is "
                                        "plaintext: use https:// (rediss:// for Redis)")
            if name in ("opensearch", "elasticsearch"):
                hosts = getattr(config, name).hosts
                if len({url_uses_tls(h) for h in hosts}) > 1:
                    yield _URL_KEYS[name], "all hosts https:// or none"
        if bool(settings.cert_file) != bool(settings.key_file):
            yield f"{where}.cert_file", f"{where}.cert_file and key_file go together"
        if tls_on:
            try:
                client_context(settings, where)
            except ConfigError as exc:
                yield exc.key, exc.reason


def _load_ca(context: ssl.SSLContext, path: str, key: str) -> None:
    _readable(path, key)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"{path} holds no usable PEM CA certificate ({_reason(exc)})",
                          key=key) from None


def _load_pair(context: ssl.SSLContext, cert: str, key_file: str, where: str) -> None:
    _readable(cert, f"{where}.cert_file")
    _readable(key_file, f"{where}.key_file")
    try:
        context.load_cert_chain(cert, key_file)
    except ssl.SSLError as exc:
        raise ConfigError(f"{cert} and {key_file} are not a PEM certificate and its "
                          f"private key ({_reason(exc)})", key=f"{where}.cert_file") from None


def _readable(path: str, key: str) -> None:
    if not os.path.isfile(path):
        why = "not a regular file" if os.path.exists(path) else "no such file"
        raise ConfigError(f"{why}: {path}", key=key)
    if not os.access(path, os.R_OK):
        raise ConfigError(f"cannot read {path}: permission denied", key=key)


def _reason(exc: ssl.SSLError) -> str:
    return exc.reason or exc.strerror or str(exc)
