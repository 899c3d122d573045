"""The REST/JSON gateway over real HTTP against `mailyard up`: the same
service code as gRPC, bearer tokens, gRPC statuses mapped to HTTP, the
OpenAPI document, health and Prometheus metrics."""
from __future__ import annotations

import time

import pytest

from tests.e2e.harness import Client, Mailyard, Rest, send
from tests.e2e.test_mailbox_api import ALICE, BOB, SENDER, mail


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("gateway"))
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox", "gateway")
    alice = Rest(service.addresses["gateway"], mailyard.token(ALICE))
    bob = Rest(service.addresses["gateway"], mailyard.token(BOB))
    send(service.addresses["mx"], SENDER, [ALICE], mail("over http", body="plain words"))
    deadline = time.monotonic() + 30
    while not alice.get("/v1/messages/inbox").json()["messages"] and time.monotonic() < deadline:
        time.sleep(0.1)
    yield mailyard, service, alice, bob
    alice.close()
    bob.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def error(response, http: int, status: str) -> dict:
    assert response.status_code == http, response.text
    body = response.json()["error"]
    assert (body["code"], body["status"]) == (http, status)
    return body


def test_inbox_and_message_match_the_grpc_answers(system):
    mailyard, service, alice, _ = system
    inbox = alice.get("/v1/messages/inbox").json()
    (summary,) = inbox["messages"]
    assert summary["subject"] == "over http" and summary["unread"] is True
    assert inbox["unread_count"] == "1"  # proto3 JSON: 64-bit integers are strings
    grpc_client = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    assert summary["id"] == grpc_client.list().messages[0].id
    grpc_client.close()
    full = alice.get(f"/v1/messages/{summary['id']}").json()
    assert full["text_body"].strip() == "plain words"
    assert alice.get("/v1/messages", params={"label": "INBOX"}).json()["messages"] == [summary]
    raw = alice.get(f"/v1/messages/{summary['id']}", params={"format": "raw"}).json()["raw"]
    assert raw  # base64 bytes


def test_send_labels_threads_drafts_trash_and_delete(system):
    _, _, alice, bob = system
    sent = alice.post("/v1/messages", json={"to": [BOB], "subject": "via rest", "body": "hi"})
    assert sent.status_code == 200, sent.text
    sent_id = sent.json()["sent"]["id"]
    assert sent_id in [m["id"] for m in alice.get("/v1/messages", params={"label": "SENT"}).json()["messages"]]
    deadline = time.monotonic() + 30
    while not bob.get("/v1/messages/inbox").json()["messages"] and time.monotonic() < deadline:
        time.sleep(0.1)
    (received,) = bob.get("/v1/messages/inbox").json()["messages"]
    assert received["subject"] == "via rest"

    assert bob.post("/v1/labels", json={"name": "Later"}).status_code == 201
    modified = bob.post("/v1/messages/modify", json={"ids": [received["id"]],
                                                     "add_labels": ["Later"]}).json()
    assert "Later" in modified["messages"][0]["labels"]
    labels = {l["name"]: l for l in bob.get("/v1/labels").json()["labels"]}
    assert labels["Later"]["messages_total"] == "1"
    assert bob.request("PATCH", "/v1/labels/Later", json={"new_name": "Soon"}).status_code == 200
    assert bob.request("DELETE", "/v1/labels/Soon").json()["message_ids"] == [received["id"]]

    thread = bob.get(f"/v1/threads/{received['thread_id']}").json()
    assert [m["id"] for m in thread["messages"]] == [received["id"]]
    assert bob.get("/v1/threads").json()["threads"][0]["id"] == received["thread_id"]

    draft = bob.post("/v1/drafts", json={"to": [ALICE], "subject": "re", "body": "v1"})
    assert draft.status_code == 201
    draft_id = draft.json()["id"]
    update = {"version": 1, "content": {"to": [ALICE], "subject": "re", "body": "v2"}}
    assert bob.request("PUT", f"/v1/drafts/{draft_id}", json=update).json()["version"] == "2"
    error(bob.request("PUT", f"/v1/drafts/{draft_id}", json=update), 409, "ABORTED")
    assert bob.get(f"/v1/drafts/{draft_id}").json()["content"]["body"] == "v2"
    assert [d["id"] for d in bob.get("/v1/drafts").json()["drafts"]] == [draft_id]
    assert bob.post(f"/v1/drafts/{draft_id}/send").status_code == 200
    error(bob.get(f"/v1/drafts/{draft_id}"), 404, "NOT_FOUND")

    trashed = bob.post("/v1/messages/trash", json={"ids": [received["id"]]}).json()
    assert "TRASH" in trashed["messages"][0]["labels"]
    assert bob.post("/v1/messages/untrash", json={"ids": [received["id"]]}).status_code == 200
    assert bob.request("DELETE", f"/v1/messages/{received['id']}").json() == {
        "deleted_ids": [received["id"]]}
    error(bob.get(f"/v1/messages/{received['id']}"), 404, "NOT_FOUND")
    changes = bob.get("/v1/changes", params={"after": 0}).json()
    assert changes["changes"][-1]["kind"] == "MESSAGE_DELETED"


def test_errors_map_grpc_statuses_to_http(system):
    mailyard, service, alice, bob = system
    message = next(m for m in alice.get("/v1/messages/inbox").json()["messages"]
                   if m["subject"] == "over http")
    anonymous = Rest(service.addresses["gateway"], None)
    error(anonymous.get("/v1/messages/inbox"), 401, "UNAUTHENTICATED")
    anonymous.close()
    forged = Rest(service.addresses["gateway"], "not-a-jwt")
    error(forged.get("/v1/labels"), 401, "UNAUTHENTICATED")
    forged.close()
    foreign = error(bob.get(f"/v1/messages/{message['id']}"), 404, "NOT_FOUND")
    missing = error(bob.get(f"/v1/messages/{'0' * 20}"), 404, "NOT_FOUND")
    assert foreign["message"].replace(message["id"], "X") == missing["message"].replace("0" * 20, "X")
    error(alice.get("/v1/messages", params={"page_size": -1}), 400, "INVALID_ARGUMENT")
    error(alice.get("/v1/search", params={"q": "(unclosed"}), 400, "INVALID_ARGUMENT")
    error(alice.post("/v1/labels", json={"name": "inbox"}), 400, "INVALID_ARGUMENT")
    error(alice.post("/v1/messages", json={"to": ["not an address"]}), 400, "INVALID_ARGUMENT")
    # A body the route cannot read is FastAPI's 422, still JSON.
    assert alice.post("/v1/messages", json={"to": "not a list"}).status_code == 422


def test_quota_is_429_with_retry_after(tmp_path):
    mailyard = Mailyard(tmp_path, settings={"mailbox": {"quota_units": 10, "quota_window": 30.0},
                                            "services": ["gateway"]})
    mailyard.add_users(ALICE)
    service = mailyard.start("up")
    try:
        service.wait_listening("gateway")
        alice = Rest(service.addresses["gateway"], mailyard.token(ALICE))
        assert alice.get("/v1/messages/inbox").status_code == 200
        assert alice.get("/v1/messages/inbox").status_code == 200
        refused = alice.get("/v1/messages/inbox")
        body = error(refused, 429, "RESOURCE_EXHAUSTED")
        assert 0 < body["retry_after_seconds"] <= 30
        assert 1 <= int(refused.headers["Retry-After"]) <= 31
        alice.close()
    finally:
        assert service.stop() == 0


def test_openapi_health_and_metrics(system):
    _, service, alice, _ = system
    document = alice.get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/v1/messages", "/v1/messages/inbox", "/v1/messages/{id}", "/v1/labels",
                 "/v1/threads/{id}", "/v1/drafts/{id}", "/v1/drafts/{id}/send", "/v1/search",
                 "/v1/changes"):
        assert path in paths, path
    assert "post" in paths["/v1/messages"] and "get" in paths["/v1/messages"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert alice.get("/healthz").json() == {"status": "ok"}
    metrics = alice.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'mailyard_gateway_requests_total{method="GET",route="/v1/messages/inbox",status="200"}' \
        in metrics.text
    assert "mailyard_gateway_request_seconds_bucket" in metrics.text
