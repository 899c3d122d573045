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
from dataclasses import dataclass, field

from aiosmtpd.smtp import TLSSetupException

from mailyard.mta import abuse, tls
from mailyard.mta.abuse import CONNECT_CHECKS, DATA_CHECKS, MAIL_CHECKS, ClientContext, DataContext
from mailyard.mta.dns import Resolver, open_resolver
from mailyard.mta.ids import new_queue_id
from mailyard.mta.recipients import limits_for, resolve, sender_blocked, split_address
from mailyard.mta.malware import Decision, MalwareScanner
from mailyard.mta.senderauth import QUARANTINE, authenticate
from mailyard.mta.smtp import EnhancedSMTP
from mailyard.policy import metrics
from mailyard.policy.config import Config, parse_listen
from mailyard.policy.logs import EventLog
from mailyard.policy.mx_workers import LISTEN_ENV
from mailyard.proto import events_pb2
from mailyard.store.blobs.base import BlobStore
from mailyard.store.cache.base import Cache
from mailyard.store.metadata.base import MetadataStore
from mailyard.store import trace
from mailyard.store.queue.base import Queue
from mailyard.store.quota import usage_of
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
    tls: bool = False                 # the session is encrypted (STARTTLS)
    accepted: list[str] = field(default_factory=list)  # recipients accepted so far
    declared_size: int = 0            # MAIL FROM's SIZE= (RFC 1870), 0 when absent
    targets: list[str] = field(default_factory=list)   # set by unknown_user: local users


async def too_many_recipients(ctx: RcptContext) -> str | None:
    if ctx.already >= ctx.config.mx.max_recipients:
        return "452 4.5.3 Too many recipients"
    return None


async def relay_denied(ctx: RcptContext) -> str | None:
    local, domain = split_address(ctx.address)
    if not local or not domain or not await ctx.metadata.has_domain(domain):
        return "550 5.7.1 Relay access denied"
    return None


async def tls_required(ctx: RcptContext) -> str | None:
    policy = ctx.config.domains.get(split_address(ctx.address)[1])
    if policy is not None and policy.require_tls and not ctx.tls:
        return "530 5.7.0 Must issue a STARTTLS command first"
    return None


async def sender_blocklisted(ctx: RcptContext) -> str | None:
    policy = ctx.config.domains.get(split_address(ctx.address)[1])
    if policy is not None and sender_blocked(policy, ctx.mail_from, ctx.client_ip):
        return "550 5.7.1 Sender refused by the recipient domain's policy"
    return None


async def over_domain_limits(ctx: RcptContext) -> str | None:
    """The recipient's own limits (domain or user policy): how many of the
    transaction's recipients may share its domain, how large a declared size."""
    limits = limits_for(ctx.config, ctx.address)
    domain = split_address(ctx.address)[1]
    if sum(split_address(a)[1] == domain for a in ctx.accepted) >= limits.max_recipients:
        return f"452 4.5.3 Too many recipients at {domain} in one message"
    if ctx.declared_size > limits.max_message_size:
        return "552 5.3.4 Message size exceeds fixed maximum message size"
    return None


async def unknown_user(ctx: RcptContext) -> str | None:
    """Resolves aliases, lists, user+tag and the catch-all to local users."""
    ctx.targets = await resolve(ctx.config, ctx.metadata, ctx.address)
    if not ctx.targets:
        return "550 5.1.1 No such user here"
    return None


async def over_quota(ctx: RcptContext) -> str | None:
    """452 4.2.2 (temporary: the sender retries, nothing bounces at once)
    when every local user the address reaches is full, or would be with the
    declared SIZE."""
    for target in ctx.targets:
        usage = await usage_of(ctx.metadata, ctx.config.quota, target)
        if not usage.over and not (usage.limit and usage.used + ctx.declared_size > usage.limit):
            return None
    return "452 4.2.2 Mailbox full, please try again later" if ctx.targets else None


# Greylisting comes last: an unknown user gets its 550 at once, not a 451 first.
RCPT_CHECKS = (too_many_recipients, relay_denied, tls_required, sender_blocklisted,
               over_domain_limits, unknown_user, over_quota, abuse.greylisted)


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
        self.malware = (MalwareScanner(config.antivirus, cache, self.log)
                        if config.antivirus.enabled else None)

    def _client(self, session, mail_from: str = "") -> ClientContext:
        return ClientContext(_peer_ip(session), self.config, self.cache, self.resolver,
                             self.log, mail_from)

    async def _first_refusal(self, checks, ctx, event: str, stage: str) -> str | None:
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
                metrics.refused("mx", stage, check.__name__, reply, ctx.client_ip)
                return reply
        return None

    async def connect_check(self, server, session) -> str | None:
        """Called by EnhancedSMTP before the greeting; a reply here closes the session."""
        if self.cache is None:
            return None
        return await self._first_refusal(CONNECT_CHECKS, self._client(session),
                                         "connection_refused", "connect")

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

    async def _trace(self, queue_id: str, session, envelope, raw: bytes, verdict) -> None:
        at_ms = trace.now_ms()
        steps = [trace.step(queue_id, trace.ACCEPTED, at_ms=at_ms,
                            from_=envelope.mail_from or "<>",
                            client_ip=_peer_ip(session), helo=session.host_name,
                            tls=tls.describe(session) or "none", size=len(raw),
                            rcpt_to=",".join(envelope.rcpt_tos))]
        if verdict is not None:
            steps.append(trace.step(
                queue_id, trace.AUTHENTICATED, at_ms=at_ms, spf=verdict.spf.result,
                dkim=",".join(d.result for d in verdict.dkim) or "none",
                dmarc=verdict.dmarc.result, arc=verdict.arc.result, action=verdict.action))
        steps.append(trace.step(queue_id, trace.QUEUED, at_ms=at_ms, topic=INBOUND_TOPIC,
                                for_=",".join(getattr(envelope, "local_users", []))))
        await trace.record(self.metadata, self.log, steps, [trace.message_id_of(raw)])

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        # aiosmtpd pipelines already; it just does not say so.
        return responses[:-1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.cache is not None:
            reply = await self._first_refusal(MAIL_CHECKS, self._client(session, address),
                                              "mail_refused", "mail")
            if reply:
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        ctx = RcptContext(address, len(envelope.rcpt_tos), self.config, self.metadata,
                          envelope.mail_from or "", _peer_ip(session), self.cache,
                          tls=bool(session.ssl), accepted=list(envelope.rcpt_tos),
                          declared_size=_declared_size(envelope.mail_options))
        try:
            for check in RCPT_CHECKS:
                reply = await check(ctx)
                if reply:
                    self.log.info("rcpt_refused", client=_peer_ip(session), rcpt=address,
                                  reply=reply)
                    metrics.refused("mx", "rcpt", check.__name__, reply, _peer_ip(session))
                    return reply
        except Exception as exc:  # a store outage must not look like "no such user"
            self.log.error("rcpt_check_failed", rcpt=address, error=repr(exc))
            return TEMPFAIL
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        # Who it reaches, resolved now: the policy of this session's RCPT holds.
        envelope.local_users = list(dict.fromkeys(
            [*getattr(envelope, "local_users", []), *ctx.targets]))
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
                metrics.refused("mx", "data", check.__name__, reply, client_ip)
                return reply
        if any(len(content) > limits_for(self.config, r).max_message_size
               for r in envelope.rcpt_tos):
            self.log.info("data_refused", queue_id=queue_id, client=client_ip,
                          check="domain_max_message_size", size=len(content))
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        scanned = Decision()
        if self.malware is not None:
            scanned = await self.malware.decide(content, queue_id)
            if scanned.reply:
                return scanned.reply
        quarantine = scanned.quarantine
        verdict = None
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
                metrics.refused("mx", "data", f"authentication_{verdict.action}", verdict.reply,
                                client_ip)
                return verdict.reply
            quarantine = quarantine or verdict.action == QUARANTINE
            content = verdict.header + verdict.message
        content = scanned.header + content
        # Lists too eager to refuse on only add spam points (the spam stage reads them).
        dnsbl_listed = []
        if (self.config.dnsbl.score_zones and self.resolver is not None
                and not abuse.is_trusted(client_ip, self.config)):
            dnsbl_listed = await abuse.listed_in(self.resolver, client_ip,
                                                 self.config.dnsbl.score_zones, self.log)
        if session.ssl:
            protocol += "S"  # ESMTPS, UTF8SMTPS (RFC 3848, RFC 6531)
        raw = received_header(helo=session.host_name or "", client_ip=client_ip,
                              hostname=self.config.hostname, queue_id=queue_id,
                              protocol=protocol, rcpts=envelope.rcpt_tos, when=now,
                              tls_info=tls.describe(session))
        raw += content
        try:
            # Not queued, not accepted: the sender retries, and spool_and_queue
            # drops the spool link, so the collector frees the blob.
            await spool_and_queue(self.blobs, self.metadata, self.queue, raw, gc=self.config.gc,
                                  envelope=events_pb2.InboundEnvelope(
                queue_id=queue_id, mail_from=envelope.mail_from or "",
                rcpt_to=getattr(envelope, "local_users", envelope.rcpt_tos),
                received_at_ms=int(now * 1000),
                client_ip=client_ip, helo=session.host_name or "", smtputf8=smtputf8,
                quarantine=quarantine, dnsbl_listed=dnsbl_listed))
        except Exception as exc:
            self.log.error("queue_failed", queue_id=queue_id, error=repr(exc))
            return TEMPFAIL
        self.log.info("accepted", queue_id=queue_id, client=client_ip,
                      from_=envelope.mail_from or "<>", rcpts=len(envelope.rcpt_tos),
                      size=len(raw))
        await self._trace(queue_id, session, envelope, raw, verdict)
        metrics.messages_accepted.labels("mx").inc()
        return f"250 2.0.0 Ok: queued as {queue_id}"


def _declared_size(mail_options: list[str]) -> int:
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


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
