"""Sender authentication and abuse controls of the MX, over real SMTP against
`mailyard up`, with every DNS answer from a local zone file.

Clients connect from different loopback addresses (127.0.0.x) so that each
control sees its own client: the blocklisted one, the rate-limited one, ...
"""
from __future__ import annotations

import smtplib
import socket
import ssl
import time

import pytest

from mailyard.proto import mailbox_pb2
from tests.e2e.harness import Client, Mailyard, wire_form

ALICE = "alice@example.test"
BOB = "bob@example.test"

ZONE = """
$ORIGIN mailyard.test.
; the sender domains
sender.example. IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc.sender.example. IN TXT "v=DMARC1; p=reject"
_dmarc.reject.example. IN TXT "v=DMARC1; p=reject"
_dmarc.quarantine.example. IN TXT "v=DMARC1; p=quarantine"
_dmarc.monitored.example. IN TXT "v=DMARC1; p=reject"
; a blocklist listing 127.0.0.66
66.0.0.127.dnsbl.test. IN A 127.0.0.2
"""


def message(author: str, subject: str, extra: bytes = b"") -> bytes:
    return wire_form(extra + f"From: <{author}>\nTo: <{ALICE}>\nSubject: {subject}\n"
                             f"Message-ID: <{subject.replace(' ', '.')}@test>\n\n"
                             f"Body of {subject}.\n".encode())


def session(address, source: str = "127.0.0.1", starttls: bool = False) -> smtplib.SMTP:
    client = smtplib.SMTP(*address, timeout=30, source_address=(source, 0))
    client.ehlo("client.example.net")
    if starttls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo("client.example.net")
    return client


def transaction(address, mail_from: str, rcpts: list[str], data: bytes,
                source: str = "127.0.0.1", starttls: bool = False) -> tuple[int, bytes]:
    """The first refusal, or the reply to DATA."""
    with session(address, source, starttls) as client:
        code, reply = client.mail(mail_from)
        if code != 250:
            return code, reply
        for rcpt in rcpts:
            code, reply = client.rcpt(rcpt)
            if code != 250:
                return code, reply
        return client.data(data)


@pytest.fixture(scope="module")
def auth_mx(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("auth"), zone=ZONE,
                        settings={"dmarc": {"overrides": {"monitored.example": "monitor"}}})
    mailyard.add_users(ALICE)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    client = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    yield service.addresses["mx"], client, mailyard
    client.close()
    assert service.stop() == 0


def find(client: Client, label: str, subject: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in client.list_all(label):
            if m.subject == subject:
                return m
        time.sleep(0.2)
    return None


def test_dmarc_reject_is_refused_at_end_of_data(auth_mx):
    mx, client, _ = auth_mx
    code, reply = transaction(mx, "bounce@elsewhere.example", [ALICE],
                              message("ceo@reject.example", "dmarc reject"))
    assert code == 550 and reply.startswith(b"5.7.1 Message rejected: DMARC policy of "
                                            b"reject.example")


def test_dmarc_quarantine_is_delivered_as_spam(auth_mx):
    mx, client, _ = auth_mx
    code, _ = transaction(mx, "bounce@elsewhere.example", [ALICE],
                          message("news@quarantine.example", "dmarc quarantine"))
    assert code == 250
    spam = find(client, "SPAM", "dmarc quarantine")
    assert spam is not None and "INBOX" not in spam.labels
    assert find(client, "INBOX", "dmarc quarantine", timeout=0) is None


def test_dmarc_monitor_override_delivers_to_inbox(auth_mx):
    mx, client, _ = auth_mx
    code, _ = transaction(mx, "bounce@elsewhere.example", [ALICE],
                          message("ceo@monitored.example", "dmarc monitored"))
    assert code == 250
    found = find(client, "INBOX", "dmarc monitored")
    raw = client.get(found.id, mailbox_pb2.RAW).raw
    assert b"dmarc=fail (p=reject dis=reject) header.from=monitored.example" in raw


def test_dmarc_pass_over_starttls_is_recorded_and_raw_is_exact(auth_mx):
    mx, client, _ = auth_mx
    forged = b"Authentication-Results: mx.mailyard.test; dmarc=pass header.from=bank.example\n"
    sent = message("alice@sender.example", "dmarc pass", extra=forged)
    code, _ = transaction(mx, "alice@sender.example", [ALICE], sent, starttls=True)
    assert code == 250
    found = find(client, "INBOX", "dmarc pass")
    raw = client.get(found.id, mailbox_pb2.RAW).raw
    received, rest = raw.split(b"Authentication-Results: mx.mailyard.test;\r\n", 1)
    assert received.startswith(b"Received: from client.example.net ([127.0.0.1])\r\n"
                               b"\t(using TLSv1.")
    assert b" with cipher " in received and b"with ESMTPS id" in received
    ours, original = rest.split(b"\r\n", 4)[:4], rest.split(b"\r\n", 4)[4]
    assert ours == [b"\tspf=pass smtp.mailfrom=alice@sender.example;", b"\tdkim=none;",
                    b"\tdmarc=pass (p=reject dis=none) header.from=sender.example;",
                    b"\tarc=none"]
    # the forged header claiming our authserv-id is gone; all else byte for byte
    assert sent.startswith(wire_form(forged))
    assert original == sent[len(wire_form(forged)):]


def test_starttls_refuses_tls_1_1(auth_mx):
    mx, _, _ = auth_mx
    with socket.create_connection(mx, timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"EHLO client.example.net\r\n")
        buffer = b""
        while not buffer.endswith(b"250 HELP\r\n"):
            buffer += sock.recv(4096)
        assert b"STARTTLS" in buffer
        sock.sendall(b"STARTTLS\r\n")
        assert sock.recv(1024).startswith(b"220")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(sock).do_handshake()


# --- abuse controls --------------------------------------------------------------

GREYLIST_DELAY = 1.0


@pytest.fixture(scope="module")
def abuse_mx(tmp_path_factory):
    settings = {
        # 127.0.0.1 stays trusted (the harness's own sends); 127.0.0.30 too, for
        # the DATA checks, which apply to everyone
        "mx": {"trusted_networks": ["127.0.0.1/32", "127.0.0.30/32"], "max_recipients": 2,
               "max_message_size": 20000, "max_header_size": 2000},
        "ratelimit": {"connections": 3, "messages": 100, "window": 60.0},
        "greylist": {"enabled": True, "delay": GREYLIST_DELAY},
        "dnsbl": {"zones": ["dnsbl.test"]},
    }
    mailyard = Mailyard(tmp_path_factory.mktemp("abuse"), zone=ZONE, settings=settings)
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    client = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    accepted: list[str] = []
    yield service.addresses["mx"], client, accepted
    # nothing accepted is lost: every 250 is in the mailbox
    messages = client.wait_for(len(accepted), timeout=30)
    assert sorted(m.subject for m in messages) == sorted(accepted)
    client.close()
    assert service.stop() == 0


def test_connection_rate_limit(abuse_mx):
    mx, _, _ = abuse_mx
    greetings = []
    for _ in range(5):
        with socket.create_connection(mx, timeout=10, source_address=("127.0.0.10", 0)) as s:
            greetings.append(s.recv(1024))
    assert all(g.startswith(b"220 ") for g in greetings[:3])
    assert greetings[3].startswith(b"421 4.7.0 Too many connections from 127.0.0.10")
    # another client is not affected
    with socket.create_connection(mx, timeout=10, source_address=("127.0.0.11", 0)) as s:
        assert s.recv(1024).startswith(b"220 ")


def test_blocklisted_client_is_refused(abuse_mx):
    mx, _, _ = abuse_mx
    with session(mx, "127.0.0.66") as client:
        code, reply = client.mail("someone@remote.example")
    assert code == 554 and reply.startswith(b"5.7.1 Service unavailable; client "
                                            b"[127.0.0.66] blocked using dnsbl.test")


def test_greylisting_first_try_451_then_accepted(abuse_mx):
    mx, client, accepted = abuse_mx
    data = message("x@remote.example", "greylisted")
    code, reply = transaction(mx, "x@remote.example", [ALICE], data, source="127.0.0.20")
    assert code == 451 and reply.startswith(b"4.7.1 Greylisted")
    # too early: still greylisted
    code, _ = transaction(mx, "x@remote.example", [ALICE], data, source="127.0.0.21")
    assert code == 451  # same /24, same triple
    time.sleep(GREYLIST_DELAY + 0.2)
    code, reply = transaction(mx, "x@remote.example", [ALICE], data, source="127.0.0.22")
    assert code == 250, reply
    accepted.append("greylisted")


SMUGGLED = [
    b"<LF>.<CR><LF>", b"<CR>.<CR><LF>", b"<LF>.<LF>",
]
ENDINGS = {b"<LF>.<CR><LF>": b"\n.\r\n", b"<CR>.<CR><LF>": b"\r.\r\n", b"<LF>.<LF>": b"\n.\n"}


@pytest.mark.parametrize("name", SMUGGLED, ids=lambda n: n.decode())
def test_smtp_smuggling_is_refused(abuse_mx, name):
    mx, client, _ = abuse_mx
    smuggled = (b"From: <a@remote.example>\r\nSubject: outer\r\n\r\nouter body" + ENDINGS[name]
                + b"MAIL FROM:<evil@remote.example>\r\nRCPT TO:<" + BOB.encode() + b">\r\n"
                b"DATA\r\nFrom: <ceo@sender.example>\r\nSubject: smuggled\r\n\r\nx\r\n")
    with socket.create_connection(mx, timeout=10, source_address=("127.0.0.30", 0)) as sock:
        replies = b""

        def expect(count: int) -> None:
            nonlocal replies
            while replies.count(b"\r\n") < count:
                chunk = sock.recv(4096)
                assert chunk, replies
                replies += chunk

        expect(1)
        sock.sendall(b"HELO client.example.net\r\nMAIL FROM:<a@remote.example>\r\n"
                     b"RCPT TO:<" + ALICE.encode() + b">\r\nDATA\r\n")
        expect(5)
        sock.sendall(smuggled + b".\r\nQUIT\r\n")
        expect(7)
    lines = replies.split(b"\r\n")
    assert lines[4].startswith(b"354")
    assert lines[5].startswith(b"550 5.5.2 Message refused: bare <CR> or <LF>"), lines
    assert lines[6].startswith(b"221")
    time.sleep(0.5)
    bob_messages = [m.subject for m in client.list_all()]
    assert "smuggled" not in bob_messages and "outer" not in bob_messages


def test_oversize_and_too_many_recipients_are_refused(abuse_mx):
    mx, _, accepted = abuse_mx
    big = message("a@remote.example", "too big", extra=b"X-Pad: " + b"p" * 900 + b"\n") \
        + (b"y" * 900 + b"\r\n") * 30
    code, reply = transaction(mx, "a@remote.example", [ALICE], big, source="127.0.0.30")
    assert code == 552 and reply.startswith(b"5.3.4")
    code, reply = transaction(mx, "a@remote.example", [ALICE, BOB, ALICE],
                              message("a@remote.example", "many"), source="127.0.0.30")
    assert code == 452 and reply.startswith(b"4.5.3")
    long_header = message("a@remote.example", "big header",
                          extra=b"".join(b"X-Filler-%d: %s\n" % (i, b"f" * 90) for i in range(30)))
    code, reply = transaction(mx, "a@remote.example", [ALICE], long_header, source="127.0.0.30")
    assert code == 552 and reply.startswith(b"5.3.4 Header section exceeds 2000 octets")
    code, reply = transaction(mx, "a@remote.example", [ALICE],
                              message("a@remote.example", "x" + "y" * 1000), source="127.0.0.30")
    assert code == 500 and reply.startswith(b"5.5.2 Line too long")
    code, _ = transaction(mx, "a@remote.example", [ALICE], message("a@remote.example", "fits"),
                          source="127.0.0.30")
    assert code == 250
    accepted.append("fits")


def test_authcheck_prints_what_the_mx_would_add(tmp_path):
    import subprocess
    import sys

    (tmp_path / "zone.db").write_text(ZONE)
    sent = message("alice@sender.example", "authcheck")
    run = subprocess.run(
        [sys.executable, "-m", "mailyard", "authcheck", "--client-ip", "127.0.0.9",
         "--helo", "client.example.net", "--mail-from", "alice@sender.example",
         "--dns-zone", str(tmp_path / "zone.db")],
        input=sent, capture_output=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().splitlines() == [
        "Authentication-Results: localhost;", "\tspf=pass smtp.mailfrom=alice@sender.example;",
        "\tdkim=none;", "\tdmarc=pass (p=reject dis=none) header.from=sender.example;",
        "\tarc=none"]
    run = subprocess.run(
        [sys.executable, "-m", "mailyard", "authcheck", "--client-ip", "192.0.2.1",
         "--helo", "x.example", "--mail-from", "", "--dns-zone", str(tmp_path / "zone.db")],
        input=message("ceo@reject.example", "authcheck"), capture_output=True, cwd=tmp_path,
        timeout=60)
    assert b"dmarc=fail (p=reject dis=reject)" in run.stdout
    assert b"would refuse this message: 550 5.7.1" in run.stderr
