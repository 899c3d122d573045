"""The logs of a busy run hold no unmasked address, no password and no token.

One `mailyard up` with every service at debug level sees inbound mail, unknown
and foreign recipients, logins good and bad (PLAIN, LOGIN, XOAUTH2), API calls
over gRPC and REST with good and forged tokens, and outbound delivery to a
receiver and to a dead MX; then every line every process wrote is read.
"""
from __future__ import annotations

import base64
import re
import smtplib
import time

import pytest

from tests.e2e.harness import Client, Mailyard, Rest, send
from tests.e2e.receivers import Receiver, free_port
from tests.e2e.test_submission import PASSWORD, login, message, session
from tests.security.test_mailbox_api import _bad_authorizations

ALICE, BOB = "alice.secret@example.test", "bob.private@example.test"
REMOTE, DEAD = "carol.remote@remote.example", "dave.gone@dead.example"
REJECTED = "erin.unknown@remote.example"  # the receiver refuses her: a bounce to Alice
STRANGER = "stranger.sender@elsewhere.example"
UNKNOWN = "nobody.here@example.test"
ADDRESSES = [ALICE, BOB, REMOTE, DEAD, REJECTED, STRANGER, UNKNOWN]
WRONG_PASSWORD = "Tr0ub4dor&3-wrong"
# Two or more address characters right before the @: a mask leaves one.
UNMASKED = re.compile(r"[\w.+-]{2,}@[\w-]+(?:\.[\w-]+)+")
JWT = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*")


@pytest.fixture(scope="module")
def busy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    port = free_port("127.0.0.2")
    zone = ("remote.example. IN MX 10 mx.remote.example.\nmx.remote.example. IN A 127.0.0.2\n"
            "dead.example. IN MX 10 mx.dead.example.\nmx.dead.example. IN A 127.0.0.3\n")
    mailyard = Mailyard(root, zone=zone, settings={
        "log": {"level": "debug"},
        "services": ["mx", "delivery", "indexer", "mailbox", "gateway", "submission",
                     "outbound"],
        "outbound": {"remote_port": port, "retry_schedule": ["1s"]}})
    mailyard.add_users(ALICE, BOB)
    secrets = {"password": PASSWORD, "wrong password": WRONG_PASSWORD}
    refuse = lambda address, _tries: "550 5.1.1 no such user" if address == REJECTED else None
    with Receiver("127.0.0.2", port, rcpt=refuse):
        service = mailyard.start("up")
        try:
            service.wait_listening("mx", "mailbox", "gateway", "submission")
            secrets |= exercise(mailyard, service)
            time.sleep(4)  # deliveries, indexing, outbound attempts and a retry
        finally:
            assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"
    lines = [line for path in sorted(root.glob("service-*.log"))
             for line in path.read_text(errors="replace").splitlines()]
    return lines, secrets


def exercise(mailyard: Mailyard, service) -> dict[str, str]:
    """Drives every service; returns the secrets it used, by name."""
    secrets = {}
    mx = service.addresses["mx"]
    send(mx, STRANGER, [ALICE], message(STRANGER, ALICE, "inbound for alice"))
    with smtplib.SMTP(*mx, timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        smtp.mail(STRANGER)
        assert smtp.rcpt(UNKNOWN)[0] == 550
        assert smtp.rcpt(REMOTE)[0] == 550

    submission = service.addresses["submission"]
    with session(submission) as smtp:
        assert login(smtp, ALICE)[0] == 235
        assert smtp.sendmail(ALICE, [BOB, REMOTE, DEAD, REJECTED], message(
            ALICE, f"{BOB}, {REMOTE}, {DEAD}, {REJECTED}", "outbound")) == {}
    with session(submission, source="127.0.0.70") as smtp:
        assert login(smtp, ALICE, WRONG_PASSWORD)[0] == 535
    with session(submission, source="127.0.0.71") as smtp:
        assert login(smtp, UNKNOWN, WRONG_PASSWORD)[0] == 535
    with session(submission, source="127.0.0.72") as smtp:
        smtp.user, smtp.password = BOB, PASSWORD
        smtp.auth("LOGIN", smtp.auth_login)
    plain = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    secrets["AUTH PLAIN response"] = plain

    token = mailyard.token(ALICE)
    secrets["alice's token"] = token
    xoauth2 = base64.b64encode(f"user={ALICE}\x01auth=Bearer {token}\x01\x01".encode()).decode()
    secrets["XOAUTH2 response"] = xoauth2
    with session(submission, source="127.0.0.73") as smtp:
        assert smtp.docmd("AUTH", f"XOAUTH2 {xoauth2}")[0] == 235
    stale = base64.b64encode(f"user={BOB}\x01auth=Bearer {token}\x01\x01".encode()).decode()
    with session(submission, source="127.0.0.74") as smtp:
        if smtp.docmd("AUTH", f"XOAUTH2 {stale}")[0] == 334:
            smtp.docmd("")

    grpc_client = Client(service.addresses["mailbox"], token)
    found = grpc_client.wait_for(1, timeout=30)
    grpc_client.get(found[0].id)
    grpc_client.search("inbound")
    grpc_client.close()
    rest = Rest(service.addresses["gateway"], token)
    assert rest.get("/v1/messages/inbox").status_code == 200
    assert rest.post("/v1/messages", json={"to": [BOB, REMOTE], "subject": "over rest",
                                           "body": "hi"}).status_code == 200
    rest.close()
    for name, bad in _bad_authorizations(mailyard).items():
        if name in ("garbage", "three garbage segments"):
            continue
        secrets[f"forged token ({name})"] = bad
        forged = Rest(service.addresses["gateway"], bad)
        assert forged.get("/v1/labels").status_code == 401
        forged.close()
        with pytest.raises(Exception):
            Client(service.addresses["mailbox"], bad).list()
    return secrets


def test_the_run_logged_what_it_did(busy_run):
    # Without this a silent run would pass the checks below.
    lines, _ = busy_run
    text = "\n".join(lines)
    for event in ("event=accepted", "event=delivered"):
        assert event in text, event
    assert len(lines) > 50
    assert re.search(r"\w\*\*\*@example\.test", text), "no masked address was logged at all"


def test_no_unmasked_address_is_logged(busy_run):
    lines, _ = busy_run
    leaks = [(address, line) for line in lines for address in ADDRESSES if address in line]
    leaks += [(m.group(0), line) for line in lines for m in UNMASKED.finditer(line)]
    assert not leaks, "unmasked addresses in the logs:\n" + "\n".join(
        f"  {a}: {line[:300]}" for a, line in leaks[:20])


def test_no_password_or_token_is_logged(busy_run):
    lines, secrets = busy_run
    leaks = [(name, line) for line in lines for name, secret in secrets.items()
             if secret in line]
    leaks += [("a JWT", line) for line in lines if JWT.search(line)]
    leaks += [("a private key", line) for line in lines if "PRIVATE KEY" in line]
    assert not leaks, "secrets in the logs:\n" + "\n".join(
        f"  {name}: {line[:300]}" for name, line in leaks[:20])
