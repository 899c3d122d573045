"""TLS settings: every mistake a config error naming file, line and key, and
client verification on unless turned off in so many words."""
from __future__ import annotations

import asyncio
import ssl

import pytest

from mailyard.policy import config
from mailyard.policy.config import BackendTlsConfig, RedisConfig
from mailyard.policy.tls import client_context, listener_mode
from mailyard.store.cache.redis import RedisCache
from mailyard.store.errors import StorageError
from tests.tls_ca import make_test_ca


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_test_ca(tmp_path_factory.mktemp("ca"))


def load(tmp_path, text: str) -> config.Config:
    path = tmp_path / "mailyard.toml"
    path.write_text(text)
    return config.load(path)


def refused(tmp_path, text: str) -> config.ConfigError:
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, text)
    assert err.value.file == str(tmp_path / "mailyard.toml")
    return err.value


def test_listeners_load_with_a_certificate_and_client_ca(tmp_path, certs):
    loaded = load(tmp_path, f'''
[mailbox.tls]
cert_file = "{certs.server_cert}"
key_file = "{certs.server_key}"
required = true
[gateway.tls]
cert_file = "{certs.server_cert}"
key_file = "{certs.server_key}"
client_ca_file = "{certs.ca}"
''')
    assert listener_mode(loaded.mailbox.tls) == "tls"
    assert listener_mode(loaded.gateway.tls) == "mutual-tls"
    assert listener_mode(config.Config().mailbox.tls) == "plaintext"


def test_required_tls_without_a_certificate_is_refused(tmp_path):
    error = refused(tmp_path, '[gateway]\nlisten = "127.0.0.1:0"\n\n[gateway.tls]\nrequired = true\n')
    assert (error.line, error.key) == (5, "gateway.tls.required")
    assert "TLS is required" in str(error)


def test_a_missing_certificate_file_is_named(tmp_path, certs):
    error = refused(tmp_path, f'[mailbox.tls]\ncert_file = "{tmp_path}/nope.crt"\n'
                              f'key_file = "{certs.server_key}"\n')
    assert (error.line, error.key) == (2, "mailbox.tls.cert_file")
    assert f"no such file: {tmp_path}/nope.crt" in str(error)


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path, certs):
    error = refused(tmp_path, f'[mailbox.tls]\ncert_file = "{certs.server_cert}"\n'
                              f'key_file = "{certs.client_key}"\n')
    assert (error.line, error.key) == (2, "mailbox.tls.cert_file")
    assert "are not a PEM certificate and its private key" in str(error)


def test_a_client_ca_that_holds_no_certificate_is_refused(tmp_path, certs):
    garbage = tmp_path / "ca.pem"
    garbage.write_text("this is not a certificate\n")
    error = refused(tmp_path, f'[gateway.tls]\ncert_file = "{certs.server_cert}"\n'
                              f'key_file = "{certs.server_key}"\n'
                              f'client_ca_file = "{garbage}"\n')
    assert (error.line, error.key) == (4, "gateway.tls.client_ca_file")
    assert "holds no usable PEM CA certificate" in str(error)


def test_a_backend_ca_file_that_is_not_pem_is_refused(tmp_path):
    garbage = tmp_path / "ca.pem"
    garbage.write_bytes(b"\x00\x01 binary")
    error = refused(tmp_path, '[storage]\ncache = "redis"\n[redis]\n'
                              'url = "rediss://127.0.0.1:16380/0"\n'
                              f'[redis.tls]\nca_file = "{garbage}"\n')
    assert (error.line, error.key) == (6, "redis.tls.ca_file")


def test_tls_enabled_on_a_plaintext_url_is_refused(tmp_path):
    error = refused(tmp_path, '[storage]\nblobs = "s3"\n[s3]\n'
                              'endpoint_url = "http://127.0.0.1:17070"\n[s3.tls]\nenabled = true\n')
    assert (error.line, error.key) == (4, "s3.endpoint_url")
    assert "use https://" in str(error)


def test_backends_not_in_use_are_not_checked(tmp_path):
    loaded = load(tmp_path, '[kafka.tls]\nenabled = true\nca_file = "/nowhere/ca.pem"\n')
    assert loaded.storage.queue == "sqlite"


def test_kafka_tls_files_are_checked_when_kafka_is_the_queue(tmp_path):
    error = refused(tmp_path, '[storage]\nqueue = "kafka"\n[kafka.tls]\nenabled = true\n'
                              'ca_file = "/nowhere/ca.pem"\n')
    assert (error.line, error.key) == (5, "kafka.tls.ca_file")


def test_client_contexts_verify_unless_told_not_to(certs):
    verifying = client_context(BackendTlsConfig(ca_file=str(certs.ca)), "redis.tls")
    assert verifying.verify_mode == ssl.CERT_REQUIRED and verifying.check_hostname
    assert verifying.minimum_version >= ssl.TLSVersion.TLSv1_2
    trusting = client_context(BackendTlsConfig(verify=False), "redis.tls")
    assert trusting.verify_mode == ssl.CERT_NONE and not trusting.check_hostname


async def test_a_backend_behind_an_untrusted_certificate_is_a_storage_error(certs):
    """A TLS server whose certificate our CA did not sign: the Redis adapter
    reports a verification failure naming the server, never plaintext or a hang."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)

    async def answer(reader, writer):
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    cache = RedisCache(RedisConfig(url=f"rediss://127.0.0.1:{port}/0", request_timeout=5,
                                   tls=BackendTlsConfig(ca_file=str(certs.other_ca))))
    try:
        with pytest.raises(StorageError) as err:
            await cache.get("k")
    finally:
        await cache.close()
        server.close()
    assert f"redis 127.0.0.1:{port}: GET k" in str(err.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_cassandra_and_search_adapters_get_the_verifying_context(certs):
    """The adapters whose TLS servers the cluster suite does not run: the
    context they hand their client library is policy/tls.py's."""
    from mailyard.policy.config import CassandraConfig, OpenSearchConfig
    from mailyard.searchd.index.opensearch import OpenSearchIndex
    from mailyard.store.metadata.cassandra import _cluster

    tls = BackendTlsConfig(enabled=True, ca_file=str(certs.ca))
    cluster = _cluster(CassandraConfig(tls=tls))
    assert cluster.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert cluster.ssl_context.check_hostname
    assert _cluster(CassandraConfig()).ssl_context is None
    search = OpenSearchIndex(OpenSearchConfig(hosts=["https://127.0.0.1:19200"], tls=tls))
    assert search.tls_context().verify_mode == ssl.CERT_REQUIRED
    assert OpenSearchIndex(OpenSearchConfig()).tls_context() is None  # http://
