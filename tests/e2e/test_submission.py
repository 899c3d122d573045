"""SMTP submission and the API's sending over real sockets against `mailyard up`:
swaks with STARTTLS + AUTH PLAIN, implicit TLS, XOAUTH2/OAUTHBEARER, the SENT
copy there when the client hears 250, DKIM signatures an independent verifier
accepts (keys published in the stub zone as `mailyard dkim keygen` says), and
the refusals: open relay, spoofed sender, sending limits, password guessing.

The outbound workers are not started here: what leaves for the internet is
read from the outbound queue entry and its spool blob, where they pick it up.
Each test sends as its own user, since limits are per user, and clients that
fail logins connect from their own 127.0.0.x, since failures count per IP.
"""
from __future__ import annotations

import asyncio
import base64
import re
import smtplib
import ssl
import subprocess
import time

import grpc
import pytest

from mailyard.policy import config as config_module
from mailyard.proto import events_pb2
from mailyard.proto import mailbox_pb2 as pb
from mailyard.store.blobs.base import blob_key
from mailyard.store.stores import Stores
from tests.dkim_verifiers import mail_dkim, need, opendkim
from tests.e2e.harness import Client, Mailyard, wire_form

PASSWORD = "correct horse battery staple"
ALICE, BOB = "alice@example.test", "bob@example.test"
REMOTE = "carol@remote.example"
USERS = [ALICE, BOB] + [f"{name}@example.test" for name in
                        ("erin", "frank", "rita", "dora", "vic", "olga", "gina", "tess")]
ZONE = 'remote.example. IN MX 10 mx.remote.example.\nmx.remote.example. IN A 127.0.0.2\n'
SETTINGS = {
    "services": ["mx", "delivery", "mailbox", "submission"],
    "submission": {"messages_per_hour": 4, "recipients_per_day": 6,
                   "auth_failures_per_ip": 3, "auth_failures_per_user": 3,
                   "aliases": {"postmaster@example.test": "frank@example.test"}},
}


def publish_dkim_key(mailyard: Mailyard, zone: str) -> None:
    """The operator's steps: make a key, publish the record, add the config lines."""
    printed = mailyard.cli("dkim", "keygen", "example.test", "--selector", "e2e")
    zone_line = re.search(r"^  zone:  (.*)$", printed, re.M).group(1)
    mailyard.zone_file.write_text(zone + zone_line + "\n")
    with open(mailyard.config, "a") as config:
        config.write("\n" + printed[printed.index("[[dkim.keys]]"):])


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("submission"), zone=ZONE, settings=SETTINGS)
    mailyard.add_users(*USERS)
    publish_dkim_key(mailyard, ZONE)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox", "submission", "submissions")
    yield mailyard, service
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def client(system, user: str) -> Client:
    mailyard, service = system
    return Client(service.addresses["mailbox"], mailyard.token(user))


def outbound(mailyard: Mailyard, queue_id: str):
    """The outbound queue entry and the spooled message, read as the workers will."""
    async def read():
        stores = Stores(config_module.load(mailyard.config, str(mailyard.data_dir)))
        try:
            entry = await (await stores.metadata()).get_outbound(queue_id)
            if entry is None:
                return None, None, None
            envelope = events_pb2.OutboundEnvelope.FromString(entry.envelope)
            return entry, envelope, await (await stores.blobs()).get(envelope.spool_key)
        finally:
            await stores.close()
    return asyncio.run(read())


def blob_exists(mailyard: Mailyard, key: str) -> bool:
    async def exists():
        stores = Stores(config_module.load(mailyard.config, str(mailyard.data_dir)))
        try:
            return await (await stores.blobs()).exists(key)
        finally:
            await stores.close()
    return asyncio.run(exists())


def outbound_count(mailyard: Mailyard) -> int:
    async def count():
        stores = Stores(config_module.load(mailyard.config, str(mailyard.data_dir)))
        try:
            return len(await (await stores.metadata()).list_outbound(1000))
        finally:
            await stores.close()
    return asyncio.run(count())


def swaks(address, *args: str) -> str:
    need("swaks")
    done = subprocess.run(["swaks", "--server", f"{address[0]}:{address[1]}", *args],
                          capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def queued_id(transcript: str) -> str:
    return re.search(r"<~  250 2\.0\.0 Ok: queued as (\S+)", transcript).group(1)


def insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def session(address, source: str = "127.0.0.1", starttls: bool = True,
            implicit: bool = False) -> smtplib.SMTP:
    if implicit:
        smtp = smtplib.SMTP_SSL(*address, timeout=30, source_address=(source, 0),
                                context=insecure())
    else:
        smtp = smtplib.SMTP(*address, timeout=30, source_address=(source, 0))
    smtp.ehlo("client.example.net")
    if starttls and not implicit:
        smtp.starttls(context=insecure())
        smtp.ehlo("client.example.net")
    return smtp


def login(smtp: smtplib.SMTP, user: str, password: str = PASSWORD) -> tuple[int, bytes]:
    """One AUTH PLAIN (smtplib's login() would try LOGIN too after a failure)."""
    smtp.user, smtp.password = user, password
    try:
        smtp.auth("PLAIN", smtp.auth_plain)
        return 235, b""
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code, exc.smtp_error


def message(author: str, to: str, subject: str) -> bytes:
    return wire_form(f"From: {author}\nTo: {to}\nSubject: {subject}\n\nBody of {subject}.\n"
                     .encode())


def find(reader: Client, label: str, subject: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in reader.list_all(label) if m.subject == subject]
        if found or time.monotonic() > deadline:
            return found[0] if found else None
        time.sleep(0.2)


def test_swaks_starttls_auth_plain_local_and_remote(system, tmp_path):
    mailyard, service = system
    transcript = swaks(service.addresses["submission"], "--ehlo", "client.example.net",
                       "--tls", "--auth", "PLAIN",
                       "--auth-user", ALICE, "--auth-password", PASSWORD,
                       "--from", ALICE, "--to", f"{BOB},{REMOTE}",
                       "--header", "Subject: over submission", "--header", f"Bcc: {REMOTE}",
                       "--body", "Signed, sealed, delivered.")
    assert " -> STARTTLS" in transcript and "220 2.0.0 Ready to start TLS" in transcript
    assert "235 2.7.0 Authentication successful" in transcript, transcript
    queue_id = queued_id(transcript)
    alice = client(system, ALICE)
    # The SENT copy is there as soon as the client has its 250: no waiting.
    sent = [m for m in alice.list_all("SENT") if m.subject == "over submission"]
    assert len(sent) == 1 and list(sent[0].labels) == ["SENT"]

    entry, envelope, raw = outbound(mailyard, queue_id)
    assert entry is not None and entry.state == "queued"
    assert list(envelope.rcpt_to) == [REMOTE]  # remote recipients only
    assert envelope.user_id == ALICE and envelope.mail_from == ALICE
    assert raw.startswith(b"Received: from client.example.net ([127.0.0.1])\r\n\t(using TLSv1.")
    assert f"with ESMTPSA id {queue_id}".encode() in raw
    assert b"Bcc:" not in raw and b"DKIM-Signature:" in raw
    zone = mailyard.zone_file
    assert mail_dkim(raw, zone) == [("pass", "example.test", "rsa-sha256")]
    assert opendkim(raw, zone, tmp_path / "opendkim") == ["pass"]

    # Bob, local, gets his copy through the delivery worker, which then drops
    # its spool blob: the outbound one must survive that.
    bob = client(system, BOB)
    received = find(bob, "INBOX", "over submission")
    assert received is not None
    local_raw = bob.get(received.id, pb.RAW).raw
    assert f"id {queue_id}-L".encode() in local_raw and b"Bcc:" not in local_raw
    assert opendkim(local_raw, zone, tmp_path / "opendkim-local") == ["pass"]
    # The worker drops the inbound spool (the key of these very bytes) after
    # its commit; once it is gone, the outbound spool must still be there.
    local_spool = blob_key(local_raw)
    deadline = time.monotonic() + 30
    while blob_exists(mailyard, local_spool):
        assert time.monotonic() < deadline, "the delivery worker never dropped its spool"
        time.sleep(0.2)
    assert outbound(mailyard, queue_id)[2] == raw, "local delivery took the outbound spool"
    alice.close()
    bob.close()


def test_implicit_tls_and_login(system):
    mailyard, service = system
    erin = "erin@example.test"
    transcript = swaks(service.addresses["submissions"], "--tls-on-connect", "--auth", "LOGIN",
                       "--auth-user", erin, "--auth-password", PASSWORD, "--from", erin,
                       "--to", BOB, "--header", "Subject: over implicit tls")
    queue_id = queued_id(transcript)
    bob = client(system, BOB)
    received = find(bob, "INBOX", "over implicit tls")
    raw = bob.get(received.id, pb.RAW).raw
    assert f"with ESMTPSA id {queue_id}-L".encode() in raw and b"(using TLSv1." in raw
    bob.close()


def test_tokens_log_in_with_xoauth2_and_oauthbearer(system):
    mailyard, service = system
    olga = "olga@example.test"
    token = mailyard.token(olga)
    xoauth2 = f"user={olga}\x01auth=Bearer {token}\x01\x01"
    bearer = f"n,a={olga},\x01host=mx.mailyard.test\x01port=587\x01auth=Bearer {token}\x01\x01"
    for mechanism, response in (("XOAUTH2", xoauth2), ("OAUTHBEARER", bearer)):
        with session(service.addresses["submission"]) as smtp:
            assert mechanism in smtp.esmtp_features["auth"]
            code, _ = smtp.docmd("AUTH", f"{mechanism} "
                                         f"{base64.b64encode(response.encode()).decode()}")
            assert code == 235, mechanism
            assert smtp.sendmail(olga, [BOB], message(olga, BOB, f"via {mechanism}")) == {}
    # A valid token of someone else, claimed as Olga: the error challenge, then 535.
    other = f"user={olga}\x01auth=Bearer {mailyard.token(BOB)}\x01\x01"
    with session(service.addresses["submission"], source="127.0.0.40") as smtp:
        code, challenge = smtp.docmd("AUTH", f"XOAUTH2 {base64.b64encode(other.encode()).decode()}")
        assert code == 334 and b"invalid_token" in base64.b64decode(challenge)
        assert smtp.docmd("")[0] == 535


def test_no_open_relay_on_any_port(system):
    mailyard, service = system
    before = outbound_count(mailyard)
    # The MX takes mail for local users only.
    with smtplib.SMTP(*service.addresses["mx"], timeout=30) as mx:
        mx.ehlo("client.example.net")
        assert mx.mail("spammer@elsewhere.example")[0] == 250
        code, reply = mx.rcpt(REMOTE)
        assert (code, reply[:5]) == (550, b"5.7.1")
    # Submission, STARTTLS port: nothing before STARTTLS, not even AUTH...
    with session(service.addresses["submission"], starttls=False) as smtp:
        assert "auth" not in smtp.esmtp_features
        code, reply = smtp.mail(ALICE)
        assert code == 530 and reply.startswith(b"5.7.0")
        code, reply = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(
            f"\0{ALICE}\0{PASSWORD}".encode()).decode())
        assert code == 530 and reply.startswith(b"5.7.0")
    # ...and after it, no mail without AUTH; on the implicit-TLS port neither.
    for implicit in (False, True):
        address = service.addresses["submissions" if implicit else "submission"]
        with session(address, implicit=implicit) as smtp:
            code, reply = smtp.mail("anyone@elsewhere.example")
            assert (code, reply) == (530, b"5.7.0 Authentication required")
            assert smtp.rcpt(REMOTE)[0] == 530
    assert outbound_count(mailyard) == before


def test_spoofed_senders_are_refused_and_aliases_allowed(system):
    mailyard, service = system
    frank = "frank@example.test"
    with session(service.addresses["submission"]) as smtp:
        assert login(smtp, frank)[0] == 235
        code, reply = smtp.mail(BOB)
        assert code == 553 and reply.startswith(b"5.7.1")
        smtp.rset()
        # The envelope is his, the From: is not.
        assert smtp.mail(frank)[0] == 250 and smtp.rcpt(REMOTE)[0] == 250
        code, reply = smtp.data(message(f"The Boss <{BOB}>", REMOTE, "spoofed"))
        assert code == 553 and reply.startswith(b"5.7.1")
        # An alias of his is fine, in the envelope and in From:.
        refused = smtp.sendmail("postmaster@example.test", [REMOTE],
                                message("Postmaster <postmaster@example.test>", REMOTE, "alias"))
        assert refused == {}
    frank_client = client(system, frank)
    sent = [m.subject for m in frank_client.list_all("SENT")]
    assert sent == ["alias"]
    # Over the API as well: a raw message must come from the caller.
    code = None
    try:
        frank_client.call("SendMessage", pb.SendMessageRequest(
            raw=message(BOB, REMOTE, "raw spoof"), content=pb.DraftContent(to=[REMOTE])))
    except grpc.RpcError as exc:
        code = exc.code()
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # His own raw message goes; without recipients in the call, its To/Cc/Bcc are
    # the envelope, and the Bcc'd one is told in no header.
    raw = wire_form(f"From: {frank}\nTo: {REMOTE}\nBcc: {BOB}\nSubject: raw own\n\nMine.\n"
                    .encode())
    sent = frank_client.call("SendMessage", pb.SendMessageRequest(raw=raw))
    _, envelope, spooled = outbound(mailyard, sent.queue_id)
    assert list(envelope.rcpt_to) == [REMOTE] and b"Bcc" not in spooled
    bob = client(system, BOB)
    assert b"Bcc" not in bob.get(find(bob, "INBOX", "raw own").id, pb.RAW).raw
    bob.close()
    frank_client.close()


def test_hourly_message_limit_is_450_and_shared_with_the_api(system):
    mailyard, service = system
    rita = "rita@example.test"
    replies = []
    with session(service.addresses["submission"]) as smtp:
        login(smtp, rita)
        for n in range(5):
            code, reply = smtp.mail(rita)
            replies.append((code, reply[:5]))
            if code == 250:
                smtp.rcpt(BOB)
                assert smtp.data(message(rita, BOB, f"burst {n}"))[0] == 250
            else:
                smtp.rset()
    assert replies == [(250, b"2.1.0")] * 4 + [(450, b"4.7.1")]
    rita_client = client(system, rita)
    with pytest.raises(grpc.RpcError) as err:
        rita_client.call("SendMessage", pb.SendMessageRequest(content=pb.DraftContent(
            to=[BOB], subject="api burst", body="x")))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < float(dict(err.value.trailing_metadata())["retry-after"]) <= 3600
    rita_client.close()


def test_daily_recipient_limit_is_550(system):
    mailyard, service = system
    dora = "dora@example.test"
    with session(service.addresses["submission"]) as smtp:
        login(smtp, dora)
        assert smtp.mail(dora)[0] == 250
        codes = [smtp.rcpt(f"r{n}@remote.example") for n in range(7)]
        assert [c for c, _ in codes] == [250] * 6 + [550]
        assert codes[-1][1].startswith(b"5.7.1")
        assert smtp.data(message(dora, "r0@remote.example", "six of seven"))[0] == 250


def test_password_guessing_is_blocked_per_ip_and_per_user(system):
    mailyard, service = system
    address = service.addresses["submission"]
    tess, vic = "tess@example.test", "vic@example.test"
    # One IP guessing at several accounts: 535 three times, then 454 even for
    # a right password, while another IP logs in as usual.
    results = []
    for guess in ("a@example.test", "b@example.test", "c@example.test", tess):
        with session(address, source="127.0.0.50") as smtp:
            code, reply = login(smtp, guess, PASSWORD if guess == tess else "guess")
            results.append((code, reply[:5]))
    assert results == [(535, b"5.7.8")] * 3 + [(454, b"4.7.0")]
    with session(address, source="127.0.0.51") as smtp:
        assert login(smtp, tess)[0] == 235
    # One account guessed at from many IPs: blocked for everyone, others not.
    for n in range(3):
        with session(address, source=f"127.0.0.{60 + n}") as smtp:
            assert login(smtp, vic, "guess")[0] == 535
    with session(address, source="127.0.0.63") as smtp:
        code, reply = login(smtp, vic)
        assert (code, reply[:5]) == (454, b"4.7.0")
    with session(address, source="127.0.0.63") as smtp:
        assert login(smtp, tess)[0] == 235


def test_grpc_send_message_queues_remote_and_delivers_local(system, tmp_path):
    mailyard, service = system
    gina = "gina@example.test"
    sender = client(system, gina)
    remote = sender.call("SendMessage", pb.SendMessageRequest(
        content=pb.DraftContent(to=[REMOTE], bcc=["dave@remote.example"], subject="api out",
                                body="plain words"),
        html="<p>html words</p>",
        attachments=[pb.OutgoingAttachment(filename="notes.txt", data=b"attached bytes")]))
    assert remote.queue_id and "SENT" in remote.sent.labels
    entry, envelope, raw = outbound(mailyard, remote.queue_id)
    assert entry is not None
    assert sorted(envelope.rcpt_to) == sorted(["dave@remote.example", REMOTE])
    assert b"dave@" not in raw.split(b"\r\n\r\n", 1)[0]  # Bcc is not in what is sent
    assert b"text/html" in raw and b'filename="notes.txt"' in raw
    assert mail_dkim(raw, mailyard.zone_file) == [("pass", "example.test", "rsa-sha256")]
    assert opendkim(raw, mailyard.zone_file, tmp_path / "opendkim") == ["pass"]

    local = sender.call("SendMessage", pb.SendMessageRequest(
        content=pb.DraftContent(to=[BOB], subject="api in", body="to a neighbour")))
    assert outbound(mailyard, local.queue_id)[0] is None  # nothing for the outbound queue
    bob = client(system, BOB)
    received = find(bob, "INBOX", "api in")
    assert received is not None and getattr(received, "from") == gina
    # A draft to both: sent on the same path, then gone from the drafts.
    draft = sender.call("CreateDraft", pb.CreateDraftRequest(content=pb.DraftContent(
        to=[BOB, REMOTE], subject="draft out", body="from a draft")))
    sent = sender.call("SendDraft", pb.SendDraftRequest(id=draft.id, version=draft.version))
    assert list(outbound(mailyard, sent.queue_id)[1].rcpt_to) == [REMOTE]
    assert find(bob, "INBOX", "draft out") is not None
    assert draft.id not in {d.id for d in sender.call("ListDrafts", pb.ListDraftsRequest()).drafts}
    assert {m.subject for m in sender.list_all("SENT")} == {"api out", "api in", "draft out"}
    sender.close()
    bob.close()


def test_all_the_way_to_a_remote_receiver(tmp_path):
    """With the outbound workers running: swaks submits, the remote MX (a
    receiver on 127.0.0.2, found through the stub zone) gets the message, and
    its signature verifies with the independent verifiers."""
    from tests.e2e.receivers import Receiver, free_port

    port = free_port("127.0.0.2")
    mailyard = Mailyard(tmp_path, zone=ZONE, settings={
        "services": ["mx", "delivery", "mailbox", "submission", "outbound"],
        "outbound": {"remote_port": port}})
    mailyard.add_users(ALICE, BOB)
    publish_dkim_key(mailyard, ZONE)
    with Receiver("127.0.0.2", port) as receiver:
        service = mailyard.start("up")
        try:
            service.wait_listening("mailbox", "submission")
            transcript = swaks(service.addresses["submission"], "--tls", "--auth", "PLAIN",
                               "--auth-user", ALICE, "--auth-password", PASSWORD,
                               "--from", ALICE, "--to", f"{REMOTE},{BOB}",
                               "--header", "Subject: to the internet")
            queue_id = queued_id(transcript)
            alice = client((mailyard, service), ALICE)
            assert [m.subject for m in alice.list_all("SENT")] == ["to the internet"]
            (received,) = receiver.wait_for(1)
            assert received.rcpts == [REMOTE] and received.mail_from == ALICE
            assert f"id {queue_id}".encode() in received.data
            assert opendkim(received.data, mailyard.zone_file, tmp_path / "od") == ["pass"]
            assert mail_dkim(received.data, mailyard.zone_file) == [
                ("pass", "example.test", "rsa-sha256")]
            alice.close()
        finally:
            assert service.stop() == 0
