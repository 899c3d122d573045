"""The messages of an mbox file or a Maildir, in a fixed order, each with the
labels and received time its container gives it.

Each source can be read again from the start (the importer reads a prefix
twice when it resumes), and yields the same messages in the same order as
long as the files do not change.
"""
from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailyard.store.mailbox.labels import user_label_problem
from mailyard.store.metadata.base import SYSTEM_LABELS
from mailyard.store.transfer import headers, maildir, mbox


class SourceError(Exception):
    """The path, user or label given cannot be imported from or to."""


@dataclass(slots=True)
class Incoming:
    where: str                   # for reports: "message 12 (byte 3456)", "cur/1700.x:2,S"
    raw: bytes
    folder: str                  # identical copies are counted per folder
    labels: set[str]             # every label a new message gets, read state included
    received_at_ms: int | None   # None: read from the message's headers
    problem: str = ""            # what the reader found wrong with the container


def label_name(name: str) -> str:
    """A label given on the command line: a system label in any case, else a user label."""
    if name.upper() in SYSTEM_LABELS:
        return name.upper()
    problem = user_label_problem(name)
    if problem:
        raise SourceError(problem)
    return name


class MboxSource:
    """An mbox file, mapped into memory, its messages in file order."""

    def __init__(self, path: Path, quoting: str = "mboxrd", label: str | None = None) -> None:
        if not path.is_file():
            raise SourceError(f"{path} is not a file")
        self.path, self.quoting = path, quoting
        self.label = label_name(label) if label else None
        # What the checkpoint is kept for: the same file with another label is another import.
        self.key = f"mbox label={self.label or 'INBOX'} quoting={quoting}"
        self._file = path.open("rb")
        try:
            self.data = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            self.data = b""
        self.total = mbox.count(self.data)
        self.warnings: list[str] = []
        self._refused: set[str] = set()

    def messages(self) -> Iterator[Incoming]:
        for entry in mbox.read(self.data, self.quoting):
            state = headers.state_of(entry.raw)
            labels = {self.label or "INBOX"}
            if state.gmail_labels is not None:  # a Google Takeout export
                labels, refused = headers.mailyard_labels(state.gmail_labels)
                labels |= {self.label} if self.label else set()
                self._refuse(refused)
            if not state.seen:
                labels.add("UNREAD")
            if state.starred:
                labels.add("STARRED")
            yield Incoming(
                where=f"message {entry.number} (byte {entry.offset})", raw=entry.raw, folder="",
                labels=labels, received_at_ms=mbox.from_line_ms(entry.from_line),
                problem="" if entry.from_line else "text before the first From_ line")

    def _refuse(self, names: list[str]) -> None:
        for name in names:
            if name not in self._refused:
                self._refused.add(name)
                self.warnings.append(f"X-Gmail-Labels {name!r} cannot be a label; "
                                     f"its messages keep their other labels")

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            self.data.close()
        self._file.close()


class MaildirSource:
    """Messages oldest first by file time, the order they arrived in, so a
    reply meets the message it answers already threaded."""
    kind = "maildir"

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise SourceError(f"{root} is not a directory")
        self.path, self.key = root, "maildir"
        self.files = maildir.scan(root)
        if not self.files and not maildir.is_maildir(root):
            raise SourceError(f"{root} is not a Maildir (no cur/ or new/ in it)")
        self.files.sort(key=lambda f: (f.mtime_ns, f.folder, f.path.name))
        self.total = len(self.files)
        self.warnings: list[str] = []
        self._labels: dict[str, str | None] = {}
        for folder in sorted({f.folder for f in self.files}):
            label = self._labels[folder] = maildir.folder_label(folder)
            if label is None:
                self.warnings.append(f"folder {folder!r} cannot be a label "
                                     f"({user_label_problem(folder)}); its messages are "
                                     f"imported without it")

    def messages(self) -> Iterator[Incoming]:
        for file in self.files:
            where = str(file.path.relative_to(self.path))
            try:
                raw = file.path.read_bytes()
            except FileNotFoundError:  # a mail program moved it since the scan
                self.warnings.append(f"{where} disappeared during the import")
                continue
            labels = maildir.flag_labels(file.flags)
            folder_label = self._labels[file.folder]
            if folder_label:
                labels.add(folder_label)
            if "TRASH" in labels:
                labels.discard("INBOX")
            yield Incoming(where=where, raw=raw, folder=file.folder, labels=labels,
                           received_at_ms=file.mtime_ns // 1_000_000)

    def close(self) -> None:
        pass
