"""The whole path on embedded defaults: SMTP in, queue, delivery, storage, gRPC out."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from email.message import EmailMessage
from pathlib import Path

import grpc
import pytest

from mailyard.proto import mailbox_pb2
from mailyard.store.blobs.fs import FsBlobStore
from mailyard.store.blobs.keyring import Keyring
from mailyard.store.blobs.sealed import SealedBlobStore
from tests.testdata import cpython_messages
from tests.e2e.harness import Client, Mailyard, send, wire_form

CPYTHON_MESSAGES = cpython_messages()

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@other.test"
SENDER = "sender@remote.example"
ATTACHMENT = bytes(range(256)) * 160  # 40 KiB of binary


def plain(subject: str, body: str, to: str = ALICE) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, to, subject
    msg["Message-ID"] = f"<{hashlib.md5(subject.encode()).hexdigest()}@remote.example>"
    msg.set_content(body)
    return msg.as_bytes()


def with_attachment(subject: str, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, to, subject
    msg.set_content("The report is attached.")
    msg.add_alternative("<html><body><p>The <b>report</b> is attached.</p></body></html>",
                        subtype="html")
    msg.add_attachment(ATTACHMENT, maintype="application", subtype="octet-stream",
                       filename="report.bin")
    return msg.as_bytes()


MALFORMED = (
    b"From: =?utf-8?q?broken\xff\xfe <nobody@@remote..example>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: malformed \xe9\xe8 mail\r\n"
    b"Content-Type: multipart/mixed; boundary=\"never-closed\"\r\n"
    b"Content-Transfer-Encoding: base64x\r\n"
    b"\r\n"
    b"--never-closed\r\n"
    b"Content-Type: text/plain; charset=unknown-8bit\r\n"
    b"\r\n"
    b"body without end \x00\x01\r\n"
    b"--never-closed\r\n"
    b"Content-Type: application/pdf; name=\"x.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"!!!not base64 at all!!!\r\n"
)


def assert_raw_exact(raw: bytes, sent: bytes, queue_id: str) -> None:
    expected = wire_form(sent)
    assert raw.endswith(expected), "RAW is not the message as sent"
    trace = raw[:len(raw) - len(expected)]
    assert trace.startswith(b"Received: from client.example.net ([127.0.0.1])\r\n")
    assert f"id {queue_id}".encode() in trace


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("spine")
    mailyard = Mailyard(root)
    mailyard.add_users(ALICE, BOB, CAROL)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    yield mailyard, service
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


@pytest.fixture(scope="module")
def delivered(system):
    """Sends the whole corpus once; tests below read it back."""
    mailyard, service = system
    mx = service.addresses["mx"]
    sent = {"alice": [], "bob": [], "carol": []}
    for i in range(3):
        message = plain(f"hello {i}", f"plain body number {i}\n")
        sent["alice"].append((send(mx, SENDER, [ALICE], message), message))
    shared = with_attachment("report for both", f"{ALICE}, {BOB}")
    queue_id = send(mx, SENDER, [ALICE, BOB], shared)
    sent["alice"].append((queue_id, shared))
    sent["bob"].append((queue_id, shared))
    again = with_attachment("the same report again", BOB)
    sent["bob"].append((send(mx, SENDER, [BOB], again), again))
    sent["alice"].append((send(mx, SENDER, [ALICE], MALFORMED), MALFORMED))
    for path in CPYTHON_MESSAGES:
        message = path.read_bytes()
        sent["carol"].append((send(mx, SENDER, [CAROL], message), message))
    clients = {name: Client(service.addresses["mailbox"], mailyard.token(address))
               for name, address in (("alice", ALICE), ("bob", BOB), ("carol", CAROL))}
    for name, client in clients.items():
        assert len(client.wait_for(len(sent[name]))) == len(sent[name])
    yield mailyard, service, clients, sent
    for client in clients.values():
        client.close()


def by_queue_id(client: Client) -> dict[str, mailbox_pb2.Message]:
    """Each message of the inbox keyed by the queue id in its Received header."""
    result = {}
    for summary in client.list_all():
        raw = client.get(summary.id, mailbox_pb2.RAW).raw
        queue_id = re.search(rb"\bid ([0-9A-Z]+)", raw).group(1).decode()
        assert queue_id not in result, "a message was stored twice"
        result[queue_id] = raw
    return result


def test_listing_is_newest_first_with_unread_count(delivered):
    _, _, clients, sent = delivered
    page = clients["alice"].list()
    assert len(page.messages) == len(sent["alice"])
    assert page.unread_count == len(sent["alice"])
    times = [m.received_at for m in page.messages]
    assert times == sorted(times, reverse=True)
    assert all(m.unread and "INBOX" in m.labels and "UNREAD" in m.labels for m in page.messages)
    subjects = {m.subject for m in page.messages}
    assert {"hello 0", "hello 1", "hello 2", "report for both"} <= subjects


def test_pagination_covers_every_message_once(delivered):
    _, _, clients, sent = delivered
    ids, token = [], ""
    while True:
        page = clients["carol"].list(page_size=7, page_token=token)
        ids += [m.id for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert len(ids) == len(set(ids)) == len(sent["carol"])


def test_raw_is_byte_exact_for_every_message(delivered):
    _, _, clients, sent = delivered
    for name, client in clients.items():
        stored = by_queue_id(client)
        assert sorted(stored) == sorted(q for q, _ in sent[name])
        for queue_id, message in sent[name]:
            assert_raw_exact(stored[queue_id], message, queue_id)


def test_full_format_gives_bodies_headers_and_attachments(delivered):
    _, _, clients, _ = delivered
    alice = clients["alice"]
    summary = next(m for m in alice.list().messages if m.subject == "report for both")
    assert summary.has_attachments
    full = alice.get(summary.id)
    assert "The report is attached." in full.text_body
    assert "<b>report</b>" in full.html_body
    assert {h.name for h in full.headers} >= {"Received", "From", "To", "Subject"}
    (attachment,) = full.attachments
    assert attachment.filename == "report.bin"
    assert attachment.content_type == "application/octet-stream"
    assert attachment.size == len(ATTACHMENT)
    assert attachment.sha256 == hashlib.sha256(ATTACHMENT).hexdigest()
    assert alice.attachment(summary.id, attachment.id) == ATTACHMENT

    plain_summary = next(m for m in alice.list().messages if m.subject == "hello 1")
    assert alice.get(plain_summary.id).text_body.strip() == "plain body number 1"
    metadata = alice.get(plain_summary.id, mailbox_pb2.METADATA)
    assert metadata.text_body == "" and metadata.headers


def test_shared_attachment_is_stored_once(delivered):
    mailyard, _, clients, _ = delivered
    digests = set()
    for name in ("alice", "bob"):
        for summary in clients[name].list().messages:
            if "report" in summary.subject:
                assert summary.has_attachments
                full = clients[name].get(summary.id)
                digests.update(a.sha256 for a in full.attachments)
                assert clients[name].attachment(summary.id, full.attachments[0].id) == ATTACHMENT
    assert digests == {hashlib.sha256(ATTACHMENT).hexdigest()}
    # Three deliveries (alice, bob, bob again) of one attachment: one blob holds
    # it, once the spooled raw copies are dropped after the queue commit.
    # Blobs are sealed at rest, so they are read through the sealing layer.
    line = base64.b64encode(ATTACHMENT)[:76]
    deadline = time.monotonic() + 15
    while True:
        holders = asyncio.run(blobs_holding(mailyard.data_dir, line))
        if len(holders) <= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(holders) == 1, holders


async def blobs_holding(data_dir: Path, line: bytes) -> list[str]:
    store = SealedBlobStore(FsBlobStore(data_dir / "blobs"),
                            Keyring(data_dir / "blob-keys.json").open(create=False))
    return [key async for key in store.keys() if line in await store.get(key)]


def test_malformed_mail_is_stored_flagged_and_retrievable(delivered):
    _, _, clients, sent = delivered
    alice = clients["alice"]
    queue_id = next(q for q, m in sent["alice"] if m is MALFORMED)
    stored = by_queue_id(alice)
    assert_raw_exact(stored[queue_id], MALFORMED, queue_id)
    summary = next(m for m in alice.list().messages if "malformed" in m.subject)
    full = alice.get(summary.id)
    assert full.malformed


def test_cpython_corpus_reads_back_in_every_format(delivered):
    _, _, clients, sent = delivered
    carol = clients["carol"]
    summaries = carol.list_all()
    assert len(summaries) == len(CPYTHON_MESSAGES)
    for summary in summaries:
        for fmt in (mailbox_pb2.FULL, mailbox_pb2.METADATA, mailbox_pb2.RAW):
            message = carol.get(summary.id, fmt)
            assert message.summary.id == summary.id
        for attachment in carol.get(summary.id).attachments:
            data = carol.attachment(summary.id, attachment.id)
            assert hashlib.sha256(data).hexdigest() == attachment.sha256
            assert len(data) == attachment.size


def test_users_are_isolated(delivered):
    _, _, clients, _ = delivered
    alice_id = clients["alice"].list().messages[0].id
    with pytest.raises(grpc.RpcError) as foreign:
        clients["bob"].get(alice_id)
    with pytest.raises(grpc.RpcError) as missing:
        clients["bob"].get("0" * 20)
    assert foreign.value.code() == missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert (foreign.value.details().replace(alice_id, "ID")
            == missing.value.details().replace("0" * 20, "ID"))
    with pytest.raises(grpc.RpcError) as err:
        clients["bob"].attachment(alice_id, "2")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        clients["bob"].modify([alice_id], remove=["UNREAD"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert clients["alice"].get(alice_id).summary.unread
    bob_ids = {m.id for m in clients["bob"].list_all()}
    assert alice_id not in bob_ids


def test_calls_without_a_valid_token_are_unauthenticated(delivered):
    mailyard, service, clients, _ = delivered
    address = service.addresses["mailbox"]
    good = mailyard.token(ALICE)
    header, payload, signature = good.split(".")
    forged_payload = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(payload + "==").replace(b"alice", b"bobby")).rstrip(b"=").decode()
    for token in (None, "not-a-jwt", f"{header}.{forged_payload}.{signature}"):
        client = Client(address, token)
        with pytest.raises(grpc.RpcError) as err:
            client.list()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
        client.close()


def test_marking_read_updates_labels_and_unread_count(delivered):
    _, _, clients, sent = delivered
    bob = clients["bob"]
    before = bob.list()
    target = before.messages[-1]
    changed = bob.modify([target.id], add=["STARRED"], remove=["UNREAD"])
    assert [m.id for m in changed.messages] == [target.id]
    after = bob.list()
    assert after.unread_count == before.unread_count - 1
    updated = next(m for m in after.messages if m.id == target.id)
    assert not updated.unread and "STARRED" in updated.labels
    assert [m.id for m in bob.list("STARRED").messages] == [target.id]


def test_invalid_requests_get_invalid_argument(delivered):
    _, _, clients, _ = delivered
    for call in (lambda c: c.list(page_size=-1), lambda c: c.list(page_token="forged"),
                 lambda c: c.modify([], add=["X"])):
        with pytest.raises(grpc.RpcError) as err:
            call(clients["alice"])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection_are_served(system):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, service = system
    host, port = service.addresses["mailbox"]
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="mailyard.mailbox.v1.Mailbox"), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert "mailyard.mailbox.v1.Mailbox" in names


def test_cli_lists_users_and_domains(system):
    mailyard, _ = system
    assert mailyard.cli("user", "list").split() == sorted([ALICE, BOB, CAROL])
    assert mailyard.cli("domain", "list").split() == ["example.test", "other.test"]
    with pytest.raises(RuntimeError, match="not a local domain"):
        mailyard.cli("user", "add", "x@unknown.test", input="pw\n")
