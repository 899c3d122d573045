"""DKIM signing of outgoing mail (RFC 6376; ed25519-sha256 of RFC 8463), with dkimpy.

Verification is mta/dkim.py's; this module only signs. Each key of the
author's domain (the From: domain, so DMARC aligns) adds one signature,
relaxed/relaxed, with dkimpy's default header list, which signs From once
more than it occurs so that no second From can be added. Keys live in PEM
files named by [[dkim.keys]]; `mailyard dkim keygen` makes them.
"""
from __future__ import annotations

import base64
import email.utils
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailyard.policy.config import Config, ConfigError, DkimKeyConfig
from mailyard.policy.logs import EventLog

RSA_BITS = 2048
CANONICALIZATION = (b"relaxed", b"relaxed")


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str          # rsa-sha256 or ed25519-sha256
    secret: bytes           # as dkimpy takes it: PEM for RSA, the base64 seed for Ed25519


def load_key(entry: DkimKeyConfig, where: str) -> SigningKey:
    """The key an [[dkim.keys]] entry names; ConfigError saying which entry otherwise."""
    path = Path(entry.private_key_file)
    try:
        pem = path.read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the DKIM key {path}: {exc}",
                          key=f"{where}.private_key_file") from None
    if entry.algorithm == "ed25519-sha256":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key", key=f"{where}.algorithm")
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        secret = base64.b64encode(seed)
    else:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{path} is not an RSA key", key=f"{where}.algorithm")
        if key.key_size < 1024:  # RFC 8301: verifiers ignore shorter keys
            raise ConfigError(f"{path}: RSA keys of {key.key_size} bits are too short",
                              key=f"{where}.private_key_file")
        secret = pem
    return SigningKey(entry.domain.lower().rstrip("."), entry.selector, entry.algorithm, secret)


class Signer:
    def __init__(self, keys: list[SigningKey], log: EventLog | None = None):
        self.keys: dict[str, list[SigningKey]] = {}
        for key in keys:
            self.keys.setdefault(key.domain, []).append(key)
        self.log = log or EventLog("submission")

    def signatures(self, message: bytes, domain: str, queue_id: str = "") -> bytes:
        """The DKIM-Signature header fields to prepend to `message` (CRLF line
        ends) for `domain`; empty, with a warning, when the domain has no key."""
        keys = self.keys.get(domain.lower().rstrip("."), [])
        if not keys:
            self.log.warning("dkim_no_key", queue_id=queue_id, domain=domain)
            return b""
        fields = b""
        for key in keys:
            fields += dkimpy.sign(message, key.selector.encode(), key.domain.encode(),
                                  key.secret, canonicalize=CANONICALIZATION,
                                  signature_algorithm=key.algorithm.encode())
        return fields


def open_signer(config: Config, log: EventLog | None = None) -> Signer:
    keys = [load_key(k, f"dkim.keys[{i}]") for i, k in enumerate(config.dkim.keys)]
    for name, domain in config.domains.items():  # [[dkim]] of policy.d/DOMAIN.toml
        keys += [load_key(replace(k, domain=name), f"domains.{name}.dkim[{i}]")
                 for i, k in enumerate(domain.dkim)]
    return Signer(keys, log)


def author_domain(address: str) -> str:
    return email.utils.parseaddr(address)[1].rpartition("@")[2].lower()


# --- `mailyard dkim keygen` ----------------------------------------------------

@dataclass
class GeneratedKey:
    path: Path
    dns_name: str           # selector._domainkey.domain.
    dns_value: str          # v=DKIM1; k=...; p=...
    entry: DkimKeyConfig


def default_selector(algorithm: str) -> str:
    """A dated selector (as Gmail's 20230601), so a rotated key gets a new one."""
    return time.strftime("%Y%m") + ("e" if algorithm == "ed25519-sha256" else "r")


def generate(data_dir: Path, domain: str, selector: str, algorithm: str) -> GeneratedKey:
    """Writes a new key to DATA_DIR/dkim/DOMAIN/SELECTOR.pem (0600, never
    over an existing one) and returns what to publish and configure."""
    domain = domain.lower().rstrip(".")
    path = (data_dir / "dkim" / domain / f"{selector}.pem").absolute()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        kind = "ed25519"
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        kind = "rsa"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError if taken
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    value = f"v=DKIM1; k={kind}; p={base64.b64encode(public).decode()}"
    return GeneratedKey(path, f"{selector}._domainkey.{domain}.", value,
                        DkimKeyConfig(domain, selector, str(path), algorithm))


def zone_line(name: str, value: str) -> str:
    """A BIND TXT record, split in strings of at most 255 octets (RFC 1035 3.3.14)."""
    chunks = " ".join(f'"{value[i:i + 250]}"' for i in range(0, len(value), 250))
    return f"{name} IN TXT ( {chunks} )"
