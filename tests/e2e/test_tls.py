"""The mailbox API (gRPC) and the gateway (HTTP) over TLS against `mailyard up`,
with a test CA: TLS clients get answers, plaintext clients and clients that
do not trust the CA are refused; with mutual TLS, so are clients without a
certificate of the configured CA. Bearer tokens apply as before."""
from __future__ import annotations

import json
import ssl

import grpc
import httpx
import pytest

from mailyard.proto import mailbox_pb2, mailbox_pb2_grpc
from tests.e2e.harness import Mailyard
from tests.e2e.receivers import free_port
from tests.e2e.test_mailbox_api import ALICE
from tests.tls_ca import make_test_ca


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_test_ca(tmp_path_factory.mktemp("ca"))


def _start(root, certs, client_ca: bool):
    tls = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key),
           "required": True}
    if client_ca:
        tls["client_ca_file"] = str(certs.ca)
    # Fixed ports: `mailyard status` probes the configured addresses.
    mailyard = Mailyard(root, settings={
        "services": ["mailbox", "gateway"],
        "mailbox": {"listen": f"127.0.0.1:{free_port('127.0.0.1')}", "tls": tls},
        "gateway": {"listen": f"127.0.0.1:{free_port('127.0.0.1')}", "tls": tls}})
    mailyard.add_users(ALICE)
    service = mailyard.start("up")
    service.wait_listening("mailbox", "gateway")
    return mailyard, service


@pytest.fixture(scope="module")
def tls_system(tmp_path_factory, certs):
    mailyard, service = _start(tmp_path_factory.mktemp("tls"), certs, client_ca=False)
    yield mailyard, service
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


@pytest.fixture(scope="module")
def mtls_system(tmp_path_factory, certs):
    mailyard, service = _start(tmp_path_factory.mktemp("mtls"), certs, client_ca=True)
    yield mailyard, service
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def _list(channel: grpc.Channel, token: str | None):
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return mailbox_pb2_grpc.MailboxStub(channel).ListMessages(
        mailbox_pb2.ListMessagesRequest(label="INBOX"), metadata=metadata, timeout=10)


def _grpc(address, ca=None, cert=None, key=None) -> grpc.Channel:
    """A TLS channel trusting `ca`, presenting `cert` when given; plaintext when no CA."""
    target = f"{address[0]}:{address[1]}"
    if ca is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(), private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None))


def _https(address, ca, cert=None, key=None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(ca))
    if cert:
        context.load_cert_chain(cert, key)
    return httpx.Client(base_url=f"https://{address[0]}:{address[1]}", verify=context,
                        timeout=10)


# --- TLS, required -----------------------------------------------------------

def test_grpc_over_tls_answers(tls_system, certs):
    mailyard, service = tls_system
    with _grpc(service.addresses["mailbox"], certs.ca) as channel:
        assert list(_list(channel, mailyard.token(ALICE)).messages) == []
        with pytest.raises(grpc.RpcError) as err:  # TLS does not replace the token
            _list(channel, None)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    log = service.log_path.read_text()
    assert "tls=tls" in log and "plaintext" not in log


def test_plaintext_grpc_client_is_refused(tls_system):
    mailyard, service = tls_system
    with _grpc(service.addresses["mailbox"]) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _list(channel, mailyard.token(ALICE))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_client_not_trusting_the_ca_is_refused(tls_system, certs):
    mailyard, service = tls_system
    with _grpc(service.addresses["mailbox"], certs.other_ca) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _list(channel, mailyard.token(ALICE))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_http_over_tls_answers(tls_system, certs):
    mailyard, service = tls_system
    with _https(service.addresses["gateway"], certs.ca) as client:
        assert client.get("/healthz").status_code == 200
        inbox = client.get("/v1/messages/inbox",
                           headers={"Authorization": f"Bearer {mailyard.token(ALICE)}"})
        assert inbox.status_code == 200 and inbox.json()["messages"] == []
        assert client.get("/v1/messages/inbox").status_code == 401


def test_plaintext_http_client_is_refused(tls_system):
    _, service = tls_system
    host, port = service.addresses["gateway"]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{host}:{port}/healthz", timeout=10)


def test_http_client_not_trusting_the_ca_is_refused(tls_system, certs):
    _, service = tls_system
    with _https(service.addresses["gateway"], certs.other_ca) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get("/healthz")


def _probed(mailyard) -> dict:
    """What `mailyard status` says of each port. Its probes give up after 1 s,
    which a 2-core machine under a full test load can overrun: three tries."""
    for _ in range(3):
        report = json.loads(mailyard.cli("status", "--json"))
        found = {s["name"]: (s["state"], s.get("detail")) for s in report["services"]}
        if all(state == "up" for state, _ in found.values()):
            break
    return found


def test_status_probes_the_tls_ports(tls_system):
    mailyard, _ = tls_system
    assert _probed(mailyard) == {"mailbox": ("up", "TLS handshake: ok"),
                                 "gateway": ("up", "/healthz: 200")}


# --- mutual TLS ----------------------------------------------------------------

def test_grpc_with_a_client_certificate_answers(mtls_system, certs):
    mailyard, service = mtls_system
    with _grpc(service.addresses["mailbox"], certs.ca, certs.client_cert,
               certs.client_key) as channel:
        assert list(_list(channel, mailyard.token(ALICE)).messages) == []
    assert "tls=mutual-tls" in service.log_path.read_text()
    assert _probed(mailyard) == {"mailbox": ("up", "mutual TLS: health not probed"),
                                 "gateway": ("up", "mutual TLS: health not probed")}


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_grpc_client_without_a_trusted_certificate_is_refused(mtls_system, certs, who):
    mailyard, service = mtls_system
    cert, key = ((None, None) if who == "no certificate"
                 else (certs.other_client_cert, certs.other_client_key))
    with _grpc(service.addresses["mailbox"], certs.ca, cert, key) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _list(channel, mailyard.token(ALICE))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_http_with_a_client_certificate_answers(mtls_system, certs):
    mailyard, service = mtls_system
    with _https(service.addresses["gateway"], certs.ca, certs.client_cert,
                certs.client_key) as client:
        inbox = client.get("/v1/messages/inbox",
                           headers={"Authorization": f"Bearer {mailyard.token(ALICE)}"})
        assert inbox.status_code == 200


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_http_client_without_a_trusted_certificate_is_refused(mtls_system, certs, who):
    _, service = mtls_system
    cert, key = ((None, None) if who == "no certificate"
                 else (certs.other_client_cert, certs.other_client_key))
    with _https(service.addresses["gateway"], certs.ca, cert, key) as client:
        with pytest.raises(httpx.TransportError):
            client.get("/healthz")
