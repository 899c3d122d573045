"""The mail file formats of import/export, without a store: mbox quoting and
From_ lines, the state mbox keeps in header fields, Maildir folder names and
flags. Python's own `mailbox` module is the independent reader and writer."""
from __future__ import annotations

import mailbox

import pytest

from mailyard.store.transfer import headers, maildir, mbox
from tests.testdata import cpython_messages

TRICKY = [
    b"Subject: quoting\n\nFrom the start of a line\n>From quoted once\n>>From twice\nFrom",
    b"Subject: crlf\r\n\r\nline\r\nFrom here\r\n",
    b"Subject: ends in blank lines\n\nbody\n\n\n",
    b"",
    b"\n",
    b"From MAILER-DAEMON Fri Apr 06 16:46:09 2001\nSubject: own From_ line\n\nx\n",
]


def as_stored(raw: bytes) -> bytes:
    """mbox cannot hold a message without a final line break: the writer adds one."""
    return raw if raw.endswith(b"\n") or not raw else raw + b"\n"


def test_mboxrd_round_trips_every_message_exactly():
    messages = [path.read_bytes() for path in cpython_messages()] + TRICKY
    data = b"".join(mbox.entry("Someone <someone@example.org>", 1_000_000_000_000 + i * 1000, m)
                    for i, m in enumerate(messages))
    entries = list(mbox.read(data))
    assert mbox.count(data) == len(entries) == len(messages)
    assert [e.raw for e in entries] == [as_stored(m) for m in messages]
    assert all(e.from_line.startswith(b"From someone@example.org ") for e in entries)
    assert [mbox.from_line_ms(e.from_line) for e in entries] == [
        1_000_000_000_000 + i * 1000 for i in range(len(messages))]


def test_quoting_only_touches_from_lines():
    raw = b"Subject: x\n\nFrom a\n>From b\n>>From c\nfrom d\n From e\n>From\n"
    assert mbox.quote(raw) == (b"Subject: x\n\n>From a\n>>From b\n>>>From c\nfrom d\n From e\n"
                               b">From\n")


def test_mboxo_reading_unquotes_one_level_only_from_lines():
    data = b"From x Mon Jan  1 00:00:00 2001\nSubject: o\n\n>From a\n>>From b\n\n"
    assert next(mbox.read(data, "mboxo")).raw == b"Subject: o\n\nFrom a\n>>From b\n"
    assert next(mbox.read(data, "mboxrd")).raw == b"Subject: o\n\nFrom a\n>From b\n"


def test_text_before_the_first_from_line_is_a_message_not_lost():
    data = b"Subject: stray\n\nno From_ line\nFrom x Mon Jan  1 00:00:00 2001\nSubject: y\n\n"
    entries = list(mbox.read(data))
    assert [(e.from_line, e.raw) for e in entries] == [
        (b"", b"Subject: stray\n\nno From_ line\n"),
        (b"From x Mon Jan  1 00:00:00 2001", b"Subject: y\n")]


def test_reads_what_pythons_mailbox_writes(tmp_path):
    # Python writes mboxo; messages that begin with their own From_ line
    # would lose it to its writer, so they are left out here.
    messages = [p.read_bytes() for p in cpython_messages()]
    messages = [m for m in messages if not m.startswith(b"From ")]
    box = mailbox.mbox(tmp_path / "python.mbox")
    for raw in messages:
        box.add(raw)
    box.flush()
    data = (tmp_path / "python.mbox").read_bytes()
    assert [e.raw for e in mbox.read(data, "mboxo")] == [as_stored(m) for m in messages]


def test_pythons_mailbox_reads_what_we_write(tmp_path):
    messages = [p.read_bytes() for p in cpython_messages()]
    path = tmp_path / "ours.mbox"
    path.write_bytes(b"".join(mbox.entry("Bob <bob@example.org>", 0, m) for m in messages))
    box = mailbox.mbox(path)
    assert len(box) == len(messages)
    assert all(m.get_from() == "bob@example.org Thu Jan 01 00:00:00 1970" for m in box)


@pytest.mark.parametrize("line, expected", [
    (b"From a@b Fri Apr 06 16:46:09 2001", 986575569000),
    (b"From a@b  Fri Nov 26 21:40:36 2004", 1101505236000),
    (b"From a@b Mon Jan  1 01:00:00 +0100 2001", 978307200000),
    (b"From 1653@xxx Mon Jan 01 00:00:00 +0000 2001", 978307200000),
    (b"From a@b yesterday", None),
])
def test_from_line_dates(line, expected):
    assert mbox.from_line_ms(line) == expected


def test_state_from_status_and_x_status_in_the_top_header_block_only():
    assert headers.state_of(b"Subject: a\nStatus: RO\nX-Status: AF\n\nbody\n") == \
        headers.HeaderState(seen=True, starred=True, gmail_labels=None)
    assert not headers.state_of(b"Subject: a\nStatus: O\n\nStatus: R\n").seen
    # msg_25 is a bounce quoting "Status: 5.4.6" in its body; msg_26 says Status: R.
    bounce, read = (p.read_bytes() for p in cpython_messages()
                    if p.name in ("msg_25.txt", "msg_26.txt"))
    assert not headers.state_of(bounce).seen
    assert headers.state_of(read).seen


def test_takeout_labels():
    raw = b'X-Gmail-Labels: Inbox,Starred,Opened,"Work, 2024",Category Updates\nSubject: t\n\n'
    state = headers.state_of(raw)
    assert state.seen and state.starred
    assert headers.mailyard_labels(state.gmail_labels) == ({"INBOX", "Work, 2024"}, [])
    assert not headers.state_of(b"X-Gmail-Labels: Inbox,Unread\n\n").seen


def test_with_state_keeps_the_bytes_when_they_agree():
    raw = b"Subject: a\r\nStatus: RO\r\n\r\nbody\r\n"
    assert headers.with_state(raw, seen=True, starred=False) is raw


def test_with_state_rewrites_or_adds_status_fields_in_the_message_line_ends():
    crlf = b"Subject: a\r\nStatus: O\r\n\r\nStatus: O\r\n"
    assert headers.with_state(crlf, seen=True, starred=True) == (
        b"Subject: a\r\nStatus: RO\r\nX-Status: F\r\n\r\nStatus: O\r\n")
    assert headers.with_state(b"Subject: a\n\nbody\n", seen=True, starred=False) == (
        b"Subject: a\nStatus: RO\n\nbody\n")
    read = b"Status: RO\nX-Status: AF\nSubject: a\n\n"
    assert headers.with_state(read, seen=False, starred=False) == (
        b"Status: O\nX-Status: A\nSubject: a\n\n")
    for raw in (b"Subject: a\n\nbody\n", read, crlf):
        for seen in (False, True):
            for starred in (False, True):
                state = headers.state_of(headers.with_state(raw, seen, starred))
                assert (state.seen, state.starred) == (seen, starred)


def test_received_date_is_the_topmost_received_field():
    raw = (b"Received: from b by c; Tue, 2 Jan 2001 00:00:00 +0000\n"
           b"Received: from a by b; Mon, 1 Jan 2001 00:00:00 +0000\nSubject: x\n\n")
    assert headers.received_ms(raw) == 978393600000
    assert headers.received_ms(b"Subject: x\n\n") is None


@pytest.mark.parametrize("text, encoded", [
    ("Entwürfe", "Entw&APw-rfe"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 5.1.3
    ("Tom & Jerry", "Tom &- Jerry"),
])
def test_modified_utf7(text, encoded):
    assert maildir.encode_mutf7(text) == encoded
    assert maildir.decode_mutf7(encoded) == text


@pytest.mark.parametrize("folder", ["Work", "Work/Projects", "v1.2 notes", "Entwürfe", "a\\b"])
def test_folder_directories_round_trip(folder):
    directory = maildir.dir_name(folder)
    assert directory.startswith(".") and "/" not in directory
    assert maildir.folder_name(directory) == folder


def test_folders_and_flags_map_onto_labels_both_ways():
    assert [maildir.folder_label(f) for f in ("", "Sent", "Sent Items", "Trash", "Junk",
                                               "spam", "Drafts", "Archive", "Work")] == [
        "INBOX", "SENT", "SENT", "TRASH", "SPAM", "SPAM", "DRAFT", "", "Work"]
    assert maildir.folder_label(" padded ") is None
    assert maildir.flag_labels("") == {"UNREAD"}
    assert maildir.flag_labels("FS") == {"STARRED"}
    assert maildir.flag_labels("ST") == {"TRASH"}
    for labels in ({"INBOX", "UNREAD"}, {"INBOX", "Work", "STARRED"}, {"SENT"}, {"TRASH"},
                   {"SPAM", "UNREAD"}, {"DRAFT"}, set(), {"Work/Projects"}):
        back = set()
        for folder in maildir.label_folders(labels):
            back |= {maildir.folder_label(folder)} - {""}
        assert back | maildir.flag_labels(maildir.label_flags(labels)) == labels
