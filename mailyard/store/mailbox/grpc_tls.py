"""The mailbox API's gRPC port: TLS (and mutual TLS) from [mailbox.tls],
plaintext when no certificate is set.

The files are first loaded by policy/tls.py, whose errors name the setting:
gRPC's own loader only says that a handshake later failed.
"""
from __future__ import annotations

import grpc

from mailyard.policy.config import ListenerTlsConfig
from mailyard.policy.tls import read_pem, server_context


def add_port(server: grpc.aio.Server, address: str, settings: ListenerTlsConfig,
             where: str = "mailbox.tls") -> int:
    """Binds `address` on `server`, over TLS when configured; the bound port."""
    if server_context(settings, where) is None:
        return server.add_insecure_port(address)
    client_ca = settings.client_ca_file
    credentials = grpc.ssl_server_credentials(
        [(read_pem(settings.key_file, f"{where}.key_file"),
          read_pem(settings.cert_file, f"{where}.cert_file"))],
        root_certificates=read_pem(client_ca, f"{where}.client_ca_file") if client_ca else None,
        require_client_auth=bool(client_ca))
    return server.add_secure_port(address, credentials)
