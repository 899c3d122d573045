"""TLS for the MX and submission: the server context, and a self-signed pair when none is configured.

Senders on the public internet do not check an MX's certificate (RFC 7435,
opportunistic TLS), so a self-signed certificate made on first start still
encrypts every session; a postmaster who wants MTA-STS or DANE configures a
real one with `tls.cert_file` and `tls.key_file`.
"""
from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

from mailyard.policy.config import Config

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def self_signed_pair(directory: Path, hostname: str) -> tuple[Path, Path]:
    """mx.crt and mx.key in `directory`, made once (an EC P-256 key, ten years)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / "mx.crt", directory / "mx.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256()))
    partial = key_path.with_suffix(".key.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    os.replace(partial, key_path)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(config: Config) -> ssl.SSLContext | None:
    """The MX's TLS context, or None when STARTTLS is off."""
    if not config.tls.starttls:
        return None
    return certificate_context(config)


def certificate_context(config: Config) -> ssl.SSLContext:
    """A server context with [tls]'s certificate, else the self-signed pair.
    Submission always needs one: `tls.starttls` only switches the MX's off."""
    if config.tls.cert_file:
        cert, key = Path(config.tls.cert_file), Path(config.tls.key_file)
    else:
        cert, key = self_signed_pair(config.data_path / "tls", config.hostname)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.tls.min_version]
    context.load_cert_chain(cert, key)
    return context


def describe(session) -> str | None:
    """'TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)' for a TLS
    session (as Postfix writes it in Received:), None for a plain one."""
    extra = getattr(session, "ssl", None)
    ssl_object = extra.get("ssl_object") if extra else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    if not cipher:
        return ssl_object.version()
    name, _protocol, bits = cipher
    return f"{ssl_object.version()} with cipher {name} ({bits}/{bits} bits)"
