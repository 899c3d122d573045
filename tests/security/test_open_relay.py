"""The open-relay matrix over real sockets against one `mailyard up`: every
SMTP port (the MX, submission with STARTTLS, submissions with implicit TLS),
with and without AUTH, local or foreign sender, local or foreign recipient.
Mail leaves for the internet only from an authenticated user sending as
themselves; the MX takes mail for local users only and offers no AUTH."""
from __future__ import annotations

import itertools
import smtplib

import pytest

from tests.e2e.harness import Mailyard
from tests.e2e.test_submission import ZONE, login, message, outbound_count, session

ALICE, BOB = "alice@example.test", "bob@example.test"
FOREIGN_SENDER, FOREIGN_RCPT = "mallory@elsewhere.example", "carol@remote.example"
PORTS = ("mx", "submission", "submissions")

def expected(port: str, authenticated: bool, local_sender: bool, local_rcpt: bool) -> bool:
    """Whether a message on `port` is taken (the table the test checks)."""
    if port == "mx":
        return local_rcpt  # inbound mail for our users, whoever claims to send it
    return authenticated and local_sender  # submission: only as yourself, then anywhere


CASES = list(itertools.product(PORTS, (False, True), (True, False), (True, False)))


def case_id(case) -> str:
    port, authenticated, local_sender, local_rcpt = case
    return (f"{port}-{'auth' if authenticated else 'anon'}-"
            f"{'local' if local_sender else 'foreign'}-to-{'local' if local_rcpt else 'foreign'}")


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("open-relay"), zone=ZONE, settings={
        "services": ["mx", "delivery", "mailbox", "submission"]})
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "submission", "submissions")
    yield mailyard, service
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def attempt(address, port: str, authenticated: bool, sender: str, rcpt: str,
            subject: str) -> list[tuple[str, int]]:
    """One session; the reply code of each step tried, in order."""
    steps = []
    smtp = session(address, starttls=port == "submission", implicit=port == "submissions")
    try:
        if authenticated:
            if port == "mx":
                # No AUTH on the MX: a login there must be refused, not ignored.
                assert "auth" not in smtp.esmtp_features
                steps.append(("AUTH", smtp.docmd("AUTH", "PLAIN AGFsaWNlAHB3")[0]))
            else:
                steps.append(("AUTH", login(smtp, ALICE)[0]))
        steps.append(("MAIL", smtp.mail(sender)[0]))
        steps.append(("RCPT", smtp.rcpt(rcpt)[0]))
        if steps[-1][1] == 250:
            try:
                code = smtp.data(message(sender, rcpt, subject))[0]
            except smtplib.SMTPDataError as exc:
                code = exc.smtp_code
            steps.append(("DATA", code))
    finally:
        smtp.close()
    return steps


def test_relay_matrix(system):
    mailyard, service = system
    assert len(set(CASES)) == 3 * 2 * 2 * 2
    outbound_before = outbound_count(mailyard)
    wrong, relayed = [], 0
    for case in CASES:
        port, authenticated, local_sender, local_rcpt = case
        sender = ALICE if local_sender else FOREIGN_SENDER
        rcpt = BOB if local_rcpt else FOREIGN_RCPT
        steps = attempt(service.addresses[port], port, authenticated, sender, rcpt,
                        f"relay {case_id(case)}")
        taken = steps[-1] == ("DATA", 250)
        if taken != expected(*case):
            wrong.append((case_id(case), steps))
        if authenticated and port == "mx":
            assert 500 <= steps[0][1] < 600, (case_id(case), steps)
        elif authenticated:
            assert steps[0] == ("AUTH", 235), (case_id(case), steps)
        if not taken:
            # A refusal is an SMTP 5xx (never a 4xx inviting a retry).
            assert 500 <= steps[-1][1] < 600, (case_id(case), steps)
        relayed += taken and not local_rcpt
    assert not wrong, "open-relay matrix mismatches:\n" + "\n".join(
        f"  {name}: {steps}" for name, steps in wrong)
    # Exactly the authenticated submissions to the foreign recipient queued
    # for the internet: one per submission port.
    assert relayed == 2
    assert outbound_count(mailyard) == outbound_before + relayed

