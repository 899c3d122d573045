"""Header decoding, on header sections built from the fuzzer's bytes.

Raw bytes seldom form a valid RFC 2047 word, so the input is read as a recipe
(atheris.FuzzedDataProvider): fields, each a mix of words, separators, 8-bit
bytes and encoded words in odd charsets whose text is the fuzzer's own bytes
(CR and LF included). Every reader of header fields must cope: the summary
(stored and served), the FULL header list of GetMessage, the DMARC author
domain the MX reads, and the search document.
"""
from __future__ import annotations

import base64

import atheris

from mailyard.mta.dmarc import author_domain
from mailyard.searchd.extract import document
from mailyard.store.mailbox.service import header_list
from mailyard.store.metadata.base import MessageRecord
from mailyard.store.mime import summarize
from mailyard.proto import mailbox_pb2
from tests.fuzz.oracles import LINE_BREAKS, sane_summary, storable
from tests.fuzz.seeds import hazard_messages

EMAIL_SEEDS = False
MAX_LEN = 2048

NAMES = [b"From", b"To", b"Cc", b"Bcc", b"Subject", b"Date", b"Message-ID", b"References",
         b"In-Reply-To", b"Reply-To", b"Sender", b"Content-Type", b"Content-Disposition",
         b"Content-Transfer-Encoding", b"MIME-Version", b"X-Anything"]
CHARSETS = [b"utf-8", b"UTF-8", b"iso-8859-1", b"us-ascii", b"utf-7", b"utf-16", b"utf-16-le",
            b"utf-32", b"shift_jis", b"iso-2022-jp", b"gb2312", b"koi8-r", b"unknown-8bit",
            b"x-no-such", b"", b"idna", b"rot13", b"hex", b"base64", b"utf-8*en", b"utf-8\x00"]
PIECES = [b" ", b"\t", b"\r\n ", b"\r\n\t", b"\n ", b"\r", b"\n", b"\r\n", b",", b";", b":",
          b"<", b">", b"@", b'"', b"(", b")", b"\\", b"[", b"]", b".", b"=?", b"?=", b"?q?",
          b"?b?", b"=0D=0A", b"%0D%0A", b"*=", b"''", b"filename=", b"name*0*=", b"boundary=",
          b"charset=", b"aperson@", b"a@b.example", b"multipart/mixed", b"text/plain",
          b"attachment", b"base64", b"<id@host>", b"Tue, 02 Jan 2024 03:04:05 +0100",
          b"\xe9", b"\xff\xfe", b"\x00"]


def encoded_word(fdp: atheris.FuzzedDataProvider) -> bytes:
    charset = fdp.PickValueInList(CHARSETS)
    text = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    if fdp.ConsumeBool():
        return b"=?" + charset + b"?b?" + base64.b64encode(text) + b"?="
    return b"=?" + charset + b"?q?" + b"".join(b"=%02X" % c for c in text) + b"?="


def header_section(fdp: atheris.FuzzedDataProvider) -> bytes:
    fields = []
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        name = fdp.PickValueInList(NAMES) if fdp.ConsumeProbability() < 0.9 else \
            fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
        value = []
        for _ in range(fdp.ConsumeIntInRange(0, 12)):
            kind = fdp.ConsumeIntInRange(0, 3)
            if kind == 0:
                value.append(fdp.PickValueInList(PIECES))
            elif kind == 1:
                value.append(encoded_word(fdp))
            elif kind == 2:
                value.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12)))
            else:
                value.append(b"word")
        fields.append(name + b":" + b"".join(value) + b"\r\n")
    return b"".join(fields) + b"\r\n" + fdp.ConsumeBytes(64)


def check(data: bytes) -> None:
    raw = header_section(atheris.FuzzedDataProvider(data))
    sane_summary(summarize(raw))
    headers = header_list(raw)
    for header in headers:
        assert not LINE_BREAKS.search(header.value), f"GetMessage header {header.value!r}"
    mailbox_pb2.Message(headers=headers).SerializeToString()
    domain = author_domain(raw)
    assert domain is None or (domain and domain.isprintable() and " " not in domain), domain
    record = MessageRecord(user_id="u@example.test", message_id="m", thread_id="m",
                           received_at_ms=0, skeleton_key="k", size=len(raw))
    for field, text in document(record, raw).text.items():
        storable(text, f"search document {field}")


def seeds():
    """Recipes are opaque bytes: random ones of a few sizes, and the hazards'
    headers as plain bytes (they read as some recipe too)."""
    import random

    generator = random.Random(2047)
    for size in (16, 64, 256, 1024, 2048):
        yield bytes(generator.randrange(256) for _ in range(size))
    for message in hazard_messages(small=True):
        yield message[:MAX_LEN]
