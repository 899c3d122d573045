"""Search end to end: mail sent over real SMTP to a running `mailyard up` is
found by gRPC Search within seconds, and label changes show in is:read."""
from __future__ import annotations

import time
from email.message import EmailMessage

import grpc
import pytest

from tests.e2e.harness import Client, Mailyard, send

ALICE, BOB = "alice@example.test", "bob@example.test"
SENDER = "Sender Person <sender@remote.example>"


def message(subject: str, body: str, to: str = ALICE, attachment: tuple | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, to, subject
    msg.set_content(body)
    if attachment:
        name, data = attachment
        msg.add_attachment(data, maintype="text", subtype="plain", filename=name)
    return msg.as_bytes()


def wait_found(client: Client, query: str, count: int, timeout: float = 10.0) -> tuple[list, float]:
    """The results once there are `count` of them, and how long that took."""
    start = time.monotonic()
    while True:
        found = list(client.search(query).messages)
        if len(found) >= count or time.monotonic() - start > timeout:
            return found, time.monotonic() - start
        time.sleep(0.05)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("search"))
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    clients = {user: Client(service.addresses["mailbox"], mailyard.token(user))
               for user in (ALICE, BOB)}
    yield mailyard, service, clients
    for client in clients.values():
        client.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def test_new_mail_is_searchable_within_seconds(system):
    _, service, clients = system
    alice = clients[ALICE]
    delays = []
    for i in range(5):
        send(service.addresses["mx"], "sender@remote.example", [ALICE],
             message(f"harbour report {i}", f"the zanzibar{i} figures are in"))
        accepted = time.monotonic()  # the 250 has just been read
        found, _ = wait_found(alice, f"zanzibar{i}", 1)
        delays.append(time.monotonic() - accepted)
        assert [m.subject for m in found] == [f"harbour report {i}"]
    print(f"\nsearchable after 250: {', '.join(f'{d * 1000:.0f} ms' for d in delays)}")
    assert max(delays) < 5.0
    found = alice.search("subject:harbour").messages
    assert [m.subject for m in found] == [f"harbour report {i}" for i in (4, 3, 2, 1, 0)]
    assert all(m.unread and "INBOX" in m.labels for m in found)


def test_attachments_operators_and_pages(system):
    _, service, clients = system
    alice = clients[ALICE]
    send(service.addresses["mx"], "sender@remote.example", [ALICE],
         message("files for you", "see attached",
                 attachment=("ledger.txt", b"marmalade accounts ledger")))
    found, _ = wait_found(alice, "marmalade", 1)
    assert [m.subject for m in found] == ["files for you"]
    assert [m.subject for m in alice.search("has:attachment filename:ledger.txt").messages] == [
        "files for you"]
    assert alice.search("from:sender@remote.example -has:attachment").messages[0].subject == (
        "harbour report 4")
    pages, token = [], ""
    while True:
        page = alice.search("from:sender", page_size=2, page_token=token)
        pages.append([m.subject for m in page.messages])
        token = page.next_page_token
        if not token:
            break
    assert sum(pages, []) == ["files for you"] + [f"harbour report {i}" for i in (4, 3, 2, 1, 0)]
    assert all(len(p) <= 2 for p in pages)


def test_marking_read_is_reflected_in_is_read(system):
    _, _, clients = system
    alice = clients[ALICE]
    target = alice.search("zanzibar2").messages[0]
    assert alice.search("is:read").messages == []
    alice.modify([target.id], add=["STARRED"], remove=["UNREAD"])
    found, waited = wait_found(alice, "is:read", 1)
    print(f"\nlabel change searchable after {waited * 1000:.0f} ms")
    assert [m.id for m in found] == [target.id]
    assert [m.id for m in alice.search("is:starred harbour").messages] == [target.id]
    assert target.id not in {m.id for m in alice.search("is:unread").messages}


def test_users_only_find_their_own_mail(system):
    _, service, clients = system
    send(service.addresses["mx"], "sender@remote.example", [BOB],
         message("for bob only", "quokka sightings", to=BOB))
    found, _ = wait_found(clients[BOB], "quokka", 1)
    assert len(found) == 1
    assert clients[ALICE].search("quokka").messages == []
    assert clients[BOB].search("zanzibar1").messages == []


def test_bad_queries_and_tokens_are_invalid_argument(system):
    _, _, clients = system
    with pytest.raises(grpc.RpcError) as error:
        clients[ALICE].search("budget (unclosed")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "position 7" in error.value.details() and "never closed" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        clients[ALICE].search("harbour", page_token="forged")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as error:
        Client(system[1].addresses["mailbox"], None).search("harbour")
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reindex_rebuilds_the_same_answers(system):
    mailyard, _, clients = system
    before = [m.id for m in clients[ALICE].search("from:sender").messages]
    output = mailyard.cli("search", "reindex", ALICE)
    assert "reindexed 6 messages" in output
    assert [m.id for m in clients[ALICE].search("from:sender").messages] == before
    assert len(clients[ALICE].search("is:read").messages) == 1
