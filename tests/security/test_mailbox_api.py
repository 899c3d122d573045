"""Security tests of the gRPC mailbox API against one real `mailyard up`:
bearer JWT edge cases, cross-user ids in batches and attachments, page tokens
replayed across users or forged, hostile ids and oversized requests.
(Plain foreign-id NOT_FOUND per method is tests/e2e/test_mailbox_api.py's.)"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from email.message import EmailMessage

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailyard.proto import mailbox_pb2 as pb
from mailyard.proto import mailbox_pb2_grpc
from tests.e2e.harness import Client, Mailyard, send

ALICE, BOB = "alice@example.test", "bob@example.test"
SENDER = "sender@remote.example"
# The local issuer's defaults (mailyard/policy/config.py AuthConfig, auth.py).
ISSUER, AUDIENCE, KID = "mailyard-local", "mailyard", "local-1"
ATTACHMENT = b"attachment bytes only alice may read\n" * 20


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("security"))
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    alice = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    bob = Client(service.addresses["mailbox"], mailyard.token(BOB))
    yield mailyard, service, alice, bob
    alice.close()
    bob.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def deliver(service, client: Client, subject: str, to: str, attach: bytes = b"") -> pb.MessageSummary:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, to, subject
    msg.set_content("hello")
    if attach:
        msg.add_attachment(attach, maintype="application", subtype="octet-stream",
                           filename="secret.bin")
    send(service.addresses["mx"], SENDER, [to], msg.as_bytes())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [m for m in client.list_all("") if m.subject == subject]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} never arrived")


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def still_serving(client: Client) -> None:
    assert client.call("ListLabels", pb.ListLabelsRequest()).labels


# --- JWT edge cases -------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**changes) -> dict:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": ALICE, "iat": now, "nbf": now,
              "exp": now + 600}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _local_key(mailyard: Mailyard) -> Ed25519PrivateKey:
    pem = (mailyard.data_dir / "keys" / "jwt-ed25519.pem").read_bytes()
    return serialization.load_pem_private_key(pem, password=None)


def _signed(key, claims: dict, kid: str | None = KID) -> str:
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid} if kid else None)


def _unsigned(header: dict, claims: dict, secret: bytes | None = None) -> str:
    """A JWT assembled by hand: PyJWT refuses to make the hostile ones."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = (hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
                 if secret is not None else b"")
    return f"{signing_input}.{_b64(signature)}"


def _list_as(address, authorization: str | None):
    channel = grpc.insecure_channel(f"{address[0]}:{address[1]}")
    try:
        metadata = [("authorization", authorization)] if authorization is not None else []
        return mailbox_pb2_grpc.MailboxStub(channel).ListMessages(
            pb.ListMessagesRequest(), metadata=metadata, timeout=10)
    finally:
        channel.close()


def _bad_authorizations(mailyard: Mailyard) -> dict[str, str | None]:
    key = _local_key(mailyard)
    public = key.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    public_raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    hour = 3600
    now = int(time.time())
    return {
        # Well past the verifier's 30 s leeway either way.
        "expired": _signed(key, _claims(iat=now - 2 * hour, nbf=now - 2 * hour, exp=now - hour)),
        "not yet valid": _signed(key, _claims(nbf=now + hour, exp=now + 2 * hour)),
        "wrong issuer": _signed(key, _claims(iss="https://evil.example")),
        "no issuer": _signed(key, _claims(iss=None)),
        "wrong audience": _signed(key, _claims(aud="someone-else")),
        "no audience": _signed(key, _claims(aud=None)),
        "no expiry": _signed(key, _claims(exp=None)),
        "subject not an address": _signed(key, _claims(sub="alice")),
        "alg none": _unsigned({"alg": "none", "typ": "JWT", "kid": KID}, _claims()),
        "alg None capitalised": _unsigned({"alg": "None", "typ": "JWT"}, _claims()),
        "HS256 keyed with the public PEM": _unsigned({"alg": "HS256", "typ": "JWT", "kid": KID},
                                                     _claims(), public_pem),
        "HS256 keyed with the raw public key": _unsigned({"alg": "HS256", "typ": "JWT"},
                                                         _claims(), public_raw),
        "unknown kid": _signed(key, _claims(), kid="someone-elses-key"),
        "another Ed25519 key": _signed(Ed25519PrivateKey.generate(), _claims()),
        "garbage": "garbage",
        "three garbage segments": "a.b.c",
    }


def test_the_hand_built_baseline_token_is_accepted(system):
    # Without this the refusals below could pass for a broken token builder.
    mailyard, service, _, _ = system
    key = _local_key(mailyard)
    assert _list_as(service.addresses["mailbox"], f"Bearer {_signed(key, _claims())}") is not None
    assert _list_as(service.addresses["mailbox"],
                    f"bearer {_signed(key, _claims(sub=BOB))}") is not None


@pytest.mark.parametrize("case", [
    "expired", "not yet valid", "wrong issuer", "no issuer", "wrong audience", "no audience",
    "no expiry", "subject not an address", "alg none", "alg None capitalised",
    "HS256 keyed with the public PEM", "HS256 keyed with the raw public key", "unknown kid",
    "another Ed25519 key", "garbage", "three garbage segments"])
def test_bad_tokens_are_unauthenticated_with_a_reason(system, case):
    mailyard, service, _, _ = system
    token = _bad_authorizations(mailyard)[case]
    code, details = code_of(lambda: _list_as(service.addresses["mailbox"], f"Bearer {token}"))
    assert code == grpc.StatusCode.UNAUTHENTICATED, (case, details)
    assert any(word in details for word in ("invalid token", "subject", "kid")), (case, details)


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Bearer    ",
                                           "Basic YWxpY2U6cHc=", "Token abc"])
def test_missing_or_malformed_authorization_is_unauthenticated(system, authorization):
    _, service, _, _ = system
    code, details = code_of(lambda: _list_as(service.addresses["mailbox"], authorization))
    assert code == grpc.StatusCode.UNAUTHENTICATED and details, (authorization, details)
    assert "authorization" in details


# --- another user's ids ---------------------------------------------------

@pytest.fixture(scope="module")
def alice_data(system):
    _, service, alice, bob = system
    message = deliver(service, alice, "alice private", ALICE, attach=ATTACHMENT)
    attachment = alice.get(message.id).attachments[0]
    assert alice.attachment(message.id, attachment.id) == ATTACHMENT
    bobs = deliver(service, bob, "bob own", BOB)
    return message, attachment, bobs


def test_bob_cannot_read_alices_attachment_even_with_her_exact_ids(system, alice_data):
    _, _, _, bob = system
    message, attachment, bobs = alice_data
    for message_id, attachment_id in ((message.id, attachment.id),
                                      (bobs.id, attachment.id)):  # his message, her attachment
        code, details = code_of(lambda: bob.attachment(message_id, attachment_id))
        assert code == grpc.StatusCode.NOT_FOUND, details
        assert ATTACHMENT[:20].decode() not in details


@pytest.mark.parametrize("method", ["ModifyLabels", "TrashMessages", "UntrashMessages",
                                    "DeleteMessages"])
def test_batches_mixing_own_and_foreign_ids_touch_only_the_callers(system, alice_data, method):
    _, _, alice, bob = system
    message, _, bobs = alice_data
    before = alice.get(message.id).summary
    request = (pb.ModifyLabelsRequest(ids=[message.id, bobs.id], add_labels=["STARRED"],
                                      remove_labels=["UNREAD"])
               if method == "ModifyLabels" else pb.MessageIdsRequest(ids=[message.id, bobs.id]))
    if method == "DeleteMessages":
        # Deleting Bob's own message would spoil the other cases: a fresh one of his.
        own = deliver(system[1], bob, "bob disposable", BOB)
        request = pb.MessageIdsRequest(ids=[message.id, own.id])
        response = bob.call(method, request)
        assert list(response.deleted_ids) == [own.id]
    else:
        response = bob.call(method, request)
        assert [m.id for m in response.messages] == [bobs.id]
    after = alice.get(message.id).summary
    assert (list(after.labels), after.unread) == (list(before.labels), before.unread)
    assert message.id in {m.id for m in alice.list_all("")}


# --- page tokens ----------------------------------------------------------

def _alice_tokens(system) -> dict[str, str]:
    _, service, alice, _ = system
    for i in range(3):
        deliver(service, alice, f"alice paging {i}", ALICE)
    for i in range(3):
        alice.call("CreateDraft", pb.CreateDraftRequest(content=pb.DraftContent(subject=f"d{i}")))
    tokens = {
        "ListMessages": alice.list(page_size=1).next_page_token,
        "ListMessages ALL": alice.list(label="ALL", page_size=1).next_page_token
        if _label_ok(alice, "ALL") else "",
        "ListThreads": alice.call("ListThreads", pb.ListThreadsRequest(page_size=1)).next_page_token,
        "ListDrafts": alice.call("ListDrafts", pb.ListDraftsRequest(page_size=1)).next_page_token,
    }
    return {name: token for name, token in tokens.items() if token}


def _label_ok(client: Client, label: str) -> bool:
    try:
        client.list(label=label, page_size=1)
        return True
    except grpc.RpcError:
        return False


def _replay(client: Client, name: str, token: str):
    if name.startswith("ListMessages"):
        label = name.partition(" ")[2]
        return client.list(label=label, page_size=1, page_token=token)
    if name == "ListThreads":
        return client.call(name, pb.ListThreadsRequest(page_size=1, page_token=token))
    return client.call(name, pb.ListDraftsRequest(page_size=1, page_token=token))


def test_alices_page_tokens_are_refused_to_bob_and_elsewhere(system, alice_data):
    _, _, alice, bob = system
    tokens = _alice_tokens(system)
    assert {"ListMessages", "ListThreads", "ListDrafts"} <= set(tokens)
    for name, token in tokens.items():
        _replay(alice, name, token)  # valid for her
        code, details = code_of(lambda: _replay(bob, name, token))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
    # Her own token is bound to its listing too: not another label or method.
    code, _ = code_of(lambda: alice.list(label="STARRED", page_size=1,
                                         page_token=tokens["ListMessages"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: _replay(alice, "ListDrafts", tokens["ListThreads"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_forged_page_tokens_are_refused(system, alice_data):
    _, _, alice, bob = system
    token = alice.list(page_size=1).next_page_token
    blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    mac, payload = blob[:16], blob[16:]
    scope, received_at, message_id = json.loads(payload)
    assert scope.startswith(ALICE)
    forgeries = {
        # Her signature on a payload re-scoped to Bob.
        "rescoped": mac + json.dumps([scope.replace(ALICE, BOB), received_at, message_id],
                                     separators=(",", ":")).encode(),
        "moved cursor": mac + json.dumps([scope, received_at + 10**9, message_id],
                                         separators=(",", ":")).encode(),
        "zero mac": bytes(16) + payload,
        "no mac": payload,
        "mac only": mac,
        "empty json": mac + b"[]",
        "not json": mac + b"\xff\xfe",
    }
    for name, forged in forgeries.items():
        text = _b64(forged)
        client = bob if name == "rescoped" else alice
        code, details = code_of(lambda: client.list(page_size=1, page_token=text))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
    for text in ("!!!", "\x00", "A" * 100_000):
        code, _ = code_of(lambda: alice.list(page_size=1, page_token=text))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, text[:10]


# --- hostile ids and oversized requests -----------------------------------

HOSTILE_IDS = ["../../etc/passwd", "sha256/../../x", "/etc/passwd", "..\\..\\boot.ini",
               "a\x00b", "\x00", "%2e%2e%2fetc%2fpasswd", "x" * 10_000, "' OR '1'='1"]


@pytest.mark.parametrize("hostile", HOSTILE_IDS, ids=lambda s: repr(s[:20]))
def test_hostile_ids_are_not_found_or_invalid(system, alice_data, hostile):
    _, _, alice, _ = system
    message, attachment, _ = alice_data
    refused = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
    calls = [
        lambda: alice.get(hostile),
        lambda: alice.get(hostile, pb.RAW),
        lambda: alice.attachment(message.id, hostile),
        lambda: alice.attachment(hostile, attachment.id),
        lambda: alice.modify([hostile], add=["STARRED"]),
        lambda: alice.call("TrashMessages", pb.MessageIdsRequest(ids=[hostile])),
        lambda: alice.call("GetThread", pb.GetThreadRequest(id=hostile)),
        lambda: alice.call("GetDraft", pb.GetDraftRequest(id=hostile)),
        lambda: alice.call("DeleteLabel", pb.DeleteLabelRequest(name=hostile)),
    ]
    for n, call in enumerate(calls):
        code, details = code_of(call)
        assert code in refused, (n, code, details[:200])
        assert "root:" not in details
    assert alice.attachment(message.id, attachment.id) == ATTACHMENT


def test_an_id_too_long_to_echo_back_still_gets_its_status(system, alice_data):
    # The details quote the id; unbounded, they overflowed gRPC's metadata limit
    # and the client saw "Stream removed" (mailyard/store/mailbox/bounded_details.py).
    _, _, alice, _ = system
    message, _, _ = alice_data
    for call in (lambda: alice.get("x" * 100_000),
                 lambda: alice.attachment(message.id, "x" * 100_000),
                 lambda: alice.call("GetDraft", pb.GetDraftRequest(id="x" * 100_000)),
                 lambda: alice.call("GetThread", pb.GetThreadRequest(id="x" * 100_000))):
        code, details = code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND, (code, details[:200])
        assert len(details) < 2000
    still_serving(alice)


def test_oversized_requests_are_refused_and_the_server_keeps_serving(system, alice_data):
    _, _, alice, _ = system
    message, _, _ = alice_data
    many = [f"{n:020d}" for n in range(100_000)] + [message.id]
    for method, request in (
            ("ModifyLabels", pb.ModifyLabelsRequest(ids=many, add_labels=["STARRED"])),
            ("TrashMessages", pb.MessageIdsRequest(ids=many)),
            ("DeleteMessages", pb.MessageIdsRequest(ids=many))):
        code, details = code_of(lambda: alice.call(method, request, timeout=30))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT,
                        grpc.StatusCode.RESOURCE_EXHAUSTED), (method, code, details)
        still_serving(alice)
    huge_label = "L" * (10 * 1024 * 1024)
    for method, request in (
            ("CreateLabel", pb.CreateLabelRequest(name=huge_label)),
            ("ModifyLabels", pb.ModifyLabelsRequest(ids=[message.id], add_labels=[huge_label]))):
        code, details = code_of(lambda: alice.call(method, request, timeout=30))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT,
                        grpc.StatusCode.RESOURCE_EXHAUSTED), (method, code, details)
        still_serving(alice)
    # A label name just under the transport limit still gets a reasoned refusal.
    code, details = code_of(lambda: alice.call(
        "CreateLabel", pb.CreateLabelRequest(name="L" * 1_000_000), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    after = alice.get(message.id).summary
    assert "STARRED" not in after.labels and "TRASH" not in after.labels
