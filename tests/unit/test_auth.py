"""API tokens: the local issuer, and an external issuer's JWKS from a file or a URL."""
from __future__ import annotations

import http.server
import json
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mailyard.policy.config import Config
from mailyard.store.mailbox.auth import AuthError, TokenVerifier, issue_token

ISSUER, AUDIENCE = "https://login.example.test/", "mailyard-api"


def external_config(tmp_path, **auth) -> Config:
    config = Config(data_dir=str(tmp_path / "data"))
    config.auth.issuer, config.auth.audience = ISSUER, AUDIENCE
    for key, value in auth.items():
        setattr(config.auth, key, value)
    return config


@pytest.fixture(scope="module")
def signing_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="ext-1", use="sig", alg="RS256")
    return key, {"keys": [jwk]}


def token(key, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "Alice@Example.test", "iat": now,
              "exp": now + 600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "ext-1"})


def test_local_issuer_round_trip(tmp_path):
    config = Config(data_dir=str(tmp_path))
    assert TokenVerifier(config).verify("Bearer " + issue_token(config, "Bob@Example.test")) \
        == "bob@example.test"
    key_file = tmp_path / "keys" / "jwt-ed25519.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_local_token_expires(tmp_path):
    config = Config(data_dir=str(tmp_path))
    config.auth.leeway_seconds = 0
    expired = issue_token(config, "bob@example.test", ttl_seconds=-5)
    with pytest.raises(AuthError, match="expired"):
        TokenVerifier(config).verify("Bearer " + expired)


def test_external_issuer_from_a_jwks_file(tmp_path, signing_key):
    key, jwks = signing_key
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    verifier = TokenVerifier(external_config(tmp_path, jwks_file=str(path)))
    assert verifier.verify(f"Bearer {token(key)}") == "alice@example.test"
    for bad, reason in ((token(key, aud="someone-else"), "audience"),
                        (token(key, iss="https://evil.example/"), "issuer"),
                        (token(key, exp=int(time.time()) - 3600), "expired"),
                        (token(key, sub=None), "sub"),
                        (token(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                         "Signature")):
        with pytest.raises(AuthError, match=f"(?i){reason}"):
            verifier.verify(f"Bearer {bad}")
    # A token from the local issuer is not valid once an external issuer is set.
    local = issue_token(Config(data_dir=str(tmp_path / "data")), "alice@example.test")
    with pytest.raises(AuthError):
        verifier.verify(f"Bearer {local}")


def test_external_issuer_from_a_jwks_url(tmp_path, signing_key):
    key, jwks = signing_key
    body = json.dumps(jwks).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
        verifier = TokenVerifier(external_config(tmp_path, jwks_url=url))
        assert verifier.blocking
        assert verifier.verify(f"Bearer {token(key)}") == "alice@example.test"
    finally:
        server.shutdown()


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer a.b.c"])
def test_malformed_authorization_is_refused(tmp_path, header):
    with pytest.raises(AuthError):
        TokenVerifier(Config(data_dir=str(tmp_path))).verify(header)
