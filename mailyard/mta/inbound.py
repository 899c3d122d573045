"""The inbound MX: accepts mail for local users and queues it durably.

The protocol machine is aiosmtpd's; this module is its handler. Each check is
a small function that returns a reply or None, run in order, so a policy reads
like the RFC and tests need no socket. `250` is said only once the raw message
is in the BlobStore spool and its envelope is acknowledged by the Queue.
"""
from __future__ import annotations

import asyncio
import email.utils
import os
import time
import traceback
from dataclasses import dataclass

from aiosmtpd.smtp import TLSSetupException

from mailyard.mta import abuse, tls
from mailyard.mta.abuse import CONNECT_CHECKS, DATA_CHECKS, MAIL_CHECKS, ClientContext, DataContext
from mailyard.mta.dns import Resolver, open_resolver
from mailyard.mta.ids import new_queue_id
from mailyard.mta.senderauth import QUARANTINE, authenticate
from mailyard.mta.smtp import EnhancedSMTP
from mailyard.policy.config import Config, parse_listen
from mailyard.policy.logs import EventLog
from mailyard.policy.mx_workers import LISTEN_ENV
from mailyard.proto import events_pb2
from mailyard.store.blobs.base import BlobStore
from mailyard.store.cache.base import Cache
from mailyard.store.metadata.base import MetadataStore
from mailyard.store.queue.base import Queue
from mailyard.store.spool import INBOUND_TOPIC, spool_and_queue  # noqa: F401 (INBOUND_TOPIC re-exported)

TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"


@dataclass
class RcptContext:
    address: str
    already: int                      # recipients accepted so far in this transaction
    config: Config
    metadata: MetadataStore
    mail_from: str = ""
    client_ip: str = ""
    cache: Cache | None = None


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower().rstrip(".")


async def too_many_recipients(ctx: RcptContext) -> str | None:
    if ctx.already >= ctx.config.mx.max_recipients:
        return "452 4.5.3 Too many recipients"
    return None


async def relay_denied(ctx: RcptContext) -> str | None:
    local, domain = split_address(ctx.address)
    if not local or not domain or not await ctx.metadata.has_domain(domain):
        return "550 5.7.1 Relay access denied"
    return None


async def unknown_user(ctx: RcptContext) -> str | None:
    if await ctx.metadata.get_user(ctx.address.lower()) is None:
        return "550 5.1.1 No such user here"
    return None


# Greylisting comes last: an unknown user gets its 550 at once, not a 451 first.
RCPT_CHECKS = (too_many_recipients, relay_denied, unknown_user, abuse.greylisted)


def received_header(*, helo: str, client_ip: str, hostname: str, queue_id: str,
                    protocol: str, rcpts: list[str], when: float,
                    tls_info: str | None = None) -> bytes:
    """The trace header we prepend (RFC 5321 4.4). A single recipient is named
    in `for`; several are not, so one copy does not reveal the others. A TLS
    session's version and cipher go in a comment, as Postfix writes them."""
    # The HELO name is the client's free text: a bare CR in it would start a
    # header field of its own; like Postfix, show non-printables as "?".
    helo = "".join(c if c.isprintable() else "?" for c in helo)
    recipient = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
    date = email.utils.formatdate(when, localtime=False)
    using = f"\t(using {tls_info})\r\n" if tls_info else ""
    text = (f"Received: from {helo or 'unknown'} ([{client_ip}])\r\n{using}"
            f"\tby {hostname} (mailyard) with {protocol} id {queue_id}{recipient};\r\n"
            f"\t{date}\r\n")
    return text.encode("utf-8", "surrogateescape")


class InboundHandler:
    def __init__(self, config: Config, metadata: MetadataStore, blobs: BlobStore,
                 queue: Queue, log: EventLog | None = None, cache: Cache | None = None,
                 resolver: Resolver | None = None):
        self.config = config
        self.metadata = metadata
        self.blobs = blobs
        self.queue = queue
        self.log = log or EventLog("mx")
        self.cache = cache
        self.resolver = resolver

    def _client(self, session, mail_from: str = "") -> ClientContext:
        return ClientContext(_peer_ip(session), self.config, self.cache, self.resolver,
                             self.log, mail_from)

    async def _first_refusal(self, checks, ctx, event: str) -> str | None:
        """The first reply of `checks`; a check that fails (a cache outage)
        is skipped: abuse controls must not stop all mail."""
        for check in checks:
            try:
                reply = await check(ctx)
            except Exception as exc:
                self.log.error("check_failed", check=check.__name__, error=repr(exc))
                continue
            if reply:
                self.log.info(event, client=ctx.client_ip, check=check.__name__, reply=reply)
                return reply
        return None

    async def connect_check(self, server, session) -> str | None:
        """Called by EnhancedSMTP before the greeting; a reply here closes the session."""
        if self.cache is None:
            return None
        return await self._first_refusal(CONNECT_CHECKS, self._client(session),
                                         "connection_refused")

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's default logs a whole traceback and tells the client the
        Python exception. A TLS handshake the client broke off (scanners do it
        all day) is one info line; anything else is a bug of ours: one error
        line saying where, and a 451 so the sender retries."""
        if isinstance(error, TLSSetupException):
            self.log.info("tls_handshake_failed", error=repr(error.__cause__))
            return "421 4.7.0 TLS handshake failed"
        where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        self.log.error("session_failed", error=repr(error),
                       at=f"{os.path.basename(where.filename)}:{where.lineno}" if where else "")
        return TEMPFAIL

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        # aiosmtpd pipelines already; it just does not say so.
        return responses[:-1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.cache is not None:
            reply = await self._first_refusal(MAIL_CHECKS, self._client(session, address),
                                              "mail_refused")
            if reply:
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        ctx = RcptContext(address, len(envelope.rcpt_tos), self.config, self.metadata,
                          envelope.mail_from or "", _peer_ip(session), self.cache)
        try:
            for check in RCPT_CHECKS:
                reply = await check(ctx)
                if reply:
                    self.log.info("rcpt_refused", client=_peer_ip(session), rcpt=address,
                                  reply=reply)
                    return reply
        except Exception as exc:  # a store outage must not look like "no such user"
            self.log.error("rcpt_check_failed", rcpt=address, error=repr(exc))
            return TEMPFAIL
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope):
        queue_id = new_queue_id()
        now = time.time()
        smtputf8 = "SMTPUTF8" in (o.upper() for o in envelope.mail_options)
        protocol = ("UTF8SMTP" if smtputf8 else "ESMTP") if session.extended_smtp else "SMTP"
        client_ip = _peer_ip(session)
        content = envelope.original_content
        data_ctx = DataContext(content, self.config)
        for check in DATA_CHECKS:
            reply = await check(data_ctx)
            if reply:
                self.log.info("data_refused", queue_id=queue_id, client=client_ip,
                              check=check.__name__, reply=reply)
                return reply
        quarantine = False
        if self.config.authentication.enabled and self.resolver is not None:
            try:
                verdict = await authenticate(self.config, self.resolver, content,
                                             client_ip=client_ip, helo=session.host_name or "",
                                             mail_from=envelope.mail_from or "")
            except Exception as exc:
                self.log.error("authentication_failed", queue_id=queue_id, error=repr(exc))
                return TEMPFAIL
            self.log.info("authenticated", queue_id=queue_id, spf=verdict.spf.result,
                          dkim=",".join(d.result for d in verdict.dkim) or "none",
                          dmarc=verdict.dmarc.result, arc=verdict.arc.result,
                          action=verdict.action, forged_removed=verdict.forged_removed or None)
            if verdict.reply:
                return verdict.reply
            quarantine = verdict.action == QUARANTINE
            content = verdict.header + verdict.message
        if session.ssl:
            protocol += "S"  # ESMTPS, UTF8SMTPS (RFC 3848, RFC 6531)
        raw = received_header(helo=session.host_name or "", client_ip=client_ip,
                              hostname=self.config.hostname, queue_id=queue_id,
                              protocol=protocol, rcpts=envelope.rcpt_tos, when=now,
                              tls_info=tls.describe(session))
        raw += content
        try:
            # Not queued, not accepted: the sender retries, and spool_and_queue
            # drops the spool blob (unique to this queue id) so it cannot linger.
            await spool_and_queue(self.blobs, self.queue, raw, events_pb2.InboundEnvelope(
                queue_id=queue_id, mail_from=envelope.mail_from or "",
                rcpt_to=envelope.rcpt_tos, received_at_ms=int(now * 1000),
                client_ip=client_ip, helo=session.host_name or "", smtputf8=smtputf8,
                quarantine=quarantine))
        except Exception as exc:
            self.log.error("queue_failed", queue_id=queue_id, error=repr(exc))
            return TEMPFAIL
        self.log.info("accepted", queue_id=queue_id, client=client_ip,
                      from_=envelope.mail_from or "<>", rcpts=len(envelope.rcpt_tos),
                      size=len(raw))
        return f"250 2.0.0 Ok: queued as {queue_id}"


def _peer_ip(session) -> str:
    peer = session.peer
    return peer[0] if isinstance(peer, tuple) else str(peer or "unknown")


def make_smtp_factory(config: Config, handler: InboundHandler, tls_context=None):
    def factory() -> EnhancedSMTP:
        return EnhancedSMTP(handler, data_size_limit=config.mx.max_message_size,
                            enable_SMTPUTF8=True, decode_data=False,
                            hostname=config.hostname, ident="mailyard ESMTP",
                            timeout=config.mx.idle_timeout, tls_context=tls_context,
                            # a dot-stuffed line of max_line_length octets, and CRLF
                            line_length_limit=config.mx.max_line_length + 3)
    return factory


async def serve(config: Config, stores, stop: asyncio.Event, ready=None) -> None:
    """Runs the MX until `stop` is set, then stops accepting and lets the
    sessions in progress finish their transaction (up to a grace period)."""
    log = EventLog("mx")
    resolver = open_resolver(config.dns)
    handler = InboundHandler(config, await stores.metadata(), await stores.blobs(),
                             await stores.queue(), log, cache=await stores.cache(),
                             resolver=resolver)
    tls_context = tls.server_context(config)
    # An extra MX process binds the address its parent bound (mx_workers).
    host, port = parse_listen(os.environ.get(LISTEN_ENV) or config.mx.listen)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(make_smtp_factory(config, handler, tls_context), host,
                                      port, reuse_address=True,
                                      reuse_port=config.mx.processes > 1)
    address = server.sockets[0].getsockname()
    log.info("listening", address=f"{address[0]}:{address[1]}")
    if ready:
        ready(address)
    await stop.wait()
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), timeout=10)
    except asyncio.TimeoutError:
        log.warning("sessions_cut_at_shutdown")
    log.info("stopped")
