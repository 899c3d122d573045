"""`mailyard status`: the state of an installation on one screen.

It probes each enabled service's listen address, reads consumer lag, the
outbound queue, storage use and the user and domain counts from the configured
stores, and changes nothing. It works with the services stopped (they show as
down) and every section fails on its own: an unreachable store turns into an
error line, not a failed command. Store and daemon modules are imported
lazily, as the other commands do, so policy/ depends on none of them at load.
"""
from __future__ import annotations

import asyncio
import os
import ssl
from importlib import metadata as package_metadata
from pathlib import Path

from mailyard.policy.config import Config, parse_listen

PROBE_TIMEOUT = 1.0  # seconds per connect
# Seconds for a health answer once connected: a busy server answers late, not
# never, and a false "unhealthy" sends a postmaster chasing nothing.
HEALTH_TIMEOUT = 5.0
SECTION_TIMEOUT = 20.0  # seconds per store section (a distributed store may be slow to refuse)
# A group no consumer joins: its lag is every record a topic still keeps,
# which is what a dead-letter topic holds for the postmaster.
NO_GROUP = "mailyard-status"
OUTBOUND_PAGE = 500


def version() -> str:
    try:
        return package_metadata.version("mailyard")
    except package_metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def collect(config: Config) -> dict:
    """Everything `mailyard status` shows, as plain data (what --json prints)."""
    return asyncio.run(_collect(config))


async def _collect(config: Config) -> dict:
    from mailyard.store.stores import Stores

    report = {"version": version(), "data_dir": str(config.data_path.resolve()),
              "services": await _services(config)}
    stores = Stores(config)
    try:
        for name, section in (("lag", _lag), ("outbound_queue", _outbound),
                              ("accounts", _accounts)):
            try:
                report[name] = await asyncio.wait_for(section(config, stores), SECTION_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - one store down must not hide the rest
                report[name] = {"error": str(exc) or type(exc).__name__}
    finally:
        await stores.close()
    report["storage"] = _storage(config)
    return report


# --- services ----------------------------------------------------------------

def _listeners(config: Config) -> list[tuple[str, str | None]]:
    """(label, listen address) of each enabled service, None for the workers
    that listen on no port; submission's implicit-TLS port is "submissions",
    as the launcher labels it."""
    listen = {"mx": [("mx", config.mx.listen)],
              "mailbox": [("mailbox", config.mailbox.listen)],
              "gateway": [("gateway", config.gateway.listen)],
              "submission": [("submission", config.submission.listen),
                             ("submissions", config.submission.tls_listen)]}
    return [entry for name in config.services for entry in listen.get(name, [(name, None)])]


async def _services(config: Config) -> list[dict]:
    tls = {"mailbox": config.mailbox.tls, "gateway": config.gateway.tls}
    return list(await asyncio.gather(*(_probe(label, address, tls.get(label))
                                       for label, address in _listeners(config))))


async def _probe(label: str, address: str | None, tls=None) -> dict:
    if address is None:
        return {"name": label, "listen": None, "state": "no port"}
    host, port = parse_listen(address)
    # A wildcard address answers on loopback too.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    found = {"name": label, "listen": address}
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
        writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        errno = getattr(exc, "errno", None)
        why = os.strerror(errno) if errno else f"no answer in {PROBE_TIMEOUT:g}s"
        return {**found, "state": "down", "detail": why.lower()}
    health = {"mailbox": _grpc_health, "gateway": _http_health}.get(label)
    if tls is not None and tls.cert_file:
        detail = await _tls_health(label, host, port, tls)
    else:
        detail = await health(host, port) if health else None
    if detail is None:
        return {**found, "state": "up"}
    ok, text = detail
    return {**found, "state": "up" if ok else "unhealthy", "detail": text}


async def _grpc_health(host: str, port: int) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return False, f"gRPC health: {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return status == "SERVING", f"gRPC health: {status}"


async def _tls_health(label: str, host: str, port: int, tls) -> tuple[bool, str]:
    """A TLS port of this machine: the probe checks the handshake, not the
    certificate (it trusts the host it runs on), and the gateway's /healthz.
    It has no client certificate for mutual TLS, and gRPC will not skip
    verification, so there the handshake (or the connect) is all it checks."""
    if tls.client_ca_file:
        return True, "mutual TLS: health not probed"
    if label == "gateway":
        return await _http_health(host, port, scheme="https")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), PROBE_TIMEOUT)
        writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        return False, f"TLS handshake: {exc!r}"
    return True, "TLS handshake: ok"


async def _http_health(host: str, port: int, scheme: str = "http") -> tuple[bool, str]:
    import httpx

    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        # verify only matters for https: our own port, see _tls_health.
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT, verify=False) as client:
            reply = await client.get(f"{scheme}://{netloc}/healthz")
    except httpx.HTTPError as exc:
        return False, f"/healthz: {exc!r}"
    return reply.status_code == 200, f"/healthz: {reply.status_code}"


# --- queue -------------------------------------------------------------------

def consumers(config: Config) -> list[tuple[str, str | None]]:
    """(topic, consumer group) of every topic; None for the dead letters."""
    from mailyard.delivery.worker import DLQ_TOPIC
    from mailyard.delivery.worker import GROUP as DELIVERY
    from mailyard.mta.outbound.schedule import RetrySchedule, tier_topic
    from mailyard.mta.outbound.worker import GROUP as OUTBOUND
    from mailyard.searchd.indexer import GROUP as INDEXER
    from mailyard.searchd.indexer import INDEX_TOPIC
    from mailyard.store.outbox import OUTBOUND_TOPIC
    from mailyard.store.spool import INBOUND_TOPIC

    tiers = [(tier_topic(delay), OUTBOUND) for delay in RetrySchedule(config.outbound).tiers]
    return [(INBOUND_TOPIC, DELIVERY), (INDEX_TOPIC, INDEXER), (OUTBOUND_TOPIC, OUTBOUND),
            *tiers, (DLQ_TOPIC, None)]


async def _lag(config: Config, stores) -> list[dict]:
    queue = await stores.queue()
    return [{"topic": topic, "group": group, "lag": await queue.lag(topic, group or NO_GROUP)}
            for topic, group in consumers(config)]


async def _outbound(config: Config, stores) -> dict:
    from mailyard.store.metadata.base import OUTBOUND_DEFERRED, OUTBOUND_HELD, OUTBOUND_QUEUED

    metadata = await stores.metadata()
    counts = dict.fromkeys((OUTBOUND_QUEUED, OUTBOUND_DEFERRED, OUTBOUND_HELD), 0)
    after = ""
    while True:
        page = await metadata.list_outbound(OUTBOUND_PAGE, after)
        for entry in page:
            counts[entry.state] = counts.get(entry.state, 0) + 1
        if len(page) < OUTBOUND_PAGE:
            return counts
        after = page[-1].queue_id


async def _accounts(config: Config, stores) -> dict:
    metadata = await stores.metadata()
    return {"users": len(await metadata.list_users()),
            "domains": len(await metadata.list_domains())}


# --- storage -----------------------------------------------------------------

def _storage(config: Config) -> dict:
    """Bytes used by each embedded adapter's files; for a distributed one,
    the servers it points at (their own tools know their disk use)."""
    data, storage = config.data_path.resolve(), config.storage
    embedded = {("queue", "sqlite"): lambda: _sqlite(data / "queue.db"),
                ("metadata", "sqlite"): lambda: _sqlite(data / "metadata.db"),
                ("blobs", "fs"): lambda: _directory(data / "blobs"),
                ("search", "fts5"): lambda: _sqlite(data / "search.db"),
                ("cache", "memory"): lambda: {"where": "in each process's memory"}}
    remote = {"kafka": lambda: {"servers": list(config.kafka.bootstrap_servers)},
              "cassandra": lambda: {"servers": [f"{host}:{config.cassandra.port}"
                                                for host in config.cassandra.contact_points],
                                    "keyspace": config.cassandra.keyspace},
              "s3": lambda: {"servers": [config.s3.endpoint_url], "bucket": config.s3.bucket},
              "redis": lambda: {"servers": [_without_password(config.redis.url)]},
              "opensearch": lambda: {"servers": [_without_password(h)
                                                 for h in config.opensearch.hosts],
                                     "index_prefix": config.opensearch.index_prefix},
              "elasticsearch": lambda: {"servers": [_without_password(h)
                                                    for h in config.elasticsearch.hosts],
                                        "index_prefix": config.elasticsearch.index_prefix}}
    found = {}
    for port in ("queue", "metadata", "blobs", "search", "cache"):
        adapter = getattr(storage, port)
        describe = embedded.get((port, adapter)) or remote.get(adapter)
        found[port] = {"adapter": adapter, **(describe() if describe else {})}
    return found


def _sqlite(path: Path) -> dict:
    """The database with its write-ahead log and shared-memory files."""
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return {"path": str(path), "bytes": sum(f.stat().st_size for f in files if f.exists())}


def _directory(path: Path) -> dict:
    total = count = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
                count += 1
            except FileNotFoundError:  # deleted while we walk
                pass
    return {"path": str(path), "bytes": total, "files": count}


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# --- the screen ----------------------------------------------------------------

def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_text(report: dict) -> str:
    lines = [f"mailyard {report['version']}  data dir {report['data_dir']}", "", "Services"]
    for service in report["services"]:
        state = service["state"] + (f" ({service['detail']})" if service.get("detail") else "")
        lines.append(f"  {service['name']:<12} {service['listen'] or '-':<22} {state}")

    lines += ["", "Queue lag (records the group has not committed)"]
    if "error" in report["lag"]:
        lines.append(f"  unavailable: {report['lag']['error']}")
    else:
        for row in report["lag"]:
            group = row["group"] or "(kept, no consumer)"
            lines.append(f"  {row['topic']:<30} {group:<20} {row['lag']:>8}")

    outbound = report["outbound_queue"]
    lines.append("")
    if "error" in outbound:
        lines.append(f"Outbound queue: unavailable: {outbound['error']}")
    else:
        lines.append("Outbound queue: " + ", ".join(f"{n} {s}" for s, n in outbound.items()))

    lines += ["", "Storage"]
    for port, used in report["storage"].items():
        where = used.get("path") or ", ".join(used.get("servers", [])) or used.get("where", "")
        size = _size(used["bytes"]) if "bytes" in used else ""
        if "files" in used:
            size += f" in {used['files']} files"
        lines.append(f"  {port:<9} {used['adapter']:<10} {where:<40} {size}".rstrip())

    accounts = report["accounts"]
    lines.append("")
    if "error" in accounts:
        lines.append(f"Accounts: unavailable: {accounts['error']}")
    else:
        lines.append(f"Users: {accounts['users']}  Domains: {accounts['domains']}")
    return "\n".join(lines) + "\n"
