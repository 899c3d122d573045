"""Spam filtering end to end: SMTP in, the delivery worker's spam stage, gRPC out,
and the classifier trained by users through ModifyLabels on a running service."""
from __future__ import annotations

import random
import smtplib
import time
from email.message import EmailMessage

import pytest

from mailyard.proto import mailbox_pb2
from tests.e2e.harness import Client, Mailyard, send, wire_form
from tests.spam_corpus import corpus

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
TRAIN, HELD_OUT = 200, 120
ZONE = """
$ORIGIN mailyard.test.
; mail from lottery.example never comes from 127.0.0.1
lottery.example. IN TXT "v=spf1 ip4:192.0.2.1 -all"
; a blocklist that only scores, listing 127.0.0.66
66.0.0.127.score.test. IN A 127.0.0.2
"""


def well_formed(subject: str, body: str, sender: str = "friend@remote.example") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, ALICE, subject
    msg["Date"] = "Sat, 28 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{random.randrange(10**12)}@remote.example>"
    msg.set_content(body)
    return msg.as_bytes()


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("spam"), zone=ZONE, settings={
        "services": ["mx", "delivery", "mailbox"],
        "mx": {"trusted_networks": ["127.0.0.1/32"]},
        "dnsbl": {"score_zones": ["score.test"]},
        "mailbox": {"quota_units": 1_000_000}})
    mailyard.add_users(ALICE, BOB, CAROL)
    # Blocked before the start: the running worker builds its filter from this.
    assert "blocked" in mailyard.cli("spam", "block", "blocked.example", "one@spammer.example")
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    clients = {user: Client(service.addresses["mailbox"], mailyard.token(user))
               for user in (ALICE, BOB, CAROL)}
    yield mailyard, service.addresses["mx"], clients
    for client in clients.values():
        client.close()
    mailyard.stop_all()


def find(client: Client, subject: str) -> mailbox_pb2.MessageSummary:
    for _ in range(150):
        found = [m for m in client.list_all("SPAM") + client.list_all("INBOX")
                 if m.subject == subject]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"{subject!r} never arrived")


def header(client: Client, message_id: str, name: str) -> str:
    message = client.get(message_id, mailbox_pb2.METADATA)
    return next(h.value for h in message.headers if h.name == name)


def test_gtube_is_caught_and_raw_stays_exact_below_the_headers(system):
    _, mx, clients = system
    alice = clients[ALICE]
    sent = well_formed("quarterly numbers", f"Hello,\n{GTUBE}\nregards\n")
    queue_id = send(mx, "friend@remote.example", [ALICE], sent)
    found = find(alice, "quarterly numbers")
    assert "SPAM" in found.labels and "INBOX" not in found.labels
    raw = alice.get(found.id, mailbox_pb2.RAW).raw
    assert raw.startswith(b"Received: from client.example.net ([127.0.0.1])\r\n")
    assert f"id {queue_id}".encode() in raw.split(b"X-Spam-Status:")[0]
    assert b"X-Spam-Status: Yes, score=1000.0 required=5.0\r\n\ttests=GTUBE=1000.0\r\n" in raw
    assert b"X-Spam-Score: 1000.0\r\n" in raw
    assert raw.endswith(wire_form(sent))  # the message itself byte for byte
    assert found.size == len(raw)

    clean = well_formed("lunch on friday", "Shall we meet at noon?\n")
    send(mx, "friend@remote.example", [ALICE], clean)
    found = find(alice, "lunch on friday")
    assert "INBOX" in found.labels and "SPAM" not in found.labels
    assert header(alice, found.id, "X-Spam-Status").startswith("No, score=0.0 required=5.0")


def sloppy(subject: str) -> bytes:
    return (b"From: Prize Desk <desk@lottery.example>\r\nReply-To: claims@elsewhere.example\r\n"
            b"To: alice@example.test\r\nSubject: " + subject.encode() + b"\r\n\r\n"
            b"Reply with your bank details.\r\n")


def test_header_anomalies_and_a_failed_spf_add_up_to_spam(system):
    _, mx, clients = system
    alice = clients[ALICE]
    anomalies = ("MISSING_DATE=1.0", "MISSING_MESSAGE_ID=0.5", "FROM_REPLY_TO_MISMATCH=1.5",
                 "SUBJECT_ALL_CAPS=1.5")
    # From a null sender SPF checks the HELO name, which has no record: anomalies alone.
    send(mx, "", [ALICE], sloppy("YOU HAVE BEEN SELECTED TODAY"))
    found = find(alice, "YOU HAVE BEEN SELECTED TODAY")
    status = header(alice, found.id, "X-Spam-Status")
    assert status.startswith("No, score=4.5") and all(t in status for t in anomalies)
    assert "INBOX" in found.labels
    # The same from an address whose domain's SPF says 127.0.0.1 may not send for it.
    send(mx, "desk@lottery.example", [ALICE], sloppy("YOU HAVE BEEN SELECTED AGAIN"))
    found = find(alice, "YOU HAVE BEEN SELECTED AGAIN")
    status = header(alice, found.id, "X-Spam-Status")
    assert status.startswith("Yes, score=6.5") and "SPF_FAIL=2.0" in status
    assert all(t in status for t in anomalies) and "SPAM" in found.labels


def test_blocked_senders_go_to_spam(system):
    _, mx, clients = system
    alice = clients[ALICE]
    send(mx, "news@mail.blocked.example", [ALICE], well_formed("weekly digest", "hi\n"))
    send(mx, "one@spammer.example", [ALICE], well_formed("a note", "hi\n",
                                                          sender="one@spammer.example"))
    send(mx, "two@spammer.example", [ALICE], well_formed("another note", "hi\n",
                                                          sender="two@spammer.example"))
    for subject in ("weekly digest", "a note"):
        found = find(alice, subject)
        assert "SPAM" in found.labels
        assert "BLOCKED_SENDER=100.0" in header(alice, found.id, "X-Spam-Status")
    assert "INBOX" in find(alice, "another note").labels  # its address is not blocked


def test_a_client_on_a_scoring_blocklist_gets_points_not_a_refusal(system):
    _, mx, clients = system
    for source, subject in (("127.0.0.66", "from a listed host"),
                            ("127.0.0.67", "from an unlisted host")):
        with smtplib.SMTP(*mx, timeout=30, source_address=(source, 0)) as smtp:
            smtp.ehlo("client.example.net")
            smtp.sendmail("friend@remote.example", [ALICE],
                          wire_form(well_formed(subject, "hello\n")))
    status = header(clients[ALICE], find(clients[ALICE], "from a listed host").id, "X-Spam-Status")
    assert status.startswith("No, score=3.0") and "DNSBL_LISTED=3.0" in status
    status = header(clients[ALICE], find(clients[ALICE], "from an unlisted host").id,
                    "X-Spam-Status")
    assert status.startswith("No, score=0.0")


def deliver_all(mx, rcpts: list[str], messages: list[bytes]) -> None:
    """One SMTP session for many messages, as a busy sender would, which
    tries a message again after a 4xx (a backend restarting, in the cluster)."""
    with smtplib.SMTP(*mx, timeout=60) as smtp:
        smtp.ehlo("client.example.net")
        for message in messages:
            for attempt in range(30):
                try:
                    assert not smtp.sendmail("sender@corpus.example", rcpts, wire_form(message))
                    break
                except smtplib.SMTPDataError as exc:
                    if exc.smtp_code // 100 != 4 or attempt == 29:
                        raise
                    time.sleep(2)


def by_subject(client: Client, subjects: set[str]) -> dict[str, mailbox_pb2.MessageSummary]:
    for _ in range(300):
        found = {m.subject: m for m in client.list_all("SPAM") + client.list_all("INBOX")
                 if m.subject in subjects}
        if len(found) == len(subjects):
            return found
        time.sleep(0.2)
    raise AssertionError(f"{len(subjects) - len(found)} messages never arrived")


def subject_of(message: bytes) -> str:
    return next(line[9:].decode() for line in message.splitlines()
                if line.startswith(b"Subject: "))


def test_classifier_trained_through_modify_labels_separates_held_out_mail(system):
    _, mx, clients = system
    precision, recall = train_and_compare(mx, clients[ALICE], clients[BOB], ALICE, BOB)
    assert precision >= 0.9 and recall >= 0.7


def train_and_compare(mx, alice: Client, bob: Client, alice_address: str,
                      bob_address: str) -> tuple[float, float]:
    """Alice trains on TRAIN messages through ModifyLabels; returns precision
    and recall on HELD_OUT messages delivered after, and checks that Bob's
    verdicts on them did not move."""
    training = corpus(seed=11, count=TRAIN, to=alice_address)
    held_out = corpus(seed=12, count=HELD_OUT, to=alice_address)
    deliver_all(mx, [alice_address], [m for _, m in training])
    delivered = by_subject(alice, {subject_of(m) for _, m in training})
    # Untrained, the classifier says nothing: the generated mail breaks no rule.
    assert all("INBOX" in m.labels for m in delivered.values())

    # Bob gets the held-out mail before Alice trains, and again after.
    deliver_all(mx, [bob_address], [m for _, m in held_out])
    subjects = {subject_of(m) for _, m in held_out}
    bob_before = {s: header(bob, m.id, "X-Spam-Score")
                  for s, m in by_subject(bob, subjects).items()}

    for spam, message in training:  # Alice files spam as spam, and marks ham "not spam"
        summary = delivered[subject_of(message)]
        if spam:
            alice.modify([summary.id], add=["SPAM"], remove=["INBOX"])
        else:
            alice.modify([summary.id], add=["INBOX"], remove=["SPAM"])

    # Fresh copies for both, one transaction each: one delivery, two verdicts.
    deliver_all(mx, [alice_address, bob_address], [retagged(m) for _, m in held_out])
    retagged_subjects = {subject_of(retagged(m)) for _, m in held_out}
    alice_after = by_subject(alice, retagged_subjects)
    tp = fp = fn = tn = 0
    for spam, message in held_out:
        filed_spam = "SPAM" in alice_after[subject_of(retagged(message))].labels
        tp += spam and filed_spam
        fp += (not spam) and filed_spam
        fn += spam and not filed_spam
        tn += (not spam) and not filed_spam
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    print(f"\nspam classifier on {HELD_OUT} held-out messages after {TRAIN} trained through"
          f" ModifyLabels: precision {precision:.3f} recall {recall:.3f}"
          f" (tp={tp} fp={fp} fn={fn} tn={tn})")

    # Alice's training moved none of Bob's verdicts: same scores, nothing in SPAM.
    bob_after = by_subject(bob, retagged_subjects)
    for _, message in held_out:
        summary = bob_after[subject_of(retagged(message))]
        assert "INBOX" in summary.labels
        assert header(bob, summary.id, "X-Spam-Score") == bob_before[subject_of(message)]
    return precision, recall


def retagged(message: bytes) -> bytes:
    """The same message under a subject of its own, so both copies can be told apart."""
    return message.replace(b"Subject: ", b"Subject: Again ", 1)
