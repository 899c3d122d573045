"""Import and export of a user's mail: mbox files and Maildirs.

    mailyard import mbox|maildir USER PATH
    mailyard export USER --format mbox|maildir [--output PATH] [--label L]

What maps to what:

- mbox: mboxrd quoting written; mboxrd read by default, mboxo on request
  (mbox.py). Its messages go under INBOX (or `--label`); read state from
  Status (R), starred from X-Status (F); Google Takeout's X-Gmail-Labels
  become labels; the received date is the From_ line's, else the topmost
  Received field's, else Date. Export rewrites Status/X-Status only where
  they disagree with the message's state (headers.py).
- Maildir: the top folder is INBOX, `.Sent` SENT, `.Drafts` DRAFT, `.Trash`
  TRASH, `.Junk`/`.Spam` SPAM, `.Archive` no label, any other folder a user
  label; flags S (seen), F (STARRED), D (DRAFT), T (TRASH); the file time is
  the received date (maildir.py).

Importing is resumable and exact: ids are deterministic and a checkpoint in
the data directory records how far a run got (importer.py). Export writes
the stored bytes (exporter.py). Both run in the `mailyard` command's own
process on the configured stores, beside running services.
"""
from __future__ import annotations

from pathlib import Path

from mailyard.policy.config import Config
from mailyard.store.mailbox.inbox_cache import InboxCache
from mailyard.store.transfer.checkpoint import Checkpoint
from mailyard.store.transfer.exporter import ExportReport, export_maildir, export_mbox
from mailyard.store.transfer.importer import ImportReport, Importer
from mailyard.store.transfer.progress import Progress
from mailyard.store.transfer.sources import MaildirSource, MboxSource, SourceError, label_name

FORMATS = ("mbox", "maildir")

__all__ = ["FORMATS", "ExportReport", "ImportReport", "SourceError", "export_mailbox",
           "import_mailbox"]


async def _user(stores, user: str) -> str:
    user_id = user.strip().lower()
    if await (await stores.metadata()).get_user(user_id) is None:
        raise SourceError(f"no such user: {user}")
    return user_id


async def import_mailbox(config: Config, stores, user: str, kind: str, path: Path, *,
                         label: str | None = None, quoting: str = "mboxrd",
                         progress: Progress | None = None) -> ImportReport:
    user_id = await _user(stores, user)
    path = path.resolve()
    if kind == "mbox":
        source = MboxSource(path, quoting, label)
    elif label:
        raise SourceError("--label applies to mbox imports; a Maildir's folders are its labels")
    else:
        source = MaildirSource(path)
    try:
        metadata = await stores.metadata()
        checkpoint = Checkpoint(config.data_path / "imports", user_id, source.key, path)
        importer = Importer(config, metadata, await stores.queue(), user_id, checkpoint,
                            progress)
        report = await importer.run(source)
    finally:
        source.close()
    await InboxCache(await stores.cache(), metadata, config.delivery.inbox_cache_size,
                     config.delivery.inbox_cache_ttl).refresh(user_id)
    return report


async def export_mailbox(config: Config, stores, user: str, kind: str, output: Path | None, *,
                         label: str | None = None,
                         progress: Progress | None = None) -> ExportReport:
    user_id = await _user(stores, user)
    label = label_name(label) if label else None
    metadata, blobs = await stores.metadata(), await stores.blobs()
    if kind == "mbox":
        return await export_mbox(metadata, blobs, user_id, label, output, progress)
    if output is None:
        raise SourceError("a Maildir export needs --output DIR")
    return await export_maildir(metadata, blobs, user_id, label, output, progress)
