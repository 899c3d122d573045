"""A protocol-level fuzzer for the MX: hostile SMTP sessions over loopback.

    python -m tests.fuzz.smtp [--seconds N] [--seed N] [--sessions N]

starts `mailyard up` through tests/e2e/harness.py and runs sessions of these
kinds, several at once, each from its own seeded random generator:

- dialogue: commands one at a time, valid and invalid (odd addresses and
  parameters, unknown verbs, 8-bit and control bytes, commands out of order),
  with whole transactions among them;
- burst: a whole batch written at once (pipelining), commands and messages
  with bare CR/LF and smuggling sequences, read back in one go;
- garbage: random bytes, overlong lines, a STARTTLS followed by plain text;
- cut: a session that stops mid-command or mid-DATA, by half-closing its end
  (FIN) or resetting (RST).

Findings: a reply that is not SMTP or that names a Python exception, a
traceback in the service log, a session the server neither answers nor
closes, the server gone, a normal transaction that no longer gets 250, and
any message that got `250 ... queued as ID` missing from (or twice in) its
recipients' mailboxes once delivery has run.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import smtplib
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mailyard.proto import mailbox_pb2
from tests.e2e.harness import Client, Mailyard
from tests.fuzz.seeds import email_corpus, hazard_messages, mime_messages

USERS = ("alice@example.test", "bob@example.test")
QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as (\S+)", re.M)
REPLY_LINE = re.compile(rb"^\d{3}(?:[ -].*)?$")
EXCEPTION_REPLY = re.compile(rb"\((?:\w+\.)*\w*(?:Error|Exception|Exit)\)|Traceback")
TRACE_ID = re.compile(rb"^Received: .*?\r\n\tby \S+ \(mailyard\) with \S+ id (\S+?)[;\r]", re.S)
# The MX of these sessions: small limits, so that overlong input is reached
# fast; no API quota, since every delivered message is fetched back whole.
SETTINGS = {"mx": {"max_message_size": 256 * 1024, "idle_timeout": 15.0,
                   "max_recipients": 5, "max_header_size": 16 * 1024},
            "mailbox": {"quota_units": 0}}
# A complete command line unanswered this long is a hang; generous, so that a
# loaded machine is not taken for one (the MX's idle timeout is 15 s).
REPLY_TIMEOUT = 60.0

ARGS_HELO = [b"client.example.net", b"", b"[127.0.0.1]", b"[IPv6:::1]", b"x" * 600,
             b"a\rInjected: yes", b"\xff\xfe\x00", "h\u00f6st.example".encode(), b"a b c"]
ARGS_MAIL = [b"FROM:<sender@remote.example>", b"FROM:<>", b"FROM:<aperson@>", b"FROM:aperson@",
             b"FROM:<a@b.example> SIZE=100", b"FROM:<a@b.example> SIZE=99999999999",
             b"FROM:<a@b.example> BODY=8BITMIME", b"FROM:<a@b.example> SMTPUTF8",
             "FROM:<\u00fc@b.example> SMTPUTF8".encode(), b"FROM:<a@b.example> FOO=BAR",
             b"FROM:<" + b"a" * 300 + b"@b.example>", b"", b"FROM:", b"FROM:<a@b.example",
             b'FROM:<"a\rb"@b.example>', b"FROM:<@route.example:a@b.example>", b"TO:<a@b>",
             b"FROM:<a@[>", b"FROM: <a@b.example>", b"FROM:<=?utf-8?q?x?=@b.example>"]
ARGS_RCPT = [b"TO:<alice@example.test>", b"TO:<bob@example.test>", b"TO:<Alice@Example.Test>",
             b"TO:<nobody@example.test>", b"TO:<someone@remote.example>", b"TO:<aperson@>",
             b"TO:aperson@", b"TO:<>", b"TO:<alice@example.test> NOTIFY=NEVER", b"TO:",
             b'TO:<"alice\r"@example.test>', b"TO:<alice@example.test.>", b"FROM:<a@b>"]
VERBS = [b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"VRFY", b"EXPN",
         b"HELP", b"BDAT", b"AUTH", b"ETRN", b"XCLIENT", b"ehlo", b"Mail", b"\x00", b"GET"]
PIECES = [b"\r\n", b"\n", b"\r", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n",
          b".", b"..", b"\x00", b"\xff", b"\t", b" ", b"x" * 1200, b"=?utf-8?q?=0D=0A?="]


@dataclass
class Report:
    sessions: int = 0
    commands: int = 0
    bytes_sent: int = 0
    accepted: dict[bytes, str] = field(default_factory=dict)  # queue id -> session
    delivered: int = 0                                         # (user, queue id) copies
    findings: list[str] = field(default_factory=list)


class Session:
    def __init__(self, address: tuple[str, int], rng: random.Random, name: str,
                 messages: list[bytes], report: Report):
        self.address, self.rng, self.name = address, rng, name
        self.messages, self.report = messages, report
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.transcript = bytearray()
        self.in_tls = False

    # --- what to send ----------------------------------------------------
    def command(self) -> bytes:
        rng = self.rng
        verb = rng.choice(VERBS)
        if verb.upper() in (b"EHLO", b"HELO"):
            return verb + b" " + rng.choice(ARGS_HELO)
        if verb.upper() == b"MAIL":
            return verb + b" " + rng.choice(ARGS_MAIL)
        if verb.upper() == b"RCPT":
            return verb + b" " + rng.choice(ARGS_RCPT)
        if rng.random() < 0.3:
            return verb + b" " + rng.choice(PIECES + ARGS_HELO).strip(b"\r\n")
        return verb

    def message(self) -> bytes:
        """A message with the session's mark, mutated a little: bare line
        ends, NULs, overlong lines, smuggling sequences, truncation."""
        rng = self.rng
        body = bytearray(rng.choice(self.messages))
        if rng.random() < 0.5:  # the corpus has bare LF line ends; a client sends CRLF
            body = bytearray(re.sub(rb"\r\n|\n|\r", b"\r\n", body))
        for _ in range(rng.randrange(0, 4)):
            at = rng.randrange(0, len(body) + 1)
            action = rng.randrange(4)
            if action == 0:
                body[at:at] = rng.choice(PIECES)
            elif action == 1:
                body[at:at + rng.randrange(1, 40)] = b""
            elif action == 2:
                body[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
            else:
                del body[at:]
        return f"Subject: fuzz {self.name}\r\n".encode() + bytes(body)

    @staticmethod
    def data_section(message: bytes) -> bytes:
        """The DATA payload: CRLF-terminated and dot-stuffed, so it ends where we mean."""
        if not message.endswith(b"\r\n"):
            message += b"\r\n"
        return re.sub(rb"(?:^|(?<=\r\n))\.", b"..", message) + b".\r\n"

    # --- the wire ---------------------------------------------------------
    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        self.report.bytes_sent += len(data)
        await self.writer.drain()

    async def reply(self, timeout: float = REPLY_TIMEOUT) -> bytes:
        """One whole reply (its last line has a space after the code)."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                raise ConnectionResetError("closed by the server")
            self.check_line(line)
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def check_line(self, line: bytes) -> None:
        self.transcript += b"S: " + line
        if self.in_tls:  # a TLS alert after our garbage handshake is no SMTP reply
            return
        self.in_tls = line.startswith(b"220 ") and b"TLS" in line
        text = line.rstrip(b"\r\n")
        if not REPLY_LINE.match(text):
            self.finding(f"not an SMTP reply: {line!r}")
        elif EXCEPTION_REPLY.search(text):
            self.finding(f"reply names an exception: {line!r}")
        for queue_id in QUEUED.findall(text):
            self.report.accepted[queue_id] = self.name

    def finding(self, what: str) -> None:
        tail = bytes(self.transcript[-600:]).decode("utf-8", "replace")
        self.report.findings.append(f"session {self.name}: {what}\n  transcript tail:\n{tail}")

    async def exchange(self, line: bytes) -> bytes:
        self.transcript += b"C: " + line[:200] + b"\r\n"
        self.report.commands += 1
        await self.send(line + b"\r\n")
        return await self.reply()

    # --- the kinds of session ----------------------------------------------
    async def dialogue(self) -> None:
        await self.reply()  # greeting
        for _ in range(self.rng.randrange(1, 12)):
            if self.rng.random() < 0.35:
                await self.transaction()
            else:
                await self.exchange(self.command())
        await self.exchange(b"QUIT")

    async def transaction(self) -> None:
        await self.exchange(b"EHLO " + self.rng.choice(ARGS_HELO[:4]))
        if not (await self.exchange(b"MAIL FROM:<sender@remote.example>")).startswith(b"250"):
            return
        for rcpt in self.rng.sample(ARGS_RCPT[:5], self.rng.randrange(1, 4)):
            await self.exchange(b"RCPT " + rcpt)
        if (await self.exchange(b"DATA")).startswith(b"354"):
            payload = self.data_section(self.message())
            self.transcript += b"C: <message of %d bytes>\r\n" % len(payload)
            await self.send(payload)
            await self.reply()

    async def burst(self) -> None:
        """Everything in one write, replies read until the server closes."""
        rng, parts = self.rng, []
        for _ in range(rng.randrange(1, 20)):
            roll = rng.random()
            if roll < 0.3:
                rcpts = b"".join(b"RCPT " + r + b"\r\n" for r in rng.sample(ARGS_RCPT[:5], 2))
                parts.append(b"EHLO x\r\nMAIL FROM:<s@remote.example>\r\n" + rcpts + b"DATA\r\n"
                             + (self.data_section(self.message()) if rng.random() < 0.7
                                else self.message() + b"\r\n.\r\n"))
            elif roll < 0.5:
                parts.append(rng.choice(PIECES))
            else:
                parts.append(self.command() + rng.choice([b"\r\n", b"\n", b"\r\n", b"\r"]))
        parts.append(b"QUIT\r\n")
        batch = b"".join(parts)
        self.transcript += b"C: <burst of %d bytes, then half-close>\r\n" % len(batch)
        self.report.commands += len(parts)
        await self.send(batch)
        self.writer.write_eof()  # garbage may have swallowed the QUIT
        await self.drain_replies()

    async def garbage(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
        elif roll < 0.7:
            data = b"EHLO " + b"y" * rng.randrange(1000, 70000) + b"\r\nNOOP\r\n"
        else:
            data = b"EHLO x\r\nSTARTTLS\r\n" + bytes(rng.randrange(256) for _ in range(300))
        self.transcript += b"C: <%d bytes of garbage, then half-close>\r\n" % len(data)
        await self.send(data + b"\r\nQUIT\r\n")
        self.writer.write_eof()
        await self.drain_replies()

    async def cut(self) -> None:
        """Stops mid-command or mid-DATA: a half-close (FIN) or a reset (RST)."""
        rng = self.rng
        await self.reply()
        if rng.random() < 0.5:
            await self.exchange(b"EHLO x")
            await self.exchange(b"MAIL FROM:<s@remote.example>")
            await self.exchange(b"RCPT TO:<alice@example.test>")
            await self.exchange(b"DATA")
            partial = self.data_section(self.message())
            partial = partial[:rng.randrange(0, len(partial) - 3)]
        else:
            partial = self.command()[:rng.randrange(0, 20)]
        await self.send(partial)
        if rng.random() < 0.5:
            self.transcript += b"C: <half-close>\r\n"
            self.writer.write_eof()
            await self.drain_replies()
        else:
            self.transcript += b"C: <reset>\r\n"
            self.writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.close()

    async def drain_replies(self) -> None:
        """Reads until the server closes; it must, within the reply timeout."""
        buffer = b""
        while True:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), REPLY_TIMEOUT)
            except asyncio.TimeoutError:
                self.finding(f"the server neither answered nor closed in {REPLY_TIMEOUT}s")
                return
            except ConnectionError:
                chunk = b""
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self.check_line(line + b"\n")
            if not chunk:
                return

    async def run(self) -> None:
        kind = self.rng.choices([self.dialogue, self.burst, self.garbage, self.cut],
                                weights=[4, 3, 1, 2])[0]
        self.reader, self.writer = await asyncio.open_connection(*self.address)
        try:
            await kind()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the server may close on us (a 421, a TLS handshake gone wrong)
        except asyncio.TimeoutError:
            self.finding(f"no reply within {REPLY_TIMEOUT}s")
        finally:
            self.writer.close()
        self.report.sessions += 1


async def fuzz(address: tuple[str, int], seconds: float, seed: int, parallel: int = 4) -> Report:
    report = Report()
    messages = email_corpus() + list(mime_messages()) + list(hazard_messages(small=True))
    deadline = time.monotonic() + seconds
    counter = iter(range(10 ** 9))

    async def worker() -> None:
        while time.monotonic() < deadline:
            n = next(counter)
            await Session(address, random.Random(seed * 1_000_003 + n), f"{seed}-{n}",
                          messages, report).run()

    await asyncio.gather(*(worker() for _ in range(parallel)))
    return report


def normal_transaction(address: tuple[str, int]) -> bytes:
    """The plain transaction that must still get 250 afterwards; its queue id."""
    with smtplib.SMTP(*address, timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        smtp.mail("sender@remote.example")
        code, reply = smtp.rcpt(USERS[0])
        assert code == 250, (code, reply)
        code, reply = smtp.data(b"Subject: after the fuzzing\r\n\r\nstill here\r\n")
    assert code == 250, f"a normal transaction got {code} {reply!r} after the fuzzing"
    return reply.rsplit(b" ", 1)[-1]


def delivered(mailyard: Mailyard, address: tuple[str, int], expected: set[bytes],
              stall: float = 60) -> dict[tuple[str, bytes], int]:
    """(user, queue id) -> copies in that user's mailbox, once every expected
    queue id is in some mailbox, or once no new message arrived for `stall`
    seconds (a busy machine delivers slowly, but it delivers)."""
    deadline = time.monotonic() + stall
    clients = [Client(address, mailyard.token(user)) for user in USERS]
    try:
        seen: dict[tuple[str, str], bytes] = {}   # (user, message id) -> queue id
        known = 0
        while True:
            for user, client in zip(USERS, clients):
                for label in ("INBOX", "SPAM"):
                    for listed in client.list_all(label):
                        if (user, listed.id) not in seen:
                            raw = client.get(listed.id, mailbox_pb2.RAW).raw
                            match = TRACE_ID.match(raw)
                            seen[user, listed.id] = match.group(1) if match else b"?"
            counts: dict[tuple[str, bytes], int] = {}
            for (user, _), queue_id in seen.items():
                counts[user, queue_id] = counts.get((user, queue_id), 0) + 1
            if expected <= {q for _, q in counts} or time.monotonic() > deadline:
                return counts
            if len(seen) > known:
                known, deadline = len(seen), time.monotonic() + stall
            time.sleep(0.5)
    finally:
        for client in clients:
            client.close()


def run(root: Path, seconds: float, seed: int) -> Report:
    """The whole campaign on a fresh data directory; raises nothing, reports."""
    mailyard = Mailyard(root, settings=SETTINGS)
    mailyard.add_users(*USERS)
    service = mailyard.start("up")
    try:
        service.wait_listening("mx", "mailbox")
        mx, mailbox = service.addresses["mx"], service.addresses["mailbox"]
        report = asyncio.run(fuzz(mx, seconds, seed))
        if service.proc.poll() is not None:
            report.findings.append(f"mailyard up exited ({service.proc.returncode})")
            return report
        try:
            last = normal_transaction(mx)
        except (AssertionError, OSError, smtplib.SMTPException) as exc:
            report.findings.append(f"after the fuzzing: {exc}")
            last = None
        expected = set(report.accepted) | ({last} if last else set())
        counts = delivered(mailyard, mailbox, expected)
        report.delivered = len(counts)
        lost = sorted(expected - {queue_id for _, queue_id in counts})
        if lost:
            report.findings.append(f"{len(lost)} accepted messages not delivered: {lost[:10]}")
        twice = sorted(key for key, n in counts.items() if n > 1)
        if twice:
            report.findings.append(f"delivered twice to one user: {twice[:10]}")
    finally:
        code = service.stop()
    log = service.log_path.read_text(errors="replace")
    for sign in ("Traceback", "event=session_failed"):
        if sign in log:
            at = log.index(sign)
            report.findings.append(f"{sign} in {service.log_path}:\n{log[max(0, at - 300):at + 1500]}")
    if code != 0:
        report.findings.append(f"mailyard up stopped with exit code {code}")
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=None, help="default: a new one, printed")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10 ** 6)
    root = Path(tempfile.mkdtemp(prefix="mailyard-fuzz-smtp-"))
    started = time.monotonic()
    report = run(root, args.seconds, seed)
    print(summary(report, seed, time.monotonic() - started))
    for finding in report.findings:
        print(f"FINDING {finding}")
    if report.findings:
        print(f"data directory and service log kept in {root}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


def summary(report: Report, seed: int, elapsed: float) -> str:
    return (f"smtp fuzz seed {seed}: {report.sessions} sessions, {report.commands} commands, "
            f"{report.bytes_sent} bytes in {elapsed:.0f}s; {len(report.accepted)} messages "
            f"accepted, {report.delivered} mailbox copies, {len(report.findings)} findings")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
