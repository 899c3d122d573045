"""Writing a user's mail out as an mbox file or a Maildir.

Messages go out oldest first, byte for byte as stored, except that an mbox
message whose Status/X-Status fields disagree with its read and starred
state gets them rewritten (see headers.py); a Maildir carries that state in
file flags instead, and labels as folders (maildir.py).
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mailyard.store.errors import NotFound
from mailyard.store.metadata.base import MetadataStore
from mailyard.store.raw import load_raw
from mailyard.store.transfer import headers, maildir, mbox
from mailyard.store.transfer.progress import Progress
from mailyard.store.transfer.sources import SourceError

PAGE = 1000
READ_AHEAD = 32  # messages whose blobs are being read while earlier ones are written


@dataclass(slots=True)
class Exported:
    message_id: str
    received_at_ms: int
    skeleton_key: str
    labels: set[str]
    sender: str


@dataclass
class ExportReport:
    target: str
    exported: int = 0
    files: int = 0                 # Maildir: one per folder the message is in
    folders: set[str] = field(default_factory=set)
    state_written: int = 0         # mbox: Status/X-Status rewritten to the current state
    missing: list[str] = field(default_factory=list)  # message ids whose blobs are gone

    def summary(self, user_id: str, kind: str) -> str:
        line = f"exported {self.exported} messages of {user_id} to {self.target}"
        if kind == "maildir":
            line += f" ({self.files} files in {len(self.folders)} folders)"
        elif self.state_written:
            line += f" (Status/X-Status updated in {self.state_written})"
        if self.missing:
            line += f"; {len(self.missing)} could not be read (blobs missing)"
        return line


async def records(metadata: MetadataStore, user_id: str, label: str | None) -> list[Exported]:
    """The user's messages (under `label` if given), oldest first."""
    found: list[Exported] = []
    after = None
    while True:
        if label:
            page = await metadata.list_messages(user_id, label, PAGE, after)
        else:
            page = await metadata.list_all_messages(user_id, PAGE, after)
        found += [Exported(r.message_id, r.received_at_ms, r.skeleton_key, set(r.labels),
                           r.sender) for r in page]
        if len(page) < PAGE:
            break
        after = (page[-1].received_at_ms, page[-1].message_id)
    found.reverse()
    return found


async def _with_raw(blobs, messages: list[Exported], report: ExportReport
                    ) -> AsyncIterator[tuple[Exported, bytes]]:
    """Each message with its raw bytes, in order, reading a few ahead."""
    reads: deque = deque()
    for message in messages:
        reads.append((message, asyncio.ensure_future(load_raw(blobs, message.skeleton_key))))
        if len(reads) >= READ_AHEAD:
            item = await _next(reads, report)
            if item:
                yield item
    while reads:
        item = await _next(reads, report)
        if item:
            yield item


async def _next(reads: deque, report: ExportReport) -> tuple[Exported, bytes] | None:
    message, read = reads.popleft()
    try:
        return message, await read
    except NotFound:
        report.missing.append(message.message_id)
        return None


async def export_mbox(metadata, blobs, user_id: str, label: str | None, output: Path | None,
                      progress: Progress | None = None) -> ExportReport:
    """Writes an mboxrd file to `output` (complete or not at all: it is
    written beside it and renamed), or to stdout when None."""
    report = ExportReport(str(output) if output else "stdout")
    messages = await records(metadata, user_id, label)
    if progress:
        progress.start(len(messages))
    if output is None:
        await _write_mbox(sys.stdout.buffer, blobs, messages, report, progress)
        sys.stdout.buffer.flush()
        return report
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    except OSError as exc:
        raise SourceError(f"cannot write {output}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            await _write_mbox(out, blobs, messages, report, progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, output)
    except OSError as exc:
        raise SourceError(f"cannot write {output}: {exc.strerror}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after the rename, unless it failed
    return report


async def _write_mbox(out: BinaryIO, blobs, messages: list[Exported], report: ExportReport,
                      progress: Progress | None) -> None:
    async for message, raw in _with_raw(blobs, messages, report):
        stated = headers.with_state(raw, seen="UNREAD" not in message.labels,
                                    starred="STARRED" in message.labels)
        report.state_written += stated is not raw
        out.write(mbox.entry(message.sender, message.received_at_ms, stated))
        report.exported += 1
        if progress:
            progress.update(report.exported)
    if progress:
        progress.close(report.exported)


async def export_maildir(metadata, blobs, user_id: str, label: str | None, output: Path,
                         progress: Progress | None = None) -> ExportReport:
    """Writes a Maildir++ tree at `output`, which must not exist or be empty."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SourceError(f"{output} exists and is not an empty directory")
    report = ExportReport(str(output))
    messages = await records(metadata, user_id, label)
    if progress:
        progress.start(len(messages))
    writer = maildir.MaildirWriter(output)
    try:
        writer.folder("")  # the top folder always exists, even when INBOX is empty
        async for message, raw in _with_raw(blobs, messages, report):
            name = (f"{message.received_at_ms // 1000}.{message.message_id}.mailyard:2,"
                    f"{maildir.label_flags(message.labels)}")
            for folder in maildir.label_folders(message.labels):
                writer.write(folder, name, raw, message.received_at_ms)
                report.files += 1
                report.folders.add(folder)
            report.exported += 1
            if progress:
                progress.update(report.exported)
    except OSError as exc:
        raise SourceError(f"cannot write {exc.filename or output}: {exc.strerror}") from None
    if progress:
        progress.close(report.exported)
    return report
