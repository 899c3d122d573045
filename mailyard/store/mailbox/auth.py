"""Bearer JWTs for the API: the local issuer and token validation.

The data directory keeps an Ed25519 key so `mailyard token issue` works on a
fresh install; production points `[auth]` at an external issuer's JWKS instead.
Either way a token is checked for signature, expiry, issuer and audience, and
its subject (an address) is the user it acts for.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailyard.policy.config import Config

LOCAL_KEY_ID = "local-1"


class AuthError(Exception):
    """The token is missing, malformed, expired or not for us."""


def _local_key_path(config: Config) -> Path:
    return config.data_path / "keys" / "jwt-ed25519.pem"


def local_private_key(config: Config) -> Ed25519PrivateKey:
    """The local issuer's key, created (mode 0600) on first use."""
    path = _local_key_path(config)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def issue_token(config: Config, address: str, ttl_seconds: int = 3600) -> str:
    now = int(time.time())
    claims = {"iss": config.auth.issuer, "aud": config.auth.audience,
              "sub": address.lower(), "iat": now, "nbf": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, local_private_key(config), algorithm="EdDSA",
                      headers={"kid": LOCAL_KEY_ID})


@dataclass
class TokenVerifier:
    config: Config

    def __post_init__(self):
        auth = self.config.auth
        self._jwks_client = jwt.PyJWKClient(auth.jwks_url, cache_keys=True) if auth.jwks_url else None
        self._jwks = None
        if auth.jwks_file:
            self._jwks = jwt.PyJWKSet.from_dict(json.loads(Path(auth.jwks_file).read_text()))
        self._local = None
        if not auth.jwks_url and not auth.jwks_file:
            self._local = local_private_key(self.config).public_key()

    def _key_for(self, token: str):
        if self._local is not None:
            # A kid naming some other key is refused, as with a JWKS: the token
            # was not meant for this issuer even if its signature happens to verify.
            kid = jwt.get_unverified_header(token).get("kid")
            if kid is not None and kid != LOCAL_KEY_ID:
                raise AuthError("no local key matches the token's kid")
            return self._local
        if self._jwks_client is not None:
            return self._jwks_client.get_signing_key_from_jwt(token).key
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._jwks.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise AuthError("no key in the JWKS matches the token's kid")

    def verify(self, authorization: str | None) -> str:
        """The user address a `Bearer <JWT>` value acts for; AuthError otherwise.
        Blocking when a JWKS URL must be fetched: call it off the event loop then."""
        if not authorization:
            raise AuthError("missing authorization metadata (expected 'Bearer <token>')")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("authorization must be 'Bearer <token>'")
        auth = self.config.auth
        try:
            claims = jwt.decode(token.strip(), self._key_for(token.strip()),
                                algorithms=auth.algorithms, audience=auth.audience,
                                issuer=auth.issuer, leeway=auth.leeway_seconds,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except (jwt.PyJWTError, ValueError) as exc:
            raise AuthError(f"invalid token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or "@" not in subject:
            raise AuthError("token subject is not an address")
        return subject.lower()

    @property
    def blocking(self) -> bool:
        return self._jwks_client is not None
