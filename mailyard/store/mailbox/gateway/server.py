"""The gateway service: uvicorn serving the app on `gateway.listen`.

It runs its own MailboxService over the process's shared stores, so under
`mailyard up` it shares the inbox cache and change signals with the gRPC
service and the delivery worker. The launcher owns the signals, so uvicorn's
own handlers are switched off; the socket is bound here so a port in use is
a plain error at start.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import uvicorn

from mailyard.policy.config import Config, parse_listen
from mailyard.policy.logs import EventLog
from mailyard.policy.tls import listener_mode, server_context
from mailyard.store.mailbox.gateway.app import create_app
from mailyard.store.mailbox.service import MailboxService


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # SIGINT/SIGTERM belong to the launcher, which sets `stop`


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _tls_settings(config: Config) -> dict:
    """uvicorn's TLS options for [gateway.tls]; none for plaintext. The files
    are loaded first by policy/tls.py, whose errors name the setting."""
    settings = config.gateway.tls
    if server_context(settings, "gateway.tls") is None:
        return {}
    options = {"ssl_certfile": settings.cert_file, "ssl_keyfile": settings.key_file}
    if settings.client_ca_file:
        options.update(ssl_ca_certs=settings.client_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


async def serve(config: Config, stores, stop: asyncio.Event, ready=None, searcher=None,
                submitter=None, sampler=None, spam_feedback=None) -> None:
    log = EventLog("gateway")
    metadata = await stores.metadata()
    service = MailboxService(config, metadata, await stores.blobs(), await stores.cache(),
                             await stores.queue(), log, searcher, submitter, spam_feedback)
    host, port = parse_listen(config.gateway.listen)
    sock = _bind(host, port)
    app = create_app(service, metadata, sampler, config.gateway.operator_networks)
    server = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                    **_tls_settings(config)))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("the gateway stopped while starting")
        await asyncio.sleep(0.02)
    bound = sock.getsockname()[1]
    log.info("listening", address=f"{host}:{bound}", tls=listener_mode(config.gateway.tls))
    if ready:
        ready((host, bound))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, task], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    service.stopping.set()
    server.should_exit = True
    await task
    sock.close()
    log.info("stopped")
