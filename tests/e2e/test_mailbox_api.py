"""The mailbox API beyond listing and reading, over a real gRPC server on
`mailyard up`: trash and delete, labels, drafts and sending, threads, paging
while mail arrives, quotas, and isolation between users for every call."""
from __future__ import annotations

import time
from email.message import EmailMessage

import grpc
import pytest
from grpc_status import rpc_status
from google.rpc import error_details_pb2

from mailyard.proto import mailbox_pb2 as pb
from tests.e2e.harness import Client, Mailyard, send

ALICE, BOB = "alice@example.test", "bob@example.test"
SENDER = "sender@remote.example"


def mail(subject: str, body: str = "hello", message_id: str = "", in_reply_to: str = "",
         to: str = ALICE) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, to, subject
    if message_id:
        msg["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
        msg["References"] = f"<{in_reply_to}>"
    msg.set_content(body)
    return msg.as_bytes()


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("api"))
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox", "gateway")
    alice = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    bob = Client(service.addresses["mailbox"], mailyard.token(BOB))
    yield mailyard, service, alice, bob
    alice.close()
    bob.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def deliver(service, client: Client, subject: str, **kwargs) -> pb.MessageSummary:
    """Sends one message over SMTP and waits until the client sees it."""
    to = kwargs.pop("to", ALICE)
    send(service.addresses["mx"], SENDER, [to], mail(subject, to=to, **kwargs))
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


def ids_req(*ids: str) -> pb.MessageIdsRequest:
    return pb.MessageIdsRequest(ids=list(ids))


# --- trash and delete ----------------------------------------------------

def test_trash_takes_out_of_inbox_and_untrash_puts_back(system):
    _, service, alice, _ = system
    first = deliver(service, alice, "trash me")
    second = deliver(service, alice, "trash me too")
    alice.modify([first.id], add=["STARRED"])
    trashed = alice.call("TrashMessages", ids_req(first.id, second.id, "0" * 20))
    assert [m.id for m in trashed.messages] == [first.id, second.id]
    assert all("TRASH" in m.labels and "INBOX" not in m.labels for m in trashed.messages)
    inbox = {m.id for m in alice.list_all()}
    assert first.id not in inbox and second.id not in inbox
    assert {m.id for m in alice.list_all("TRASH")} >= {first.id, second.id}
    untrashed = alice.call("UntrashMessages", ids_req(first.id))
    assert set(untrashed.messages[0].labels) == {"INBOX", "STARRED", "UNREAD"}
    assert first.id in {m.id for m in alice.list_all()}


def test_delete_is_permanent_and_search_drops_it(system):
    mailyard, service, alice, _ = system
    doomed = deliver(service, alice, "doomed zanzibarish message")
    deadline = time.monotonic() + 20
    while not alice.search("zanzibarish").messages and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m.id for m in alice.search("zanzibarish").messages] == [doomed.id]
    reply = alice.call("DeleteMessages", ids_req(doomed.id, doomed.id))
    assert list(reply.deleted_ids) == [doomed.id]
    code, _ = code_of(lambda: alice.get(doomed.id))
    assert code == grpc.StatusCode.NOT_FOUND
    assert doomed.id not in {m.id for m in alice.list_all()}
    deadline = time.monotonic() + 20
    while alice.search("zanzibarish").messages and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alice.search("zanzibarish").messages == []
    # Its blob links are gone: no owner names the message any more.
    import sqlite3
    db = sqlite3.connect(mailyard.data_dir / "metadata.db")
    owners = db.execute("SELECT count(*) FROM blob_links WHERE owner = ?",
                        (f"{ALICE}/{doomed.id}",)).fetchone()[0]
    db.close()
    assert owners == 0
    code, _ = code_of(lambda: alice.call("DeleteMessages", ids_req(doomed.id)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_trash_and_delete_validate_ids(system):
    _, _, alice, _ = system
    for method in ("TrashMessages", "UntrashMessages", "DeleteMessages"):
        code, _ = code_of(lambda: alice.call(method, ids_req()))
        assert code == grpc.StatusCode.INVALID_ARGUMENT


# --- labels --------------------------------------------------------------

def labels_by_name(client: Client) -> dict[str, pb.Label]:
    return {label.name: label for label in client.call("ListLabels", pb.ListLabelsRequest()).labels}


def test_labels_lifecycle_with_counts(system):
    _, service, alice, _ = system
    tagged = deliver(service, alice, "label me")
    created = alice.call("CreateLabel", pb.CreateLabelRequest(name="Projects/Alpha"))
    assert (created.name, created.type, created.messages_total) == (
        "Projects/Alpha", pb.Label.USER, 0)
    alice.modify([tagged.id], add=["Projects/Alpha"])
    labels = labels_by_name(alice)
    assert labels["Projects/Alpha"].messages_total == 1
    assert labels["Projects/Alpha"].messages_unread == 1
    assert labels["INBOX"].type == pb.Label.SYSTEM
    assert labels["INBOX"].messages_total >= 1
    renamed = alice.call("RenameLabel", pb.RenameLabelRequest(name="Projects/Alpha",
                                                              new_name="Projects/Beta"))
    assert (renamed.name, renamed.messages_total) == ("Projects/Beta", 1)
    assert "Projects/Beta" in alice.get(tagged.id).summary.labels
    assert [m.id for m in alice.list_all("Projects/Beta")] == [tagged.id]
    deleted = alice.call("DeleteLabel", pb.DeleteLabelRequest(name="Projects/Beta"))
    assert list(deleted.message_ids) == [tagged.id]
    assert "Projects/Beta" not in labels_by_name(alice)
    assert "Projects/Beta" not in alice.get(tagged.id).summary.labels


def test_modify_labels_creates_user_labels_on_first_use(system):
    _, service, alice, _ = system
    message = deliver(service, alice, "auto label")
    alice.modify([message.id], add=["Receipts"])
    assert labels_by_name(alice)["Receipts"].messages_total == 1


def test_label_names_are_validated(system):
    _, _, alice, _ = system
    for name in ("", " padded", "inbox", "Trash", "x" * 300, "bad\nname"):
        code, _ = code_of(lambda: alice.call("CreateLabel", pb.CreateLabelRequest(name=name)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
    alice.call("CreateLabel", pb.CreateLabelRequest(name="Dup"))
    code, _ = code_of(lambda: alice.call("CreateLabel", pb.CreateLabelRequest(name="Dup")))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, _ = code_of(lambda: alice.call("RenameLabel", pb.RenameLabelRequest(
        name="INBOX", new_name="Other")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: alice.modify(["x"], add=["spam"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# --- drafts and sending --------------------------------------------------

def content(**fields) -> pb.DraftContent:
    return pb.DraftContent(**fields)


def test_draft_is_readable_at_once_and_stale_update_is_aborted(system):
    _, _, alice, _ = system
    draft = alice.call("CreateDraft", pb.CreateDraftRequest(
        content=content(to=[BOB], subject="plan", body="first words")))
    assert draft.version == 1
    assert alice.call("GetDraft", pb.GetDraftRequest(id=draft.id)) == draft
    phone = alice.call("UpdateDraft", pb.UpdateDraftRequest(
        id=draft.id, version=1, content=content(to=[BOB], subject="plan", body="from the phone")))
    assert phone.version == 2
    code, details = code_of(lambda: alice.call("UpdateDraft", pb.UpdateDraftRequest(
        id=draft.id, version=1, content=content(to=[BOB], subject="plan", body="from the laptop"))))
    assert code == grpc.StatusCode.ABORTED, details
    assert alice.call("GetDraft", pb.GetDraftRequest(id=draft.id)).content.body == "from the phone"
    assert draft.id in {d.id for d in alice.call("ListDrafts", pb.ListDraftsRequest()).drafts}
    code, _ = code_of(lambda: alice.call("DeleteDraft", pb.DeleteDraftRequest(id=draft.id,
                                                                              version=1)))
    assert code == grpc.StatusCode.ABORTED
    alice.call("DeleteDraft", pb.DeleteDraftRequest(id=draft.id, version=2))
    code, _ = code_of(lambda: alice.call("GetDraft", pb.GetDraftRequest(id=draft.id)))
    assert code == grpc.StatusCode.NOT_FOUND


def test_drafts_validate_their_content(system):
    _, _, alice, _ = system
    for bad in (content(to=["not an address"]), content(subject="two\nlines"),
                content(reply_to_id="0" * 20)):
        code, _ = code_of(lambda: alice.call("CreateDraft", pb.CreateDraftRequest(content=bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: alice.call("UpdateDraft", pb.UpdateDraftRequest(
        id="x", version=0, content=content())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_send_draft_files_sent_copy_and_delivers_locally(system):
    _, _, alice, bob = system
    draft = alice.call("CreateDraft", pb.CreateDraftRequest(
        content=content(to=[BOB], bcc=[ALICE], subject="lunch friday?", body="Noon at the usual place.")))
    sent = alice.call("SendDraft", pb.SendDraftRequest(id=draft.id, version=1))
    # Sent is right the moment the call returns.
    assert sent.sent.id in {m.id for m in alice.list_all("SENT")}
    assert set(sent.sent.labels) == {"SENT"}
    code, _ = code_of(lambda: alice.call("GetDraft", pb.GetDraftRequest(id=draft.id)))
    assert code == grpc.StatusCode.NOT_FOUND
    received = next(m for m in bob.wait_for(1) if m.subject == "lunch friday?")
    raw = bob.get(received.id, pb.RAW).raw
    assert b"Noon at the usual place." in raw and b"Bcc" not in raw
    assert bob.get(received.id).summary.__getattribute__("from") == ALICE
    # The Bcc'd sender gets an inbox copy too, separate from her SENT copy.
    copies = [m for m in alice.wait_for(1) if m.subject == "lunch friday?"]
    assert copies and all(m.id != sent.sent.id for m in copies)


def test_a_refused_send_stores_nothing_and_keeps_the_draft(system):
    # Sending to remote recipients is tests/e2e/test_submission.py's.
    _, _, alice, _ = system
    before = len(alice.list_all("SENT"))
    draft = alice.call("CreateDraft", pb.CreateDraftRequest(
        content=content(to=[BOB, "nobody@example.test"], subject="mixed")))
    code, details = code_of(lambda: alice.call("SendDraft", pb.SendDraftRequest(id=draft.id)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nobody@example.test" in details
    assert len(alice.list_all("SENT")) == before
    assert alice.call("GetDraft", pb.GetDraftRequest(id=draft.id)).id == draft.id
    code, _ = code_of(lambda: alice.call("SendMessage", pb.SendMessageRequest(content=content())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# --- threads -------------------------------------------------------------

def test_threads_by_references_and_by_subject_fallback(system):
    _, service, alice, bob = system
    first = deliver(service, alice, "Budget 2025", message_id="budget-1@remote.example")
    reply = deliver(service, alice, "Re: Budget 2025", message_id="budget-2@remote.example",
                    in_reply_to="budget-1@remote.example")
    dropped = deliver(service, alice, "RE:  budget 2025", message_id="budget-3@remote.example")
    unrelated = deliver(service, alice, "Budget 2025 (new)")
    assert first.thread_id == reply.thread_id == dropped.thread_id != unrelated.thread_id
    thread = alice.call("GetThread", pb.GetThreadRequest(id=first.thread_id))
    assert [m.id for m in thread.messages] == [first.id, reply.id, dropped.id]
    # Bob's copy of a reply to Alice's conversation is in a thread of his own.
    bobs = deliver(service, bob, "Re: Budget 2025", to=BOB, in_reply_to="budget-1@remote.example")
    assert bobs.thread_id != first.thread_id
    code, _ = code_of(lambda: bob.call("GetThread", pb.GetThreadRequest(id=first.thread_id)))
    assert code == grpc.StatusCode.NOT_FOUND
    # A reply she sends joins the thread as her SENT copy.
    sent = alice.call("SendMessage", pb.SendMessageRequest(content=content(
        to=[BOB], subject="Re: Budget 2025", body="agreed", reply_to_id=reply.id)))
    assert sent.sent.thread_id == first.thread_id


def test_list_threads_shows_each_conversation_once(system):
    _, service, alice, _ = system
    a1 = deliver(service, alice, "Thread A", message_id="ta-1@remote.example")
    deliver(service, alice, "Thread B", message_id="tb-1@remote.example")
    a2 = deliver(service, alice, "Re: Thread A", message_id="ta-2@remote.example",
                 in_reply_to="ta-1@remote.example")
    seen, token = [], ""
    while True:
        page = alice.call("ListThreads", pb.ListThreadsRequest(page_size=2, page_token=token))
        seen += list(page.threads)
        token = page.next_page_token
        if not token:
            break
    ids = [t.id for t in seen]
    assert len(ids) == len(set(ids))
    thread_a = next(t for t in seen if t.id == a1.thread_id)
    assert thread_a.latest.id == a2.id and thread_a.message_count == 2
    assert ids.index(a1.thread_id) == 0  # the newest conversation first


# --- pagination ----------------------------------------------------------

def test_page_tokens_stay_stable_while_mail_arrives(system):
    _, service, _, bob = system
    for i in range(6):
        deliver(service, bob, f"paging {i}", to=BOB)
    before = bob.list_all()
    page = bob.list(page_size=3)
    for i in range(3):
        deliver(service, bob, f"arrived while paging {i}", to=BOB)
    ids, token = [m.id for m in page.messages], page.next_page_token
    while token:
        page = bob.list(page_size=3, page_token=token)
        ids += [m.id for m in page.messages]
        token = page.next_page_token
    assert ids == [m.id for m in before]  # nothing skipped or repeated
    page_token = bob.list(page_size=3).next_page_token
    tampered = page_token[:-2] + ("A" if page_token[-2] != "A" else "B") + page_token[-1]
    code, _ = code_of(lambda: bob.list(page_size=3, page_token=tampered))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# --- isolation -----------------------------------------------------------

def test_every_new_call_treats_a_foreign_id_like_a_missing_one(system):
    _, service, alice, bob = system
    message = deliver(service, alice, "private")
    draft = alice.call("CreateDraft", pb.CreateDraftRequest(content=content(subject="secret")))
    alice.call("CreateLabel", pb.CreateLabelRequest(name="Private"))
    missing = "0" * 20
    calls = {
        "TrashMessages": lambda i: pb.MessageIdsRequest(ids=[i]),
        "UntrashMessages": lambda i: pb.MessageIdsRequest(ids=[i]),
        "DeleteMessages": lambda i: pb.MessageIdsRequest(ids=[i]),
        "GetThread": lambda i: pb.GetThreadRequest(id=i),
    }
    for method, make in calls.items():
        foreign = code_of(lambda: bob.call(method, make(message.thread_id if method == "GetThread"
                                                        else message.id)))
        absent = code_of(lambda: bob.call(method, make(missing)))
        assert foreign[0] == absent[0] == grpc.StatusCode.NOT_FOUND, method
        assert foreign[1].replace(message.id, "X").replace(message.thread_id, "X") == \
            absent[1].replace(missing, "X"), method
    for method, make in {"GetDraft": lambda i: pb.GetDraftRequest(id=i),
                         "UpdateDraft": lambda i: pb.UpdateDraftRequest(id=i, version=1,
                                                                        content=content()),
                         "DeleteDraft": lambda i: pb.DeleteDraftRequest(id=i),
                         "SendDraft": lambda i: pb.SendDraftRequest(id=i)}.items():
        foreign = code_of(lambda: bob.call(method, make(draft.id)))
        absent = code_of(lambda: bob.call(method, make(missing)))
        assert foreign[0] == absent[0] == grpc.StatusCode.NOT_FOUND, method
        assert foreign[1].replace(draft.id, "X") == absent[1].replace(missing, "X"), method
    for method, request in {"RenameLabel": pb.RenameLabelRequest(name="Private", new_name="Mine"),
                            "DeleteLabel": pb.DeleteLabelRequest(name="Private")}.items():
        assert code_of(lambda: bob.call(method, request))[0] == grpc.StatusCode.NOT_FOUND
    assert "Private" not in labels_by_name(bob)
    assert draft.id not in {d.id for d in bob.call("ListDrafts", pb.ListDraftsRequest()).drafts}
    code, _ = code_of(lambda: bob.call("CreateDraft", pb.CreateDraftRequest(
        content=content(reply_to_id=message.id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing of Alice's changed.
    assert alice.get(message.id).summary.labels == message.labels
    assert alice.call("GetDraft", pb.GetDraftRequest(id=draft.id)).version == 1
    assert "Private" in labels_by_name(alice)


def test_new_calls_need_a_token(system):
    _, service, _, _ = system
    anonymous = Client(service.addresses["mailbox"], None)
    for method, request in (("ListLabels", pb.ListLabelsRequest()),
                            ("ListDrafts", pb.ListDraftsRequest()),
                            ("TrashMessages", ids_req("x")),
                            ("ListChanges", pb.ListChangesRequest())):
        assert code_of(lambda: anonymous.call(method, request))[0] == grpc.StatusCode.UNAUTHENTICATED
    anonymous.close()


# --- quotas --------------------------------------------------------------

def test_quota_refuses_with_retry_info_then_recovers(tmp_path):
    mailyard = Mailyard(tmp_path, settings={"mailbox": {"quota_units": 30, "quota_window": 2.0},
                                            "services": ["mailbox"]})
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    try:
        service.wait_listening("mailbox")
        alice = Client(service.addresses["mailbox"], mailyard.token(ALICE))
        bob = Client(service.addresses["mailbox"], mailyard.token(BOB))
        # Listing costs 5 units, so a window holds 6 listings; a send (100) never fits.
        deadline = time.monotonic() + 10
        with pytest.raises(grpc.RpcError) as err:
            while time.monotonic() < deadline:
                alice.list()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(err.value)
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info)
        delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        assert 0 < delay <= 2.0
        assert float(dict(err.value.trailing_metadata())["retry-after"]) > 0
        bob.list()  # per user: Bob is not affected
        time.sleep(delay + 0.05)
        alice.list()  # the next window admits her again
        code, _ = code_of(lambda: alice.call("SendMessage", pb.SendMessageRequest(
            content=content(to=[BOB]))))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        alice.close()
        bob.close()
    finally:
        assert service.stop() == 0
