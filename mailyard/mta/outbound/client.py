"""The SMTP client side of one connection (aiosmtplib): connect to the first
host of a route that answers, EHLO, opportunistic STARTTLS, then any number of
transactions, each giving one Outcome per recipient.

Replies map onto outcomes as Postfix's smtp client does: 2xx delivered, 4xx
deferred, 5xx failed, per recipient at RCPT and for all accepted ones at the
end of DATA; a connection that breaks defers what it was carrying.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aiosmtplib

from mailyard.mta.dns import DnsTempError, Resolver
from mailyard.mta.outbound import outcome
from mailyard.mta.outbound.outcome import Outcome
from mailyard.mta.outbound.routing import Route, RouteError, addresses
from mailyard.policy.config import Config

# What ends a transaction with no reply to go by (replies are handled where they come).
_BROKEN = (aiosmtplib.SMTPException, ConnectionError, asyncio.TimeoutError, ssl.SSLError)


@dataclass(frozen=True)
class Settings:
    helo: str
    connect_timeout: float
    command_timeout: float
    tls_policy: str                  # "may", "encrypt", "verify" or "none"
    tls_context: ssl.SSLContext | None

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        out = config.outbound
        context = None
        if out.tls_policy == "verify":
            context = ssl.create_default_context(cafile=out.tls_ca_file or None)
        elif out.tls_policy in ("may", "encrypt"):
            # RFC 7435: unauthenticated encryption beats none; MX certificates
            # are mostly unverifiable, so "may" never refuses one.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return cls(out.helo_name or config.hostname, out.connect_timeout, out.command_timeout,
                   out.tls_policy, context)


@dataclass
class Message:
    queue_id: str
    mail_from: str       # "" for the null sender
    rcpts: list[str]
    raw: bytes
    smtputf8: bool = False


class SessionError(Exception):
    """This host could not be used; the next one may be. Never final by
    itself: a host that is down or refuses to talk defers the mail."""

    def __init__(self, reason: str, status: str = "4.4.1"):
        super().__init__(reason)
        self.reason, self.status = reason, status


class Session:
    """An open connection to one host, ready for a transaction."""

    def __init__(self, smtp: aiosmtplib.SMTP, host: str, address: str):
        self.smtp, self.host, self.address = smtp, host, address
        self.sent = 0
        self.broken = False

    @property
    def peer(self) -> str:
        return f"{self.host}[{self.address}]"

    @property
    def tls(self) -> str | None:
        """The TLS version in use, None for plain text."""
        ssl_object = self.smtp.get_transport_info("ssl_object")
        return ssl_object.version() if ssl_object else None

    @property
    def usable(self) -> bool:
        return not self.broken and self.smtp.is_connected

    async def send(self, message: Message) -> dict[str, Outcome]:
        """One transaction. Returns an Outcome for every recipient; never raises
        for what the server says or a broken connection."""
        self.sent += 1
        results: dict[str, Outcome] = {}
        smtp = self.smtp
        options = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(message.raw)}")
        if message.smtputf8:
            if not smtp.supports_extension("smtputf8"):
                return self._all(message.rcpts, outcome.failed(
                    "5.6.7", f"SMTPUTF8 is required, but was not offered by {self.peer}",
                    self.host))
            options.append("SMTPUTF8")
        if smtp.supports_extension("8bitmime") and not message.raw.isascii():
            options.append("BODY=8BITMIME")
        encoding = "utf-8" if message.smtputf8 else "ascii"
        try:
            try:
                await smtp.mail(message.mail_from, options=options, encoding=encoding)
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset(exc.code)
                return self._all(message.rcpts, outcome.from_reply(exc.code, exc.message,
                                                                   self.host))
            accepted = []
            for rcpt in message.rcpts:
                try:
                    await smtp.rcpt(rcpt, encoding=encoding)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPResponseException as exc:
                    results[rcpt] = outcome.from_reply(exc.code, exc.message, self.host)
                    if exc.code == 421:  # the server is closing: the rest must wait
                        self.broken = True
                        return {**self._all(message.rcpts, results[rcpt]), **results}
                except (ValueError, UnicodeEncodeError) as exc:
                    results[rcpt] = outcome.failed("5.1.3", f"bad recipient address: {exc}")
            if not accepted:
                await self._reset(0)
                return results
            try:
                reply = await smtp.data(message.raw)
                done = outcome.from_reply(reply.code, reply.message, self.host)
            except aiosmtplib.SMTPResponseException as exc:
                done = outcome.from_reply(exc.code, exc.message, self.host)
                await self._reset(exc.code)
            return {**results, **self._all(accepted, done)}
        except (ValueError, UnicodeEncodeError) as exc:  # an unsendable sender address
            await self._reset(0)
            return self._all(message.rcpts, outcome.failed("5.1.7", f"bad sender address: {exc}"))
        except _BROKEN as exc:
            self.broken = True
            lost = outcome.deferred("4.4.2", f"lost connection with {self.peer}: "
                                              f"{_describe(exc)}", self.host)
            return {**self._all(message.rcpts, lost), **results}

    async def close(self) -> None:
        if self.smtp.is_connected:
            try:
                await asyncio.wait_for(self.smtp.quit(), 5)
            except Exception:
                self.smtp.close()

    async def _reset(self, code: int) -> None:
        """Makes the connection ready for the next transaction, or marks it broken."""
        if code == 421 or not self.smtp.is_connected:
            self.broken = True
            return
        try:
            await self.smtp.rset()
        except Exception:
            self.broken = True

    @staticmethod
    def _all(rcpts: list[str], result: Outcome) -> dict[str, Outcome]:
        return {rcpt: result for rcpt in rcpts}


async def open_session(resolver: Resolver, route: Route, settings: Settings) -> Session:
    """A session with the first host of the route that takes one; raises
    RouteError with why none did (deferred: the hosts may be back later)."""
    reasons, status = [], "4.4.1"
    for host in route.hosts:
        try:
            found = await addresses(resolver, host)
        except DnsTempError as exc:
            reasons.append(f"{host}: {exc}")
            continue
        if not found:
            reasons.append(f"{host}: no address")
            continue
        for address in found:
            try:
                return await _connect(host, address, route.port, settings)
            except SessionError as exc:
                reasons.append(exc.reason)
                status = exc.status
    raise RouteError(outcome.deferred(status, "; ".join(reasons) or "no host to deliver to"))


async def _connect(host: str, address: str, port: int, settings: Settings,
                   plain: bool = False) -> Session:
    peer = f"{host}[{address}]:{port}"
    smtp = aiosmtplib.SMTP(hostname=address, port=port, local_hostname=settings.helo,
                           timeout=settings.command_timeout, start_tls=False)
    try:
        await smtp.connect(timeout=settings.connect_timeout)
    except aiosmtplib.SMTPConnectResponseError as exc:
        raise SessionError(f"{peer} refused to talk to us: {exc.code} {exc.message}",
                           "4.4.2") from None
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
        raise SessionError(f"connect to {peer}: {_describe(exc)}") from None
    try:
        await _hello(smtp)
        if plain or settings.tls_policy == "none":
            return Session(smtp, host, address)
        if not smtp.supports_extension("starttls"):
            if settings.tls_policy != "may":
                raise SessionError(f"TLS is required, but was not offered by {peer}", "4.7.4")
            return Session(smtp, host, address)
        try:
            await smtp.starttls(server_hostname=host, tls_context=settings.tls_context)
            await _hello(smtp)
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
            if settings.tls_policy != "may":
                raise SessionError(f"TLS with {peer} failed: {_describe(exc)}",
                                   "4.7.5") from None
            smtp.close()
            # Opportunistic: a failed handshake costs the encryption, not the mail.
            return await _connect(host, address, port, settings, plain=True)
        return Session(smtp, host, address)
    except SessionError:
        smtp.close()
        raise
    except aiosmtplib.SMTPResponseException as exc:
        smtp.close()
        raise SessionError(f"{peer} refused our EHLO: {exc.code} {exc.message}",
                           "4.4.2") from None
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
        smtp.close()
        raise SessionError(f"{peer}: {_describe(exc)}", "4.4.2") from None


async def _hello(smtp: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO for a server that does not know EHLO."""
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        if exc.code in (500, 502) and smtp.is_connected:
            await smtp.helo()
        else:
            raise


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
