"""Maildir: one file per message, folders as directories, flags in file names.

    root/{cur,new,tmp}                 the top folder: INBOX
    root/.Work/{cur,new,tmp}           Maildir++ subfolder "Work"
    root/.Work.Projects/...            "Work/Projects" (Gmail nests labels with "/")
    root/cur/1700000000.x.host:2,FS    flags after ":2,": S seen, F flagged, T trashed, D draft

Folder names are IMAP names in modified UTF-7 (RFC 3501 5.1.3), as Dovecot
and Courier write them; a "." inside a name, which Maildir++ uses as the
separator, is written `\\2e` (Dovecot's listescape). Mail in a tool-made
layout of plain subdirectories (mbsync's "SubFolders Verbatim") reads too.

How folders and flags map onto labels, both ways, lives here, so the reader
and the writer agree: a message with several folder labels is written into
each of those folders, and reading them back joins the copies into one
message again (the importer gives identical copies the same id).
"""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mailyard.store.mailbox.labels import user_label_problem
from mailyard.store.metadata.base import SYSTEM_LABELS

# Special folders as mail programs name them, by lower-cased name; "" is the
# archive (Gmail's archived mail carries no folder label).
SPECIAL_FOLDERS = {
    "inbox": "INBOX", "sent": "SENT", "sent messages": "SENT", "sent items": "SENT",
    "sent mail": "SENT", "drafts": "DRAFT", "draft": "DRAFT", "trash": "TRASH",
    "deleted messages": "TRASH", "deleted items": "TRASH", "junk": "SPAM", "spam": "SPAM",
    "junk e-mail": "SPAM", "junk mail": "SPAM", "archive": "", "archives": "", "all mail": "",
}
# The folder each system label is written to ("" is the top folder).
EXPORT_FOLDERS = {"INBOX": "", "SENT": "Sent", "DRAFT": "Drafts", "SPAM": "Junk",
                  "TRASH": "Trash"}
ARCHIVE = "Archive"  # mail with no folder label at all

_INFO = re.compile(r"[:;]2,([A-Za-z]*)$")
_ESCAPE = re.compile(r"\\([0-9a-fA-F]{2})")


@dataclass(slots=True)
class MaildirFile:
    path: Path
    folder: str          # decoded folder name, "/" between levels; "" for the top
    flags: str           # the letters after ":2,"
    mtime_ns: int


# --- folder names ---------------------------------------------------------

def folder_label(folder: str) -> str | None:
    """The label a folder gives its messages: a system label, a user label,
    "" for the archive; None when the name cannot be a label."""
    if folder == "":
        return "INBOX"
    special = SPECIAL_FOLDERS.get(folder.lower())
    if special is not None:
        return special
    if folder.upper() in SYSTEM_LABELS:
        return folder.upper()
    return None if user_label_problem(folder) else folder


def label_folders(labels: set[str]) -> list[str]:
    """The folders a message with these labels is written to: one per folder
    label (STARRED and UNREAD are flags), the archive when there is none."""
    folders = [EXPORT_FOLDERS[label] for label in EXPORT_FOLDERS if label in labels]
    folders += sorted(label for label in labels if label not in SYSTEM_LABELS)
    return folders or [ARCHIVE]


def dir_name(folder: str) -> str:
    """The Maildir++ directory of a folder ("" is the top, the root itself)."""
    if folder == "":
        return ""
    parts = (part.replace("\\", "\\5c").replace(".", "\\2e") for part in folder.split("/"))
    return "." + ".".join(encode_mutf7(part) for part in parts)


def folder_name(directory: str) -> str:
    """The folder a Maildir++ directory name (".A.B") stands for."""
    parts = directory[1:].split(".")
    return "/".join(_ESCAPE.sub(lambda m: chr(int(m[1], 16)), decode_mutf7(part))
                    for part in parts)


def encode_mutf7(text: str) -> str:
    out, run = [], []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in text:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Modified UTF-7 to text; a malformed shift is kept as written."""
    def shifted(match: re.Match[str]) -> str:
        encoded = match[1]
        if not encoded:
            return "&"
        try:
            data = base64.b64decode(encoded.replace(",", "/") + "=" * (-len(encoded) % 4))
            return data.decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            return match[0]
    return re.sub(r"&([A-Za-z0-9+,]*)-", shifted, text)


# --- flags ----------------------------------------------------------------

def flag_labels(flags: str) -> set[str]:
    """The state labels of a file's flags. A trashed message (T) is in TRASH
    and out of INBOX, as the API's trash does it."""
    labels = set()
    if "S" not in flags:
        labels.add("UNREAD")
    if "F" in flags:
        labels.add("STARRED")
    if "D" in flags:
        labels.add("DRAFT")
    if "T" in flags:
        labels.add("TRASH")
    return labels


def label_flags(labels: set[str]) -> str:
    """The flags of a message with these labels, in ASCII order as the
    Maildir spec asks. Trash is a folder when writing, never the T flag."""
    return ("D" if "DRAFT" in labels else "") + ("F" if "STARRED" in labels else "") + (
        "" if "UNREAD" in labels else "S")


# --- reading --------------------------------------------------------------

def scan(root: Path) -> list[MaildirFile]:
    """Every message file under a Maildir, in cur/ and new/ of each folder
    (tmp/ holds deliveries still being written, and dot files are not mail)."""
    files: list[MaildirFile] = []
    for folder, directory in _folders(root):
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(directory / sub))
            except FileNotFoundError:
                continue
            for item in entries:
                if item.name.startswith(".") or not item.is_file():
                    continue
                info = _INFO.search(item.name)
                files.append(MaildirFile(Path(item.path), folder, info[1] if info else "",
                                         item.stat().st_mtime_ns))
    return files


def is_maildir(directory: Path) -> bool:
    return (directory / "cur").is_dir() or (directory / "new").is_dir()


def _folders(root: Path, prefix: str = "") -> list[tuple[str, Path]]:
    found = [(prefix, root)] if is_maildir(root) else []
    for item in sorted(os.scandir(root), key=lambda e: e.name):
        if not item.is_dir() or item.name in ("cur", "new", "tmp"):
            continue
        if item.name.startswith("."):
            if not prefix and item.name not in (".", "..") and is_maildir(Path(item.path)):
                found.append((folder_name(item.name), Path(item.path)))
        else:  # a plain subdirectory layout
            name = f"{prefix}/{decode_mutf7(item.name)}" if prefix else decode_mutf7(item.name)
            found += _folders(Path(item.path), name)
    return found


# --- writing --------------------------------------------------------------

class MaildirWriter:
    """Writes messages into a new Maildir: each file is written in tmp/ and
    renamed into cur/, so a reader never sees half a message."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: set[str] = set()

    def folder(self, folder: str) -> Path:
        directory = self.root / dir_name(folder)
        if folder not in self._made:
            for sub in ("cur", "new", "tmp"):
                (directory / sub).mkdir(parents=True, exist_ok=True)
            if folder:
                (directory / "maildirfolder").touch()  # Maildir++: "this is a subfolder"
            self._made.add(folder)
        return directory

    def write(self, folder: str, name: str, raw: bytes, mtime_ms: int) -> None:
        directory = self.folder(folder)
        tmp = directory / "tmp" / name
        tmp.write_bytes(raw)
        os.utime(tmp, ns=(mtime_ms * 1_000_000, mtime_ms * 1_000_000))
        os.replace(tmp, directory / "cur" / name)
