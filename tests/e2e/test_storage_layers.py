"""Blobs at rest, end to end: a quoting thread, a shared attachment, then key
rotation and tiering, each read back byte-exact through the gRPC API of one
`mailyard up`, and no blob file on disk holding a plaintext line."""
from __future__ import annotations

import asyncio
import base64
import random
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailyard.proto import mailbox_pb2
from mailyard.store.blobs.sealed import FLAG_DELTA, read_header
from tests.e2e.harness import Client, Mailyard, send, wire_form

ALICE, BOB = "alice@example.test", "bob@example.test"
SENDER = "list@lists.example"
WORDS = ("storage budget tier cold hot rotate secret thread quote reply archive cluster "
         "bucket prefix nightly review").split()
ATTACHMENT = random.Random(7).randbytes(60_000)


def paragraph(rng: random.Random, lines: int) -> str:
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(11)) + f" line-{rng.random():.12f}"
                     for _ in range(lines))


def thread(rng: random.Random) -> list[bytes]:
    """A list thread, each reply quoting the whole message before it."""
    messages, quoted, parent = [], "", None
    for n in range(4):
        msg = EmailMessage()
        msg["From"], msg["To"] = SENDER, f"{ALICE}, {BOB}"
        msg["Subject"] = ("Re: " if n else "") + "storage plans"
        msg["Message-ID"] = f"<thread-{n}@lists.example>"
        if parent:
            msg["In-Reply-To"] = parent
            msg["References"] = " ".join(f"<thread-{i}@lists.example>" for i in range(n))
        body = paragraph(rng, 8) + "\n\n" + "\n".join("> " + line for line in quoted.splitlines())
        msg.set_content(body + "\n")
        messages.append(msg.as_bytes())
        quoted, parent = body, msg["Message-ID"]
    return messages


def with_attachment(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, ALICE, subject
    msg.set_content("Minutes attached.\n")
    msg.add_attachment(ATTACHMENT, maintype="application", subtype="octet-stream",
                       filename="minutes.bin")
    return msg.as_bytes()


def known_lines(messages: list[bytes]) -> set[bytes]:
    """Lines that must never appear in a stored file: text lines of every
    message and a line of the attachment's base64."""
    lines = {line for m in messages for line in m.splitlines() if b"line-0." in line}
    return lines | {base64.b64encode(ATTACHMENT)[:76]}


def stored_headers(data_dir: Path) -> list:
    return [read_header(p.read_bytes()) for p in blob_files(data_dir)]


def blob_files(data_dir: Path) -> list[Path]:
    return [p for tier in ("blobs", "blobs-cold") for p in (data_dir / tier).rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("at-rest"))
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    clients = {a: Client(service.addresses["mailbox"], mailyard.token(a)) for a in (ALICE, BOB)}
    yield mailyard, service, clients
    for client in clients.values():
        client.close()
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


@pytest.fixture(scope="module")
def delivered(system):
    """The thread (to both users, one message at a time so each parent is
    stored before its reply) and the attachment mail, twice."""
    mailyard, service, clients = system
    mx = service.addresses["mx"]
    sent = []  # (queue id, message, recipients)
    for message in thread(random.Random(3)):
        sent.append((send(mx, SENDER, [ALICE, BOB], message), message, [ALICE, BOB]))
        clients[ALICE].wait_for(len([s for s in sent if ALICE in s[2]]))
    for n in range(2):
        message = with_attachment(f"minutes {n}")
        sent.append((send(mx, SENDER, [ALICE], message), message, [ALICE]))
    clients[ALICE].wait_for(len(sent))
    clients[BOB].wait_for(4)
    return mailyard, service, clients, sent


def assert_all_read_back(clients: dict[str, Client], sent) -> None:
    """RAW is the message as sent (after our trace header), the text part and
    the attachment are the sent ones, for every copy."""
    for address, client in clients.items():
        by_queue_id = {}
        for summary in client.list_all():
            raw = client.get(summary.id, mailbox_pb2.RAW).raw
            by_queue_id[next(q for q, *_ in sent if f"id {q}".encode() in raw)] = (summary, raw)
        mine = [(q, m) for q, m, rcpts in sent if address in rcpts]
        assert sorted(by_queue_id) == sorted(q for q, _ in mine)
        for queue_id, message in mine:
            summary, raw = by_queue_id[queue_id]
            assert raw.endswith(wire_form(message)), f"RAW of {queue_id} is not byte-exact"
            full = client.get(summary.id)
            assert full.text_body.replace("\r\n", "\n") == sent_text(message)
            for attachment in full.attachments:
                assert client.attachment(summary.id, attachment.id) == ATTACHMENT


def sent_text(message: bytes) -> str:
    parsed = message_from_bytes(message, policy=policy.default)
    return parsed.get_body(("plain",)).get_content().replace("\r\n", "\n")


def assert_no_plaintext(data_dir: Path, sent) -> None:
    lines = known_lines([m for _, m, _ in sent])
    assert len(lines) > 30
    files = blob_files(data_dir)
    assert files
    for path in files:
        content = path.read_bytes()
        leaked = [line for line in lines if line in content]
        assert not leaked, f"{path} holds plaintext: {leaked[:1]}"


def test_replies_are_delta_encoded_and_read_back_exact(delivered):
    mailyard, _, clients, sent = delivered
    assert_all_read_back(clients, sent)
    headers = [h for h in stored_headers(mailyard.data_dir) if h is not None]
    deltas = [h for h in headers if h.flags & FLAG_DELTA]
    # Each reply's text part is a delta on its parent's (three replies).
    assert len(deltas) >= 3, [h.flags for h in headers]
    assert max(h.depth for h in deltas) >= 2  # reply to a reply: a chain
    # Each base is kept alive by its delta (the link the collector follows).
    owners = asyncio.run(base_owners(mailyard.data_dir))
    assert owners and all(f"blob/{delta}" in found for delta, found in owners.items())


async def base_owners(data_dir: Path) -> dict[str, list[str]]:
    """For each delta blob on disk, the owners linked to its base."""
    from mailyard.store.metadata.sqlite import SqliteMetadataStore
    metadata = SqliteMetadataStore(data_dir / "metadata.db")
    await metadata.start()
    try:
        found = {}
        for path in blob_files(data_dir):
            header = read_header(path.read_bytes())
            if header and header.flags & FLAG_DELTA:
                found["sha256/" + path.name] = await metadata.blob_owners(header.base)
        return found
    finally:
        await metadata.close()


def test_no_blob_file_holds_a_plaintext_line(delivered):
    mailyard, _, _, sent = delivered
    assert_no_plaintext(mailyard.data_dir, sent)
    assert all(h is not None and h.key_id == 1 for h in stored_headers(mailyard.data_dir))


def test_rotation_leaves_every_message_readable(delivered):
    mailyard, service, clients, sent = delivered
    output = mailyard.cli("keys", "rotate")
    assert "new current key: 2" in output and "re-sealed" in output
    assert {h.key_id for h in stored_headers(mailyard.data_dir)} == {2}
    assert_all_read_back(clients, sent)
    # The running server picked the new key up for what it writes next.
    later = with_attachment("after rotation").replace(b"Minutes", b"Later minutes")
    sent.append((send(service.addresses["mx"], SENDER, [ALICE], later), later, [ALICE]))
    clients[ALICE].wait_for(len([s for s in sent if ALICE in s[2]]))
    assert_all_read_back(clients, sent)
    assert {h.key_id for h in stored_headers(mailyard.data_dir)} == {2}
    assert "key 2:" in mailyard.cli("keys", "list")


def test_old_mail_moves_to_the_cold_tier_and_reads_stay_exact(delivered):
    mailyard, _, clients, sent = delivered
    hot_before = len(list((mailyard.data_dir / "blobs").rglob("sha256/*/*/*")))
    output = mailyard.cli("tier", "run", "--after-days", "0")
    assert "moved" in output
    cold = list((mailyard.data_dir / "blobs-cold").rglob("sha256/*/*/*"))
    hot = list((mailyard.data_dir / "blobs").rglob("sha256/*/*/*"))
    assert cold and len(hot) < hot_before
    assert_all_read_back(clients, sent)
    assert_no_plaintext(mailyard.data_dir, sent)
    # A second run finds nothing left to move.
    assert "moved 0 blobs" in mailyard.cli("tier", "run", "--after-days", "0")
