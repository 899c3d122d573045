"""Security tests of the REST gateway against one real `mailyard up`: every
route tried with another user's ids answers NOT_FOUND exactly like a missing
id and changes nothing, bad bearer tokens are 401, and ids that try path
traversal (in the path, percent-encoded, or in JSON bodies) are 400 or 404,
never a server error and never a file's contents."""
from __future__ import annotations

import re
import time
from urllib.parse import quote

import pytest

from tests.e2e.harness import Client, Mailyard, Rest
from tests.security.test_mailbox_api import (ALICE, ATTACHMENT, BOB, HOSTILE_IDS,
                                             _bad_authorizations, deliver)

MISSING = "0" * 20


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("gateway-security"))
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox", "gateway")
    alice = Rest(service.addresses["gateway"], mailyard.token(ALICE))
    bob = Rest(service.addresses["gateway"], mailyard.token(BOB))
    yield mailyard, service, alice, bob
    alice.close()
    bob.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


@pytest.fixture(scope="module")
def alices(system):
    """Alice's ids of every kind: a message with an attachment, its thread, a
    draft and a user label."""
    mailyard, service, alice, _ = system
    reader = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    summary = deliver(service, reader, "alice private over http", ALICE, attach=ATTACHMENT)
    reader.close()
    message = alice.get(f"/v1/messages/{summary.id}").json()
    (attachment,) = message["attachments"]
    draft = alice.post("/v1/drafts", json={"to": [BOB], "subject": "alice draft"}).json()
    assert alice.post("/v1/labels", json={"name": "alice-secret"}).status_code == 201
    return {"message": summary.id, "thread": summary.thread_id, "attachment": attachment["id"],
            "draft": draft["id"], "version": draft.get("version", "0"), "label": "alice-secret"}


def _routes(ids: dict) -> list[tuple[str, str, dict]]:
    """(method, path, request options) of every route that takes an id."""
    m, a, d, t = (quote(ids[k], safe="") for k in ("message", "attachment", "draft", "thread"))
    version = {"version": ids.get("version", "0")}
    return [
        ("GET", f"/v1/messages/{m}", {}),
        ("GET", f"/v1/messages/{m}", {"params": {"format": "raw"}}),
        ("GET", f"/v1/messages/{m}/attachments/{a}", {}),
        ("DELETE", f"/v1/messages/{m}", {}),
        ("GET", f"/v1/threads/{t}", {}),
        ("GET", f"/v1/drafts/{d}", {}),
        ("PUT", f"/v1/drafts/{d}", {"json": {"version": version["version"],
                                             "content": {"subject": "hijacked"}}}),
        ("DELETE", f"/v1/drafts/{d}", {"params": version}),
        ("POST", f"/v1/drafts/{d}/send", {"params": version}),
        ("PATCH", f"/v1/labels/{quote(ids['label'], safe='')}", {"json": {"new_name": "mine"}}),
        ("DELETE", f"/v1/labels/{quote(ids['label'], safe='')}", {}),
    ]


def _error(response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["status"], body["message"]


def _unquoted(text: str) -> str:
    return re.sub(r"'[^']*'", "'X'", text)


def _alice_unchanged(alice: Rest, ids: dict) -> None:
    message = alice.get(f"/v1/messages/{ids['message']}").json()
    assert message["summary"]["subject"] == "alice private over http"
    assert "STARRED" not in message["summary"]["labels"]
    assert "TRASH" not in message["summary"]["labels"]
    attachment = alice.get(f"/v1/messages/{ids['message']}/attachments/{ids['attachment']}")
    assert attachment.content == ATTACHMENT
    draft = alice.get(f"/v1/drafts/{ids['draft']}").json()
    assert draft["content"]["subject"] == "alice draft"
    assert ids["label"] in [label["name"] for label in alice.get("/v1/labels").json()["labels"]]


def test_every_route_answers_bobs_use_of_alices_ids_like_a_missing_id(system, alices):
    _, _, alice, bob = system
    missing = {key: MISSING for key in alices} | {"label": "no-such-label",
                                                  "version": alices["version"]}
    for (method, path, options), (_, missing_path, missing_options) in zip(
            _routes(alices), _routes(missing)):
        foreign = _error(bob.request(method, path, **options))
        absent = _error(bob.request(method, missing_path, **missing_options))
        assert foreign[:2] == (404, "NOT_FOUND"), (method, path, foreign)
        # The same words as for a missing id, once the quoted id is set aside.
        assert _unquoted(foreign[2]) == _unquoted(absent[2]), (method, path, foreign, absent)
    _alice_unchanged(alice, alices)


@pytest.mark.parametrize("path", ["/v1/messages/modify", "/v1/messages/trash",
                                  "/v1/messages/untrash", "/v1/messages/delete"])
def test_batch_routes_skip_alices_ids_for_bob(system, alices, path):
    _, _, alice, bob = system
    body = {"ids": [alices["message"]]}
    if path.endswith("modify"):
        body |= {"add_labels": ["STARRED"], "remove_labels": ["UNREAD"]}
    response = bob.post(path, json=body)
    assert response.status_code in (200, 404), response.text
    if response.status_code == 200:
        reply = response.json()
        assert not reply.get("messages") and not reply.get("deleted_ids"), reply
    _alice_unchanged(alice, alices)


def test_searching_and_listing_never_show_alices_mail_to_bob(system, alices):
    _, _, _, bob = system
    found = bob.get("/v1/search", params={"q": "alice private"}).json()
    assert not found.get("messages")
    for label in ("INBOX", "ALL", "alice-secret"):
        response = bob.get("/v1/messages", params={"label": label})
        if response.status_code == 200:
            assert not response.json().get("messages"), label
        else:
            assert response.status_code in (400, 404), response.text


@pytest.mark.parametrize("case", [
    "expired", "not yet valid", "wrong issuer", "no issuer", "wrong audience", "no audience",
    "no expiry", "subject not an address", "alg none", "alg None capitalised",
    "HS256 keyed with the public PEM", "HS256 keyed with the raw public key", "unknown kid",
    "another Ed25519 key", "garbage", "three garbage segments"])
def test_bad_tokens_are_401(system, case):
    mailyard, service, _, _ = system
    client = Rest(service.addresses["gateway"], _bad_authorizations(mailyard)[case])
    try:
        for path in ("/v1/messages/inbox", "/v1/labels", f"/v1/messages/{MISSING}"):
            status, code, _ = _error(client.get(path))
            assert (status, code) == (401, "UNAUTHENTICATED"), (case, path)
        status, code, _ = _error(client.post("/v1/messages", json={"to": [BOB], "body": "x"}))
        assert (status, code) == (401, "UNAUTHENTICATED"), case
    finally:
        client.close()


@pytest.mark.parametrize("authorization", ["", "Bearer", "Basic YWxpY2U6cHc=",
                                           "Token abc", "Bearer a b"])
def test_malformed_authorization_headers_are_401(system, authorization):
    _, service, _, _ = system
    client = Rest(service.addresses["gateway"], None)
    try:
        response = client.get("/v1/labels", headers={"Authorization": authorization})
        assert response.status_code == 401, (authorization, response.text)
    finally:
        client.close()


# A bare "." or ".." is resolved by the client itself (to a listing of her own
# mail), so only its percent-encoded forms reach the server as an id.
TRAVERSALS = HOSTILE_IDS + ["%2e", "%2e%2e", "..%2f..%2fetc%2fpasswd", "sha256%2f..%2f..",
                            "....//....//etc/passwd"]


@pytest.mark.parametrize("hostile", TRAVERSALS, ids=lambda s: repr(s[:20]))
def test_path_traversal_ids_are_refused_without_leaking(system, alices, hostile):
    _, _, alice, _ = system
    ids = {"message": hostile, "attachment": hostile, "draft": hostile, "thread": hostile,
           "label": hostile}
    attempts = [(method, path, options) for method, path, options in _routes(ids)]
    # The attachment route with her real message and a hostile attachment id.
    attempts.append(("GET", f"/v1/messages/{alices['message']}/attachments/"
                            f"{quote(hostile, safe='')}", {}))
    # Unquoted too: what a client that forgets to encode would send.
    if "\x00" not in hostile and "\\" not in hostile:
        attempts.append(("GET", f"/v1/messages/{hostile}", {}))
        attempts.append(("GET", f"/v1/messages/{alices['message']}/attachments/{hostile}", {}))
    for body_path in ("/v1/messages/modify", "/v1/messages/trash", "/v1/messages/delete"):
        attempts.append(("POST", body_path, {"json": {"ids": [hostile]}}))
    for method, path, options in attempts:
        response = alice.request(method, path, **options)
        assert response.status_code < 500, (method, path, response.status_code, response.text)
        assert b"root:" not in response.content and b"[boot loader]" not in response.content
        if response.status_code == 200:
            # A batch route skipping an id it does not know: nothing done.
            reply = response.json()
            assert not reply.get("deleted_ids") and not reply.get("messages"), (path, reply)
        else:
            assert response.status_code in (400, 401, 404, 405, 409, 422), \
                (method, path, response.status_code, response.text)
    _alice_unchanged(alice, alices)
    assert alice.get("/v1/labels").status_code == 200  # still serving


def test_oversized_bodies_are_refused_and_the_gateway_keeps_serving(system, alices):
    _, _, alice, _ = system
    huge_ids = {"ids": ["x" * 64] * 100_000}
    response = alice.post("/v1/messages/modify", json=huge_ids | {"add_labels": ["STARRED"]})
    assert 400 <= response.status_code < 500, response.status_code
    nested = "[" * 5000 + "]" * 5000
    response = alice.post("/v1/messages/trash", content=f'{{"ids": {nested}}}',
                          headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.status_code
    time.sleep(0.1)
    _alice_unchanged(alice, alices)
