"""Remote SMTP servers for the outbound tests: aiosmtpd in a thread on a
loopback address of their own (127.0.0.2, 127.0.0.3, ...), with scripted
answers, recording every connection and every message as received."""
from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    tls: bool
    connection: int


class _Server(SMTP):
    receiver: "Receiver"

    def connection_made(self, transport) -> None:
        if self._original_transport is None:  # not the TLS upgrade of a connection
            self.receiver._opened(self)
        super().connection_made(transport)

    def connection_lost(self, error) -> None:
        self.receiver._closed()
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, receiver: "Receiver", **kwargs):
        self.receiver = receiver
        super().__init__(receiver, **kwargs)

    def factory(self):
        server = _Server(self.handler, **self.SMTP_kwargs)
        server.receiver = self.receiver
        return server


class Receiver:
    """`rcpt(address, tries)` and `data(rcpts)` return a reply to refuse with,
    or None to accept; `tries` counts the RCPTs of that address so far,
    this one included. `data_delay` seconds pass between keeping a message
    at the end of DATA and answering 250."""

    def __init__(self, host: str, port: int, *, rcpt: Callable[[str, int], str | None] = None,
                 data: Callable[[list[str]], str | None] = None, data_delay: float = 0.0,
                 tls_cert: tuple[Path, Path] | None = None, smtputf8: bool = True):
        self.host, self.port = host, port
        self.rcpt_rule, self.data_rule, self.data_delay = rcpt, data, data_delay
        self.messages: list[Received] = []
        self.rcpt_tries: Counter[str] = Counter()
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self._lock = threading.Lock()
        # id(server) -> (server, connection number); holding the server keeps its id unique
        self._connection_of: dict[int, tuple[object, int]] = {}
        kwargs = {}
        if tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls_cert)
            kwargs["tls_context"] = context
        self._controller = _Controller(self, hostname=host, port=port, decode_data=False,
                                       enable_SMTPUTF8=smtputf8, ready_timeout=10, **kwargs)

    def __enter__(self) -> "Receiver":
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()

    # --- what the tests read ---
    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            assert time.monotonic() < deadline, \
                f"{self.host} received {len(self.messages)} of {count} messages"
            time.sleep(0.05)
        return list(self.messages)

    # --- aiosmtpd ---
    def _opened(self, server) -> None:
        with self._lock:
            self.open += 1
            self.max_open = max(self.max_open, self.open)

    def _closed(self) -> None:
        with self._lock:
            self.open -= 1

    def _greeted(self, server) -> None:
        """Connections count from their first EHLO or HELO: the controller's
        own probe at start says nothing, and STARTTLS brings a second EHLO."""
        with self._lock:
            if id(server) not in self._connection_of:
                self.connections += 1
                self._connection_of[id(server)] = (server, self.connections)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self._greeted(server)
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):
        session.host_name = hostname
        self._greeted(server)
        return f"250 {server.hostname}"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self._lock:
            self.rcpt_tries[address] += 1
            tries = self.rcpt_tries[address]
        refusal = self.rcpt_rule(address, tries) if self.rcpt_rule else None
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        refusal = self.data_rule(list(envelope.rcpt_tos)) if self.data_rule else None
        if refusal:
            return refusal
        # Like a real MTA: the message is kept at the end of DATA, and the
        # reply may take a while to reach the client, or never do.
        _, connection = self._connection_of.get(id(server), (None, 0))
        self.messages.append(Received(
            envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
            tls=session.ssl is not None, connection=connection))
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 2.0.0 Ok: queued"
