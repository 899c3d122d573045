"""Opaque, tamper-proof page tokens: a listing cursor signed with HMAC.

A client can hold a token but not forge one that reads past another cursor,
and the token names the user and label so it cannot be replayed elsewhere.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from mailyard.store.metadata.base import Cursor


class BadPageToken(Exception):
    pass


def load_secret(data_dir: Path) -> bytes:
    path = data_dir / "keys" / "page-token.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path.with_suffix(".tmp"), path)
    return path.read_bytes()


class PageTokens:
    def __init__(self, secret: bytes):
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]

    def encode(self, scope: str, cursor: Cursor) -> str:
        payload = json.dumps([scope, cursor[0], cursor[1]], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(payload) + payload).decode().rstrip("=")

    def decode(self, scope: str, token: str) -> Cursor:
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, payload = blob[:16], blob[16:]
            if not hmac.compare_digest(mac, self._mac(payload)):
                raise ValueError("signature")
            token_scope, received_at, message_id = json.loads(payload)
            if token_scope != scope:
                raise ValueError("scope")
            return int(received_at), str(message_id)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise BadPageToken(f"invalid page token ({exc})") from None
