"""Who is submitting: SMTP AUTH for the submission daemon.

PLAIN (RFC 4616) and LOGIN check the users' argon2 password hashes; XOAUTH2
(Google's) and OAUTHBEARER (RFC 7628) check a bearer JWT exactly as the gRPC
API does (store/mailbox/auth.py). Failed attempts are counted per client IP
and per login name through the Cache; past `submission.auth_failures_per_ip`
or `..._per_user` within `auth_failure_window`, AUTH answers 454 4.7.0 (as
Gmail does for too many login attempts) without looking at the credentials,
so guessing stops paying until the window ends. A wrong password is 535 5.7.8.
"""
from __future__ import annotations

import asyncio
import json

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailyard.policy.config import Config
from mailyard.policy.logs import EventLog
from mailyard.store.cache.base import Cache
from mailyard.store.mailbox.auth import AuthError, TokenVerifier
from mailyard.store.metadata.base import MetadataStore

INVALID = "535 5.7.8 Authentication credentials invalid"
BLOCKED = "454 4.7.0 Too many failed login attempts, please try again later"


def parse_plain(data: bytes) -> tuple[str, str] | None:
    """RFC 4616: [authzid] NUL authcid NUL passwd. An authzid naming someone
    else is refused: nobody here may act for another user."""
    parts = data.split(b"\x00")
    if len(parts) != 3:
        return None
    authzid, login, password = (p.decode("utf-8", "replace") for p in parts)
    if authzid and authzid.lower() != login.lower():
        return None
    return login, password


def parse_xoauth2(data: bytes) -> tuple[str, str] | None:
    """user={address}^Aauth=Bearer {token}^A^A -> (address, token)."""
    fields = dict(p.split("=", 1) for p in data.decode("utf-8", "replace").split("\x01")
                  if "=" in p)
    scheme, _, token = fields.get("auth", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return fields.get("user", ""), token.strip()


def parse_oauthbearer(data: bytes) -> tuple[str, str] | None:
    """RFC 7628 3.1: gs2-header ("n,a=address,") then ^A-separated key=value
    pairs, auth=Bearer token among them -> (address or "", token)."""
    text = data.decode("utf-8", "replace")
    header, sep, rest = text.partition("\x01")
    if not sep:
        return None
    gs2 = header.split(",")
    if len(gs2) < 2 or gs2[0] not in ("n", "y"):
        return None
    claimed = next((g[2:] for g in gs2[1:] if g.startswith("a=")), "")
    claimed = claimed.replace("=2C", ",").replace("=3D", "=")
    fields = dict(p.split("=", 1) for p in rest.split("\x01") if "=" in p)
    scheme, _, token = fields.get("auth", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return claimed, token.strip()


# The error a client is shown before the final 535 (RFC 7628 3.2.2, and
# Google's XOAUTH2 answers the same way).
TOKEN_ERROR = json.dumps({"status": "invalid_token", "schemes": "bearer"}).encode()


class Authenticator:
    def __init__(self, config: Config, metadata: MetadataStore, cache: Cache,
                 log: EventLog | None = None):
        self.metadata, self.cache = metadata, cache
        self.settings = config.submission
        self.verifier = TokenVerifier(config)
        self.log = log or EventLog("submission")
        self.hasher = PasswordHasher()
        # Unknown users are checked against this, so they take as long as known ones.
        self._decoy = self.hasher.hash("mailyard-decoy-password")

    async def blocked(self, client_ip: str, login: str) -> bool:
        """Whether this IP or login has failed too often lately. A cache that
        fails blocks nobody: logins must keep working without it."""
        try:
            by_ip = await self.cache.get(f"submission:authfail:ip:{client_ip}")
            by_user = (await self.cache.get(f"submission:authfail:user:{login.lower()}")
                       if login else None)
        except Exception as exc:
            self.log.error("auth_limit_cache_failed", error=repr(exc))
            return False
        return (int(by_ip or 0) >= self.settings.auth_failures_per_ip
                or int(by_user or 0) >= self.settings.auth_failures_per_user)

    async def failed(self, client_ip: str, login: str, mechanism: str) -> None:
        window = self.settings.auth_failure_window
        self.log.info("auth_failed", client=client_ip, login=login, mechanism=mechanism)
        try:
            await self.cache.incr(f"submission:authfail:ip:{client_ip}", 1, ttl=window)
            if login:  # a token without a claimed identity names nobody to count
                await self.cache.incr(f"submission:authfail:user:{login.lower()}", 1, ttl=window)
        except Exception as exc:
            self.log.error("auth_limit_cache_failed", error=repr(exc))

    async def password_user(self, login: str, password: str) -> str | None:
        """The user these credentials log in, else None. Raises StorageError."""
        user = await self.metadata.get_user(login.strip().lower()) if "@" in login else None
        stored = user.password_hash if user is not None and user.password_hash else self._decoy
        try:
            await asyncio.to_thread(self.hasher.verify, stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return user.address if user is not None and stored is not self._decoy else None

    async def token_user(self, claimed: str, token: str) -> str | None:
        """The user a bearer JWT acts for, when it verifies and matches the
        identity the client claimed (if any). Raises StorageError."""
        try:
            if self.verifier.blocking:
                subject = await asyncio.to_thread(self.verifier.verify, f"Bearer {token}")
            else:
                subject = self.verifier.verify(f"Bearer {token}")
        except AuthError as exc:
            self.log.info("token_refused", reason=str(exc))
            return None
        if claimed and claimed.strip().lower() != subject:
            return None
        if await self.metadata.get_user(subject) is None:
            return None
        return subject
