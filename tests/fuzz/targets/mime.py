"""MIME split and join, summary and text extraction on any bytes.

split/join must give the input back byte for byte whatever it is, and the
walk under them must not raise (split would then keep the message as one
opaque literal: stored, but without parts, attachments or search). What the
summary holds must be storable and servable, and every attachment it lists
must decode, from the stored part, to the size and hash it lists.
"""
from __future__ import annotations

import hashlib

from mailyard.proto.events_pb2 import Skeleton
from mailyard.searchd.extract import document
from mailyard.store.blobs.base import blob_key
from mailyard.store.metadata.base import MessageRecord
from mailyard.store.mime import decode_part, join, split, summarize
from mailyard.store.mime.skeleton import parse
from tests.fuzz.oracles import sane_summary, storable
from tests.fuzz.seeds import hazard_messages, mime_messages

EMAIL_SEEDS = True
MAX_LEN = 16384


def check(data: bytes) -> None:
    skeleton, blobs, infos = split(data, 1)  # every non-empty body cut out
    rebuilt = join(Skeleton.FromString(skeleton.SerializeToString()), blobs)
    assert rebuilt == data, "split/join did not give the message back byte for byte"
    assert all(blob_key(body) == key for key, body in blobs.items())
    parts = {p.path: p for p in infos}
    structure = parse(data)  # split swallows a failing walk; here it must not fail
    for part in structure.parts:
        start, end = part.body_range
        assert 0 <= start <= end <= len(data), f"part {part.path} lies outside the message"
    summary = summarize(data)
    sane_summary(summary)
    for attachment in summary.attachments:
        part = parts[attachment.path]
        body = decode_part(data[slice(*part.body_range)], part.transfer_encoding)
        assert (len(body), hashlib.sha256(body).hexdigest()) == (attachment.size,
                                                                  attachment.sha256)
    record = MessageRecord(user_id="u@example.test", message_id="m", thread_id="m",
                           received_at_ms=0, skeleton_key="k", size=len(data))
    for field, text in document(record, data).text.items():
        storable(text, f"search document {field}")


def seeds():
    yield from mime_messages()
    yield from hazard_messages(small=True)
