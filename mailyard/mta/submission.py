"""SMTP submission (RFC 6409) for users' mail clients: the handler and the daemon.

Two listeners: `submission.listen` speaks STARTTLS and refuses everything
but EHLO, STARTTLS, NOOP and QUIT before it (530 5.7.0, RFC 3207), and
`submission.tls_listen` is TLS from the first byte (RFC 8314). Both require
AUTH before MAIL (530 5.7.0), so nobody relays without logging in; AUTH is
submission_auth.py. The checks and the sending are mta/submit.py's, the same
path the API's SendMessage takes: MAIL FROM must be the user's own address
or alias (553 5.7.1), at MAIL the hourly message limit and at RCPT the daily
recipient limit apply, and at end of DATA the From: is checked, then the
message is signed, its SENT copy stored and queued before `250`.
"""
from __future__ import annotations

import asyncio
import binascii
import collections
import logging
from base64 import b64decode

from aiosmtpd.smtp import MISSING, AuthResult, TLSSetupException

from mailyard.mta import tls
from mailyard.mta.abuse import DATA_CHECKS, DataContext
from mailyard.mta.dkim_sign import open_signer
from mailyard.mta.inbound import TEMPFAIL
from mailyard.mta.smtp import EnhancedSMTP
from mailyard.mta.submission_auth import (BLOCKED, INVALID, TOKEN_ERROR, Authenticator,
                                          parse_oauthbearer, parse_plain, parse_xoauth2)
from mailyard.mta.submit import Submission, Trace
from mailyard.policy import metrics
from mailyard.policy.config import Config, parse_listen
from mailyard.policy.logs import EventLog
from mailyard.store.submitter import SubmitUnavailable

AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure"
# aiosmtpd sets its own deprecated Session.login_data on every successful
# AUTH and logs a warning about it; we read session.auth_data only.
logging.getLogger("mail.log").addFilter(
    lambda record: "login_data is deprecated" not in record.getMessage())
# Commands that need a logged-in user on these ports.
NEEDS_AUTH = frozenset({"MAIL", "RCPT", "DATA", "VRFY"})
# RFC 4954 4: an AUTH line (a bearer token in it) may take 12288 octets.
AUTH_LINE_LIMIT = 12288


def _refused(reply: str) -> AuthResult:
    """A failed AUTH that smtp_AUTH answers with `reply`."""
    return AuthResult(success=False, handled=False, message=reply)


def _peer_ip(session) -> str:
    peer = session.peer
    return peer[0] if isinstance(peer, tuple) else str(peer or "unknown")


async def line_too_long(ctx: DataContext) -> str | None:
    """The MX's reader refuses such lines itself; ours reads AUTH lines of
    up to 12288 octets, so message lines are measured here (RFC 5322 2.1.1)."""
    limit = ctx.config.mx.max_line_length
    if any(len(line) > limit for line in ctx.content.split(b"\r\n")):
        return f"500 5.5.2 Line too long: more than {limit} octets (RFC 5321 4.5.3.1.6)"
    return None


class SubmissionHandler:
    def __init__(self, config: Config, submission: Submission, auth: Authenticator,
                 log: EventLog):
        self.config, self.submission, self.auth, self.log = config, submission, auth, log

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_exception(self, error: Exception) -> str:
        """One log line instead of aiosmtpd's traceback and exception text to
        the client: a broken-off STARTTLS handshake is routine, anything else
        a bug of ours, answered 451 so the client retries."""
        if isinstance(error, TLSSetupException):
            self.log.info("tls_handshake_failed", error=repr(error.__cause__))
            return "421 4.7.0 TLS handshake failed"
        self.log.error("session_failed", error=repr(error))
        return TEMPFAIL

    # --- AUTH mechanisms (aiosmtpd calls auth_<NAME>(server, args)) ------
    async def _response(self, server, args: list[str]) -> bytes | None:
        """The client's SASL response: the initial one on the AUTH line ("="
        is an empty one, RFC 4954), else the answer to an empty challenge.
        None when the client aborted or sent bad base64 (already answered)."""
        if len(args) > 1:
            if args[1] == "=":
                return b""
            try:
                return b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Cannot decode base64")
                return None
        blob = await server.challenge_auth("")
        return None if blob is MISSING else blob

    async def _login(self, server, mechanism: str, login: str, check,
                     token: bool = False) -> AuthResult:
        """Runs `check()` (the user the credentials log in, or None) unless
        this client or login is blocked, and counts a failure."""
        client = _peer_ip(server.session)
        if await self.auth.blocked(client, login):
            self.log.info("auth_blocked", client=client, login=login)
            return _refused(BLOCKED)
        try:
            user = await check()
        except Exception as exc:  # a store outage is not a wrong password
            self.log.error("auth_check_failed", client=client, error=repr(exc))
            return _refused(AUTH_TEMPFAIL)
        if user is None:
            await self.auth.failed(client, login, mechanism)
            # A token's error goes in a challenge the client answers (empty,
            # or ^A) before the final reply (RFC 7628 3.2.3).
            if token and await server.challenge_auth(TOKEN_ERROR) is MISSING:
                return AuthResult(success=False, handled=True)
            return _refused(INVALID)
        self.log.info("authenticated", client=client, user=user, mechanism=mechanism)
        return AuthResult(success=True, auth_data=user)

    async def _password(self, server, mechanism: str, login: str, password: str) -> AuthResult:
        return await self._login(server, mechanism, login,
                                 lambda: self.auth.password_user(login, password))

    async def _token(self, server, mechanism: str, claimed: str, token: str) -> AuthResult:
        return await self._login(server, mechanism, claimed,
                                 lambda: self.auth.token_user(claimed, token), token=True)

    async def auth_PLAIN(self, server, args) -> AuthResult:
        data = await self._response(server, args)
        if data is None:
            return AuthResult(success=False, handled=True)
        credentials = parse_plain(data)
        if credentials is None:
            return _refused("501 5.5.2 Malformed PLAIN response")
        return await self._password(server, "PLAIN", *credentials)

    async def auth_LOGIN(self, server, args) -> AuthResult:
        login = await self._response(server, args) if len(args) > 1 else \
            await server.challenge_auth("Username:")
        if login is None or login is MISSING:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._password(server, "LOGIN", login.decode("utf-8", "replace"),
                                    password.decode("utf-8", "replace"))

    async def auth_XOAUTH2(self, server, args) -> AuthResult:
        data = await self._response(server, args)
        if data is None:
            return AuthResult(success=False, handled=True)
        parsed = parse_xoauth2(data)
        if parsed is None:
            return _refused("501 5.5.2 Malformed XOAUTH2 response")
        return await self._token(server, "XOAUTH2", *parsed)

    async def auth_OAUTHBEARER(self, server, args) -> AuthResult:
        data = await self._response(server, args)
        if data is None:
            return AuthResult(success=False, handled=True)
        parsed = parse_oauthbearer(data)
        if parsed is None:
            return _refused("501 5.5.2 Malformed OAUTHBEARER response")
        return await self._token(server, "OAUTHBEARER", *parsed)

    # --- the transaction -------------------------------------------------
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        user = session.auth_data
        refusal = (self.submission.sender_refusal(user, address)
                   or await self.submission.limits.take_message(user))
        if refusal:
            self.log.info("mail_refused", user=user, from_=address, reply=refusal.reply)
            metrics.refused("submission", "mail", refusal.kind, refusal.reply, _peer_ip(session))
            return refusal.reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        user = session.auth_data
        if len(envelope.rcpt_tos) >= self.config.submission.max_recipients:
            return "452 4.5.3 Too many recipients"
        try:
            refusal = await self.submission.recipient_refusal(address)
        except Exception as exc:  # a store outage must not look like "no such user"
            self.log.error("rcpt_check_failed", rcpt=address, error=repr(exc))
            return TEMPFAIL
        refusal = refusal or await self.submission.limits.take_recipients(user, 1)
        if refusal:
            self.log.info("rcpt_refused", user=user, rcpt=address, reply=refusal.reply)
            metrics.refused("submission", "rcpt", refusal.kind, refusal.reply, _peer_ip(session))
            return refusal.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope):
        user = session.auth_data
        content = envelope.original_content
        data_ctx = DataContext(content, self.config)
        for check in (line_too_long, *DATA_CHECKS):
            reply = await check(data_ctx)
            if reply:
                self.log.info("data_refused", user=user, check=check.__name__, reply=reply)
                metrics.refused("submission", "data", check.__name__, reply, _peer_ip(session))
                return reply
        refusal = self.submission.header_refusal(user, content)
        if refusal:
            self.log.info("data_refused", user=user, reply=refusal.reply)
            metrics.refused("submission", "data", refusal.kind, refusal.reply, _peer_ip(session))
            return refusal.reply
        smtputf8 = "SMTPUTF8" in (o.upper() for o in envelope.mail_options)
        trace = Trace(helo=session.host_name or "", client_ip=_peer_ip(session),
                      protocol="UTF8SMTPSA" if smtputf8 else "ESMTPSA",
                      tls_info=tls.describe(session))
        try:
            submitted = await self.submission.deliver(user, envelope.mail_from,
                                                      envelope.rcpt_tos, content, trace, smtputf8)
        except SubmitUnavailable:
            return TEMPFAIL
        metrics.messages_accepted.labels("submission").inc()
        return f"250 2.0.0 Ok: queued as {submitted.queue_id}"


class SubmissionSMTP(EnhancedSMTP):
    """AUTH required on every connection (aiosmtpd's own `auth_required` also
    insists on STARTTLS, which an implicit-TLS socket never issues), and an
    implicit-TLS session recorded as TLS for Received:."""

    def __init__(self, handler, *args, implicit_tls: bool = False, **kwargs):
        self.implicit_tls = implicit_tls
        super().__init__(handler, *args, line_length_limit=AUTH_LINE_LIMIT + 2, **kwargs)
        # Our own table (aiosmtpd's is shared by every instance), so only AUTH
        # lines may be that long; message lines are checked in handle_DATA.
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit,
                                                           {"AUTH": AUTH_LINE_LIMIT})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object") if self.implicit_tls else None
        if ssl_object is not None and self.session.ssl is None:
            self.session.ssl = {"ssl_object": ssl_object}

    async def check_auth_needed(self, caller_method: str) -> bool:
        if caller_method in NEEDS_AUTH and not self.session.authenticated:
            await self.push("530 5.7.0 Authentication required")
            return True
        return False


def make_smtp_factory(config: Config, handler: SubmissionHandler, tls_context,
                      implicit_tls: bool):
    def factory() -> SubmissionSMTP:
        return SubmissionSMTP(
            handler, implicit_tls=implicit_tls,
            data_size_limit=config.submission.max_message_size, enable_SMTPUTF8=True,
            decode_data=False, hostname=config.hostname, ident="mailyard ESMTP submission",
            timeout=config.submission.idle_timeout,
            # 587: STARTTLS first, and AUTH only inside it; 465: TLS already.
            tls_context=None if implicit_tls else tls_context,
            require_starttls=not implicit_tls, auth_require_tls=not implicit_tls)
    return factory


async def serve(config: Config, stores, stop: asyncio.Event, ready=None) -> None:
    """Runs both listeners until `stop`; `ready(address)` names the STARTTLS
    one, `ready(address, "submissions")` the implicit-TLS one."""
    log = EventLog("submission")
    metadata, cache = await stores.metadata(), await stores.cache()
    submission = Submission(config, metadata, await stores.blobs(), await stores.queue(), cache,
                            open_signer(config, log), log)
    handler = SubmissionHandler(config, submission, Authenticator(config, metadata, cache, log),
                                log)
    context = tls.certificate_context(config)
    loop = asyncio.get_running_loop()
    servers = []
    for listen, implicit, label in ((config.submission.listen, False, "submission"),
                                    (config.submission.tls_listen, True, "submissions")):
        host, port = parse_listen(listen)
        server = await loop.create_server(
            make_smtp_factory(config, handler, context, implicit), host, port,
            reuse_address=True, ssl=context if implicit else None)
        servers.append(server)
        address = server.sockets[0].getsockname()
        log.info("listening", address=f"{address[0]}:{address[1]}",
                 tls="implicit" if implicit else "starttls")
        if ready and implicit:
            ready(address, label)
        elif ready:
            ready(address)
    await stop.wait()
    for server in servers:
        server.close()
    try:
        await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in servers)), timeout=10)
    except asyncio.TimeoutError:
        log.warning("sessions_cut_at_shutdown")
    log.info("stopped")
