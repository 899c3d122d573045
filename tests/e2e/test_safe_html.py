"""GetMessage FULL serves HTML made safe, over gRPC and the REST gateway, on
`mailyard up`; the sender's HTML stays in RAW only."""
from __future__ import annotations

import base64
from email.message import EmailMessage

import pytest

from mailyard.proto import mailbox_pb2 as pb
from tests.e2e.harness import Client, Mailyard, Rest, send
from tests.unit.test_safe_html import VECTORS, problems

ALICE, SENDER = "alice@example.test", "sender@remote.example"
TRACKER = "https://tracker.example/open.gif?u=alice"
HOSTILE = ("<html><body><p>Dear <b>customer</b></p>" + "".join(VECTORS.values()) +
           f'<img src="{TRACKER}" alt="pixel"></body></html>')


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("safehtml"))
    mailyard.add_users(ALICE)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox", "gateway")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, ALICE, "hostile html"
    msg.set_content("Dear customer")
    msg.add_alternative(HOSTILE, subtype="html")
    msg.add_attachment(HOSTILE.encode(), maintype="text", subtype="html", filename="page.html")
    send(service.addresses["mx"], SENDER, [ALICE], msg.as_bytes())
    grpc_client = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    rest = Rest(service.addresses["gateway"], mailyard.token(ALICE))
    (summary,) = grpc_client.wait_for(1)
    yield grpc_client, rest, summary.id
    grpc_client.close()
    rest.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def test_full_html_body_is_sanitized_over_grpc(system):
    client, _, message_id = system
    full = client.get(message_id)
    assert "<b>customer</b>" in full.html_body
    assert problems(full.html_body) == [], full.html_body
    for payload in ("<script", "onerror", "javascript:", "expression(", "<svg", "<iframe",
                    "<meta", "<base", "<form", TRACKER):
        assert payload not in full.html_body
    assert full.remote_content_blocked


def test_remote_images_on_request(system):
    client, _, message_id = system
    full = client.call("GetMessage", pb.GetMessageRequest(id=message_id, format=pb.FULL,
                                                          allow_remote_images=True))
    assert f'src="{TRACKER.replace("&", "&amp;")}"' in full.html_body
    assert not full.remote_content_blocked
    assert "<script" not in full.html_body and "onerror" not in full.html_body


def test_raw_keeps_the_senders_html(system):
    client, _, message_id = system
    raw = client.get(message_id, pb.RAW).raw
    assert b"<script>alert(1)</script>" in raw and b"tracker.example/open.gif" in raw


def test_rest_gateway_serves_the_same_safe_html(system):
    client, rest, message_id = system
    full = rest.get(f"/v1/messages/{message_id}").json()
    assert full["html_body"] == client.get(message_id).html_body
    assert full["remote_content_blocked"] is True
    allowed = rest.get(f"/v1/messages/{message_id}",
                       params={"allow_remote_images": "true"}).json()
    assert TRACKER.replace("&", "&amp;") in allowed["html_body"]
    assert allowed.get("remote_content_blocked", False) is False
    raw = base64.b64decode(rest.get(f"/v1/messages/{message_id}",
                                    params={"format": "raw"}).json()["raw"])
    assert b"<script>alert(1)</script>" in raw


def test_rest_attachments_are_downloads_never_pages(system):
    client, rest, message_id = system
    (attachment,) = client.get(message_id).attachments
    response = rest.get(f"/v1/messages/{message_id}/attachments/{attachment.id}")
    assert response.content == HOSTILE.encode()  # the sender's bytes, as sent
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == "attachment"
    assert response.headers["x-content-type-options"] == "nosniff"
