"""Domain policy files at work in a running mailyard, and hot reload.

Aliases, lists, plus-addressing and the catch-all are accepted at RCPT and
land in the right mailboxes; the TLS requirement and the blocklist refuse.
`mailyard reload` and SIGHUP apply a changed policy to new sessions while
senders stream mail over open connections (every message gets its 250), and
a broken policy is refused with the old one kept."""
from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time

import pytest

from tests.e2e.harness import Client, Mailyard, wire_form
from tests.e2e.outbound_support import wait_until

ALICE, BOB, POSTMASTER = "alice@example.test", "bob@example.test", "postmaster@example.test"
POLICY = """\
catch_all = "postmaster"
blocklist = ["@blocked.test"]

[aliases]
info = "alice"

[lists]
team = ["alice", "bob@example.test"]

[limits]
max_recipients = 3

[user_limits.bob]
max_message_size = 2000
"""


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("policy"),
                        settings={"services": ["mx", "delivery", "mailbox"]})
    (mailyard.root / "policy.d").mkdir()
    write_policy(mailyard, POLICY)
    (mailyard.root / "policy.d" / "secure.test.toml").write_text("require_tls = true\n")
    mailyard.add_users(ALICE, BOB, POSTMASTER, "carol@secure.test")
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    yield mailyard, service
    assert service.stop() == 0


def write_policy(mailyard: Mailyard, text: str) -> None:
    path = mailyard.root / "policy.d" / "example.test.toml"
    path.with_suffix(".tmp").write_text(text)
    path.with_suffix(".tmp").rename(path)  # a reload never reads half a file


def message(subject: str, to: str) -> bytes:
    return wire_form(f"From: sender@example.net\nTo: {to}\nSubject: {subject}\n\nHi.\n".encode())


def rcpt_reply(service, rcpt: str, mail_from: str = "sender@example.net") -> tuple[int, bytes]:
    with smtplib.SMTP(*service.addresses["mx"], timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        smtp.mail(mail_from)
        return smtp.rcpt(rcpt)


def subjects(instance, user: str) -> list[str]:
    mailyard, service = instance
    client = Client(service.addresses["mailbox"], mailyard.token(user))
    try:
        return sorted(m.subject for m in client.list_all("INBOX"))
    finally:
        client.close()


def wait_for_subjects(instance, user: str, expected: list[str]) -> None:
    wait_until(lambda: all(s in subjects(instance, user) for s in expected), 30,
               f"{expected} in {user}'s INBOX")


def test_aliases_lists_plus_tags_and_the_catch_all_reach_local_users(instance):
    _, service = instance
    with smtplib.SMTP(*service.addresses["mx"], timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        for subject, rcpts in (("to info", ["info@example.test"]),
                               ("to team", ["team@example.test"]),
                               ("to bob plus", ["bob+news@example.test"]),
                               ("to anyone", ["whoever@example.test"]),
                               ("team and alice", ["team@example.test", ALICE])):
            refused = smtp.sendmail("sender@example.net", rcpts, message(subject, rcpts[0]))
            assert refused == {}
    wait_for_subjects(instance, ALICE, ["to info", "to team", "team and alice"])
    wait_for_subjects(instance, BOB, ["to team", "to bob plus", "team and alice"])
    wait_for_subjects(instance, POSTMASTER, ["to anyone"])
    # one copy each, even when a list and its member are both recipients
    assert subjects(instance, ALICE).count("team and alice") == 1
    assert "to bob plus" not in subjects(instance, ALICE)


def test_the_tls_requirement_and_the_blocklist_refuse_at_rcpt(instance):
    _, service = instance
    assert rcpt_reply(service, "carol@secure.test")[0] == 530
    code, text = rcpt_reply(service, ALICE, mail_from="x@blocked.test")
    assert (code, text[:5]) == (550, b"5.7.1")
    assert rcpt_reply(service, ALICE, mail_from="x@fine.test")[0] == 250


def test_domain_and_user_limits_refuse_what_is_too_big_or_too_many(instance):
    _, service = instance
    with smtplib.SMTP(*service.addresses["mx"], timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        smtp.mail("sender@example.net")
        assert [smtp.rcpt(r)[0] for r in (ALICE, BOB, POSTMASTER, "info@example.test")] == [
            250, 250, 250, 452]  # max_recipients = 3 at example.test
        smtp.rset()
        smtp.mail("sender@example.net", ["SIZE=5000"])  # declared: refused at RCPT for bob
        assert smtp.rcpt(ALICE)[0] == 250
        assert smtp.rcpt(BOB)[:2] == (552, b"5.3.4 Message size exceeds fixed maximum "
                                           b"message size")
        smtp.rset()
        big = message("too big for bob", BOB) + (b"x" * 70 + b"\r\n") * 40
        smtp.mail("sender@example.net")
        smtp.rcpt(BOB)
        assert smtp.data(big)[0] == 552  # undeclared: refused after DATA
        assert smtp.sendmail("sender@example.net", [ALICE], big) == {}


def hangup(mailyard: Mailyard, service, by_command: bool) -> None:
    if by_command:
        out = mailyard.cli("reload")
        assert str(service.proc.pid) in out
    else:
        os.kill(service.proc.pid, signal.SIGHUP)


def test_reload_under_live_smtp_load_drops_no_session(instance):
    mailyard, service = instance
    per_connection, connections = 15, 4
    replies: list[tuple[int, bytes]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def stream(n: int) -> None:
        try:
            with smtplib.SMTP(*service.addresses["mx"], timeout=30) as smtp:
                smtp.ehlo("client.example.net")
                for i in range(per_connection):
                    smtp.mail("sender@example.net")
                    code, _ = smtp.rcpt("info@example.test")
                    assert code == 250, code
                    reply = smtp.data(message(f"load {n}-{i}", "info@example.test"))
                    with lock:
                        replies.append(reply)
                    time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    senders = [threading.Thread(target=stream, args=(n,)) for n in range(connections)]
    for sender in senders:
        sender.start()
    reloads = 0
    while any(s.is_alive() for s in senders):
        # The alias moves back and forth between alice and bob; every version is valid.
        target = "bob" if reloads % 2 == 0 else "alice"
        write_policy(mailyard, POLICY.replace('info = "alice"', f'info = "{target}"'))
        hangup(mailyard, service, by_command=reloads % 3 == 0)
        reloads += 1
        time.sleep(0.15)
    for sender in senders:
        sender.join()
    assert not failures, failures
    assert reloads >= 3
    assert len(replies) == per_connection * connections
    assert all(code == 250 for code, _ in replies), [r for r in replies if r[0] != 250]
    assert service.proc.poll() is None
    # Every message landed with alice or bob, whichever the alias named then.
    expected = {f"load {n}-{i}" for n in range(connections) for i in range(per_connection)}
    wait_until(lambda: expected <= set(subjects(instance, ALICE) + subjects(instance, BOB)),
               60, "every streamed message delivered")
    # The last policy applies to new sessions: a sender blocked only by it.
    assert rcpt_reply(service, ALICE, mail_from="x@newly.test")[0] == 250
    write_policy(mailyard, POLICY.replace('"@blocked.test"', '"@blocked.test", "@newly.test"'))
    hangup(mailyard, service, by_command=True)
    wait_until(lambda: rcpt_reply(service, ALICE, mail_from="x@newly.test")[0] == 550, 10,
               "the new blocklist entry after reload")
    log = service.log_path.read_text()
    assert log.count("event=reloaded") >= reloads


def test_a_broken_policy_is_refused_and_the_old_one_kept(instance):
    mailyard, service = instance
    second = POLICY.replace('"@blocked.test"', '"@blocked.test", "@second.test"')
    write_policy(mailyard, second)
    hangup(mailyard, service, by_command=True)
    wait_until(lambda: rcpt_reply(service, ALICE, mail_from="x@second.test")[0] == 550, 10,
               "the second blocklist entry")
    broken = POLICY.replace("max_recipients = 3", "max_recipients = -1")
    write_policy(mailyard, broken)
    path = mailyard.root / "policy.d" / "example.test.toml"
    line = broken.splitlines().index("max_recipients = -1") + 1
    result = subprocess.run(
        [sys.executable, "-m", "mailyard", "--config", str(mailyard.config), "--data-dir",
         str(mailyard.data_dir), "reload"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert f"{path}:{line}: limits.max_recipients:" in result.stderr
    assert "not reloaded" in result.stderr
    # SIGHUP straight to the process (no command to check first): refused there.
    os.kill(service.proc.pid, signal.SIGHUP)
    wait_until(lambda: f"{path}:{line}: limits.max_recipients" in service.log_path.read_text(),
               10, "the refusal in the log")
    assert "event=reload_refused" in service.log_path.read_text()
    assert service.proc.poll() is None
    # The old policy holds: the broken file drops the entry, yet it still refuses.
    assert "@second.test" not in path.read_text()
    assert rcpt_reply(service, ALICE, mail_from="x@second.test")[0] == 550
    write_policy(mailyard, POLICY)


def test_reload_reaches_every_mx_process(tmp_path):
    mailyard = Mailyard(tmp_path, settings={"services": ["mx"], "mx": {"processes": 2}})
    (mailyard.root / "policy.d").mkdir()
    write_policy(mailyard, POLICY)
    mailyard.add_users(ALICE, POSTMASTER)
    service = mailyard.start("up")
    try:
        service.wait_listening("mx")
        wait_until(lambda: service.log_path.read_text().count("event=listening") >= 2, 30,
                   "the second MX process")
        assert {rcpt_reply(service, ALICE, "x@newly.test")[0] for _ in range(10)} == {250}
        write_policy(mailyard, POLICY.replace('"@blocked.test"', '"@newly.test"'))
        hangup(mailyard, service, by_command=True)
        wait_until(lambda: service.log_path.read_text().count("event=reloaded") >= 2, 30,
                   "both processes reloaded")
        # The kernel spreads new connections over both processes: all refuse now.
        assert {rcpt_reply(service, ALICE, "x@newly.test")[0] for _ in range(20)} == {550}
    finally:
        assert service.stop() == 0
