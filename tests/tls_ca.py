"""A throwaway certificate authority for TLS tests, made with `cryptography`:
a server certificate for 127.0.0.1 and localhost, a client certificate for
mutual TLS, and a second, unrelated CA that must never be trusted."""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class CertificateSet:
    ca: Path                 # the CA certificate (what clients and servers trust)
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path           # an unrelated CA
    other_client_cert: Path  # a client certificate signed by the unrelated CA
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _authority(common_name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(_name(common_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, common_name: str, usage, names=()):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_test_ca(directory: Path) -> CertificateSet:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _authority("mailyard test CA")
    server_key, server_cert = _leaf(
        ca_key, ca_cert, "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key, client_cert = _leaf(ca_key, ca_cert, "mailyard-service",
                                    ExtendedKeyUsageOID.CLIENT_AUTH)
    other_key, other_cert = _authority("some other CA")
    stranger_key, stranger_cert = _leaf(other_key, other_cert, "stranger",
                                        ExtendedKeyUsageOID.CLIENT_AUTH)
    return CertificateSet(
        ca=_write_cert(ca_cert, directory / "ca.crt"),
        server_cert=_write_cert(server_cert, directory / "server.crt"),
        server_key=_write_key(server_key, directory / "server.key"),
        client_cert=_write_cert(client_cert, directory / "client.crt"),
        client_key=_write_key(client_key, directory / "client.key"),
        other_ca=_write_cert(other_cert, directory / "other-ca.crt"),
        other_client_cert=_write_cert(stranger_cert, directory / "stranger.crt"),
        other_client_key=_write_key(stranger_key, directory / "stranger.key"))
