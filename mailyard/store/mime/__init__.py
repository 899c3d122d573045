"""The stored form of a message, and what is read from it: pure, no I/O.

It lives in store/ because both sides need it: the delivery worker writes
messages in this form and the mailbox service reads them back.

`split`/`join` turn a raw message into a skeleton plus content-addressed part
blobs and back, byte for byte (`skeleton.py`), from one `parse_or_none` walk
that `summarize` can share; `summarize` reads what listings,
threading and search need (`summary.py`); `decode_part` undoes a part's
transfer encoding, the same way for the summary's attachment hashes and for
the bytes the API serves.
"""
from mailyard.store.mime.skeleton import PartInfo, decode_part, join, parse_or_none, split
from mailyard.store.mime.summary import AttachmentInfo, Summary, summarize

__all__ = ["AttachmentInfo", "PartInfo", "Summary", "decode_part", "join", "parse_or_none", "split",
           "summarize"]
