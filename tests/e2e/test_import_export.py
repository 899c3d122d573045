"""Import and export through the real command line, beside a running
`mailyard up`: the messages of ../shared/testdata/email go in from a Maildir
and from an mbox, come back byte for byte over gRPC and in the exports, with
their labels, read state and dates, and search finds them. Python's own
`mailbox` module reads the exports. An import killed partway and run again
stores every message exactly once."""
from __future__ import annotations

import hashlib
import mailbox
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailyard.proto import mailbox_pb2
from tests.e2e.harness import Client, Mailyard
from tests.testdata import cpython_messages

ALICE, BOB, CAROL, DAVE, ERIN, FRANK = (
    "alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test",
    "erin@example.test", "frank@example.test")
BASE_MS = 1_300_000_000_123  # a received time with milliseconds, kept by a Maildir


def run_cli(system: Mailyard, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailyard", "--config", str(system.config),
                           "--data-dir", str(system.data_dir), *args],
                          capture_output=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr.decode()
    return result


def mboxrd(entries: list[tuple[str, bytes]]) -> bytes:
    """An mboxrd file written here, apart from mailyard's writer."""
    out = []
    for from_line, raw in entries:
        quoted = re.sub(rb"(?m)^(>*From )", rb">\1", raw)
        out += [from_line.encode(), b"\n", quoted, b"" if quoted.endswith(b"\n") else b"\n", b"\n"]
    return b"".join(out)


def asctime(seconds: int) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(seconds))


def entries_of(data: bytes) -> list[tuple[bytes, bytes]]:
    """(From_ line, unquoted message) pairs of an mboxrd file, parsed here."""
    chunks = re.split(rb"(?m)^(From .*)\n", data)[1:]
    return [(line, re.sub(rb"(?m)^>(>*From )", rb"\1", body[:-1]))
            for line, body in zip(chunks[::2], chunks[1::2])]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    # The tests read every message back; the per-user API quota would throttle that.
    mailyard = Mailyard(tmp_path_factory.mktemp("transfer"),
                        settings={"mailbox": {"quota_units": 0}})
    mailyard.add_users(ALICE, BOB, CAROL, DAVE, ERIN, FRANK)
    service = mailyard.start("up")
    service.wait_listening("mailbox")
    yield mailyard, service
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def client(system, user: str) -> Client:
    mailyard, service = system
    return Client(service.addresses["mailbox"], mailyard.token(user))


def all_messages(c: Client, labels) -> dict[str, object]:
    return {m.id: m for label in labels for m in c.list_all(label, page_size=100)}


def raw_of(c: Client, message_id: str) -> bytes:
    return c.get(message_id, mailbox_pb2.RAW).raw


# --- Maildir ----------------------------------------------------------------

# (directory, subdir, flags) per message, cycling; the folder labels they mean.
PLACES = [("", "cur", "S"), ("", "new", ""), (".Work", "cur", "FS"), (".Sent", "cur", "S"),
          (".Trash", "cur", "S"), (".Entw&APw-rfe", "cur", ""), (".Archive", "cur", "S"),
          (".Junk", "cur", ""), (".Drafts", "cur", "DS"), ("", "cur", "FS")]
LABELS = {"": "INBOX", ".Work": "Work", ".Sent": "SENT", ".Trash": "TRASH",
          ".Entw&APw-rfe": "Entwürfe", ".Archive": None, ".Junk": "SPAM", ".Drafts": "DRAFT"}


def write_maildir(root: Path) -> list[tuple[str, str, bytes, int]]:
    """The 48 messages in Maildir++ folders with flags and millisecond file
    times, plus one message in both INBOX and Work. Returns (folder, flags,
    bytes, mtime_ms) per file."""
    for directory in {p[0] for p in PLACES}:
        for sub in ("cur", "new", "tmp"):
            (root / directory / sub).mkdir(parents=True, exist_ok=True)
    files = []
    messages = [p.read_bytes() for p in cpython_messages()]
    for i, raw in enumerate(messages):
        directory, sub, flags = PLACES[i % len(PLACES)]
        files.append((directory, sub, flags, raw, BASE_MS + i * 3_600_001))
    directory, sub, flags, raw, mtime = files[0]
    files.append((".Work", "cur", flags, raw, mtime))  # the same bytes, a second folder
    written = []
    for n, (directory, sub, flags, raw, mtime_ms) in enumerate(files):
        name = f"{mtime_ms // 1000}.M{n}P1.source" + (f":2,{flags}" if sub == "cur" else "")
        path = root / directory / sub / name
        path.write_bytes(raw)
        os.utime(path, ns=(mtime_ms * 1_000_000, mtime_ms * 1_000_000))
        written.append((directory, flags, raw, mtime_ms))
    return written


def read_maildir(root: Path) -> Counter:
    """(directory, flags, bytes, mtime_ms) of every message, read by Python's mailbox."""
    found = Counter()
    top = mailbox.Maildir(root, factory=None, create=False)
    for name in [""] + top.list_folders():
        box = top if name == "" else top.get_folder(name)
        for key in box.keys():
            message = box.get_message(key)
            mtime = os.stat(Path(box._path) / box._lookup(key)).st_mtime_ns // 1_000_000
            found[("." + name if name else "", message.get_flags(), box.get_bytes(key),
                   mtime)] += 1
    return found


def test_maildir_round_trip_through_a_running_mailyard(system, tmp_path):
    mailyard, _ = system
    source = tmp_path / "Maildir"
    files = write_maildir(source)

    result = ok(run_cli(mailyard, "import", "maildir", ALICE, str(source)))
    assert re.search(rb"imported 49/49 messages for alice@example.test .*: 48 new, "
                     rb"1 already stored", result.stdout), result.stdout

    alice = client(system, ALICE)
    try:
        listed = all_messages(alice, ["INBOX", "Work", "SENT", "TRASH", "SPAM", "DRAFT",
                                      "Entwürfe"])
        expected = Counter()
        for directory, flags, raw, mtime_ms in files:
            if LABELS[directory]:
                expected[raw, mtime_ms] = 1
        got = Counter()
        for message in listed.values():
            got[raw_of(alice, message.id), message.received_at] += 1
        assert got == expected  # every labelled message once, byte for byte, its time kept

        by_raw = {raw_of(alice, m.id): m for m in listed.values()}
        for directory, flags, raw, _ in files:
            if not LABELS[directory]:
                continue
            labels = set(by_raw[raw].labels)
            assert LABELS[directory] in labels
            assert ("UNREAD" in labels) == ("S" not in flags)
            assert ("STARRED" in labels) == ("F" in flags)
        shared = by_raw[files[0][2]]
        assert {"INBOX", "Work"} <= set(shared.labels)
        names = {label.name for label in alice.call(
            "ListLabels", mailbox_pb2.ListLabelsRequest()).labels}
        assert {"Work", "Entwürfe"} <= names

        # Index events went out: the running indexer makes the mail searchable.
        deadline = time.monotonic() + 30
        while not alice.search("dingus").messages and time.monotonic() < deadline:
            time.sleep(0.1)
        found = alice.search("dingus").messages
        assert found and all(b"dingus" in raw_of(alice, m.id).lower() for m in found)
    finally:
        alice.close()

    exported = tmp_path / "exported"
    result = ok(run_cli(mailyard, "export", ALICE, "--format", "maildir",
                        "--output", str(exported)))
    assert b"exported 48 messages of alice@example.test" in result.stderr
    assert read_maildir(exported) == read_maildir(source)


def test_maildir_export_needs_an_empty_target_and_an_output(system, tmp_path):
    mailyard, _ = system
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    result = run_cli(mailyard, "export", ALICE, "--format", "maildir",
                     "--output", str(tmp_path / "full"))
    assert result.returncode == 2 and b"not an empty directory" in result.stderr
    result = run_cli(mailyard, "export", ALICE, "--format", "maildir")
    assert result.returncode == 2 and b"--output" in result.stderr
    result = run_cli(mailyard, "import", "maildir", ALICE, str(tmp_path))
    assert result.returncode == 2 and b"not a Maildir" in result.stderr
    result = run_cli(mailyard, "import", "mbox", "nobody@example.test", str(tmp_path))
    assert result.returncode == 2 and b"no such user" in result.stderr


# --- mbox -------------------------------------------------------------------

READ_AND_STARRED = (b"From: Someone <someone@example.org>\nSubject: seen and starred\n"
                    b"Status: RO\nX-Status: F\n\nFrom here on, a quoted line.\n>From too.\n")
GARBAGE = b"\x00\x01 no header here \xff\xfe\n\nnot a mail at all\n"


def test_mbox_round_trip_with_read_state_and_a_malformed_message(system, tmp_path):
    mailyard, _ = system
    messages = [p.read_bytes() for p in cpython_messages()] + [READ_AND_STARRED, GARBAGE]
    entries = [(f"From sender{i}@example.org {asctime(1_300_000_000 + i * 60)}", raw)
               for i, raw in enumerate(messages)]
    source = tmp_path / "in.mbox"
    source.write_bytes(mboxrd(entries))
    garbage_offset = source.read_bytes().index(b"From sender49@")

    result = ok(run_cli(mailyard, "import", "mbox", BOB, str(source)))
    assert b"50/50 messages" in result.stdout
    malformed = re.findall(rb"malformed \(stored raw\): message (\d+) \(byte (\d+)\)",
                           result.stderr)
    assert (b"50", str(garbage_offset).encode()) in malformed
    assert f"{len(malformed)} malformed, stored raw".encode() in result.stdout

    stored = [raw if raw.endswith(b"\n") else raw + b"\n" for raw in messages]
    bob = client(system, BOB)
    try:
        inbox = bob.list_all("INBOX", page_size=100)
        assert Counter(raw_of(bob, m.id) for m in inbox) == Counter(stored)
        state = {raw_of(bob, m.id): set(m.labels) for m in inbox}
        read = {raw for raw, labels in state.items() if "UNREAD" not in labels}
        assert read == {READ_AND_STARRED, next(r for r in stored if b"\nStatus: R\r\n" in r)}
        assert {raw for raw, labels in state.items() if "STARRED" in labels} == {
            READ_AND_STARRED}
        garbage = next(m for m in inbox if raw_of(bob, m.id) == GARBAGE)
        assert garbage.received_at == (1_300_000_000 + 49 * 60) * 1000

        exported = ok(run_cli(mailyard, "export", BOB, "--format", "mbox")).stdout
        # The same messages, quoting and separators; only the From_ senders differ.
        assert [body for _, body in entries_of(exported)] == stored
        assert [line.split(b" ", 2)[2] for line, _ in entries_of(exported)] == [
            line.encode().split(b" ", 2)[2] for line, _ in entries]
        unsender = re.compile(rb"(?m)^From \S+ ")
        assert unsender.sub(b"From - ", exported) == unsender.sub(b"From - ",
                                                                  source.read_bytes())
        (tmp_path / "out.mbox").write_bytes(exported)
        flags = [m.get_flags() for m in mailbox.mbox(tmp_path / "out.mbox")]
        assert sorted(f for f in flags if f) == ["R", "ROF"]  # Status + X-Status letters

        # Read and starred here go out as Status/X-Status, and come back in.
        first, second = inbox[0], inbox[1]
        bob.modify([first.id], remove=["UNREAD"])
        bob.modify([second.id], add=["STARRED"])
        ok(run_cli(mailyard, "export", BOB, "--format", "mbox",
                   "--output", str(tmp_path / "again.mbox")))
        ok(run_cli(mailyard, "import", "mbox", CAROL, str(tmp_path / "again.mbox")))
        carol = client(system, CAROL)
        try:
            # Each message has its own received time, kept through the From_ lines.
            theirs = {m.received_at: (m.unread, "STARRED" in m.labels)
                      for m in carol.list_all("INBOX", page_size=100)}
            mine = {m.received_at: (m.unread, "STARRED" in m.labels)
                    for m in bob.list_all("INBOX", page_size=100)}
            assert theirs == mine and len(mine) == len(messages)
            assert mine[first.received_at][0] is False and mine[second.received_at][1] is True
        finally:
            carol.close()
    finally:
        bob.close()


def test_mbox_label_option_and_takeout_labels(system, tmp_path):
    mailyard, _ = system
    plain = b"From: a@example.org\nSubject: filed\nStatus: RO\n\nbody\n"
    takeout = (b"X-GM-THRID: 1\nX-Gmail-Labels: Inbox,Unread,Lists/python,Category Forums\n"
               b"From: b@example.org\nSubject: from takeout\n\nbody\n")
    source = tmp_path / "sent.mbox"
    source.write_bytes(mboxrd([("From a@example.org Mon Jan  1 00:00:00 2001", plain),
                               ("From b@example.org Mon Jan  1 00:01:00 2001", takeout)]))
    ok(run_cli(mailyard, "import", "mbox", ERIN, str(source), "--label", "sent"))
    erin = client(system, ERIN)
    try:
        labels = {m.subject: set(m.labels) for m in erin.list_all("SENT")}
        assert labels == {"filed": {"SENT"},
                          "from takeout": {"SENT", "INBOX", "UNREAD", "Lists/python"}}
        # The same file again under another label is another import, not a resumed one.
        again = ok(run_cli(mailyard, "import", "mbox", ERIN, str(source), "--label", "Kept"))
        assert b"0 new, 2 already stored" in again.stdout
        assert {m.subject: set(m.labels) for m in erin.list_all("Kept")} == {
            "filed": {"SENT", "Kept"},
            "from takeout": {"SENT", "INBOX", "UNREAD", "Lists/python", "Kept"}}
    finally:
        erin.close()
    result = run_cli(mailyard, "import", "mbox", ERIN, str(source), "--label", " bad")
    assert result.returncode == 2 and b"invalid label name" in result.stderr


def note(subject: str, message_id: str, refs: str = "") -> bytes:
    extra = f"In-Reply-To: {refs}\nReferences: {refs}\n" if refs else ""
    return (f"From: x@example.org\nSubject: {subject}\nMessage-ID: {message_id}\n{extra}\n"
            f"{message_id}\n").encode()


def test_imported_mail_is_threaded_as_delivered_mail(system, tmp_path):
    """Within one run (messages in flight together) and across runs (the
    parent already stored), by references and by a Re: subject."""
    mailyard, _ = system
    first = [note("plan", "<a@x>"), note("Re: plan", "<b@x>", "<a@x>"),
             note("Re: plan", "<c@x>"), note("plan", "<d@x>")]
    later = [note("Re: plan", "<e@x>", "<a@x>"), note("RE: Plan", "<f@x>")]
    for name, batch, start in (("first", first, 0), ("later", later, 600)):
        (tmp_path / name).write_bytes(mboxrd(
            [(f"From x@example.org {asctime(1_300_000_000 + start + i)}", raw)
             for i, raw in enumerate(batch)]))
        ok(run_cli(mailyard, "import", "mbox", FRANK, str(tmp_path / name)))
    frank = client(system, FRANK)
    try:
        thread = {raw_of(frank, m.id).rsplit(b"\n", 2)[-2]: m.thread_id
                  for m in frank.list_all("INBOX")}
        assert len(thread) == 6
        a = thread[b"<a@x>"]
        assert [thread[f"<{n}@x>".encode()] == a for n in "bcdef"] == [
            True, True, False, True, True]
        assert thread[b"<d@x>"] != a
    finally:
        frank.close()


# --- interrupted import -----------------------------------------------------

def generated_mbox(path: Path, count: int) -> list[bytes]:
    messages = []
    for i in range(count):
        msg = EmailMessage()
        msg["From"], msg["To"] = f"Writer {i % 17} <writer{i % 17}@example.org>", DAVE
        msg["Subject"] = f"note {i}"
        msg["Message-ID"] = f"<note{i}@example.org>"
        msg.set_content(f"number {i}\n" + "lorem ipsum dolor sit amet\n" * (i % 40))
        messages.append(msg.as_bytes())
    path.write_bytes(mboxrd([(f"From writer@example.org {asctime(978_307_200 + i)}", m)
                             for i, m in enumerate(messages)]))
    return messages


def test_an_interrupted_import_continues_without_duplicates(system, tmp_path):
    mailyard, _ = system
    total = 1500
    source = tmp_path / "big.mbox"
    messages = generated_mbox(source, total)
    checkpoints = mailyard.data_dir / "imports"
    before = set(checkpoints.glob("*.json")) if checkpoints.exists() else set()

    proc = subprocess.Popen(
        [sys.executable, "-m", "mailyard", "--config", str(mailyard.config), "--data-dir",
         str(mailyard.data_dir), "import", "mbox", DAVE, str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    done = 0
    while done < 100 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        for path in set(checkpoints.glob("*.json")) - before if checkpoints.exists() else ():
            try:
                done = int(re.search(r'"done": (\d+)', path.read_text())[1])
            except (OSError, TypeError):
                pass
    os.killpg(proc.pid, signal.SIGKILL)  # the importer and its worker processes
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the import ended before it could be killed"
    assert 100 <= done < total

    result = ok(run_cli(mailyard, "import", "mbox", DAVE, str(source)))
    skipped = int(re.search(rb"(\d+) skipped \(done by an earlier run\)", result.stdout)[1])
    assert skipped >= done
    assert f"imported {total}/{total} messages".encode() in result.stdout

    dave = client(system, DAVE)
    try:
        inbox = dave.list_all("INBOX", page_size=500)
        assert len(inbox) == total == len({m.id for m in inbox})
        digests = Counter(hashlib.sha256(raw_of(dave, m.id)).hexdigest() for m in inbox)
        assert digests == Counter(hashlib.sha256(m).hexdigest() for m in messages)
    finally:
        dave.close()

    again = ok(run_cli(mailyard, "import", "mbox", DAVE, str(source)))
    assert f"0 new, {total} skipped".encode() in again.stdout
