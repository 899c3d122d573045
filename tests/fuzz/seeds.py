"""Generated messages: starting points for the fuzzers, and the known Python
3.11 hazards at full size for tests/fuzz/test_hazards.py."""
from __future__ import annotations

import base64

from tests.testdata import cpython_messages

CRLF_SUBJECT = "hello\r\nBcc: everyone@example.net"
CRLF_NAME = "Evil\r\nX-Injected: yes"


def encoded_word(text: str, charset: str = "utf-8", encoding: str = "b") -> str:
    data = text.encode(charset)
    if encoding == "b":
        payload = base64.b64encode(data).decode()
    else:
        payload = "".join(f"={b:02X}" for b in data)
    return f"=?{charset}?{encoding}?{payload}?="


def aperson() -> bytes:
    """An address without a domain: policy.default raises IndexError on it."""
    return (b"From: aperson@\r\nTo: aperson@, bob@example.test\r\nCc: aperson@\r\n"
            b"Subject: no domain\r\nMessage-ID: <aperson@>\r\n\r\nbody\r\n")


def crlf_encoded_words() -> bytes:
    """RFC 2047 words whose text holds CR/LF, in every decoded field."""
    return (f"From: {encoded_word(CRLF_NAME)} <mallory@example.net>\r\n"
            f"To: {encoded_word(CRLF_NAME, encoding='q')} <alice@example.test>\r\n"
            f"Cc: {encoded_word(CRLF_NAME, 'iso-8859-1')} <carol@example.test>\r\n"
            f"Subject: {encoded_word(CRLF_SUBJECT)}\r\n"
            "Message-ID: <crlf.words@example.net>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            "--b\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Disposition: attachment; filename=\"{encoded_word(CRLF_NAME)}\"\r\n\r\n"
            "data\r\n"
            "--b\r\nContent-Type: application/octet-stream\r\n"
            "Content-Disposition: attachment; filename*=utf-8''a%0D%0AX-Injected%3A%20yes\r\n"
            "\r\ndata\r\n--b--\r\n").encode()


def nested_multipart(depth: int) -> bytes:
    """multipart/mixed inside multipart/mixed, `depth` deep, text at the bottom."""
    head = b"Subject: nested %d deep\r\n" % depth
    opening = b"".join(b"Content-Type: multipart/mixed; boundary=\"n%d\"\r\n\r\n--n%d\r\n" % (i, i)
                       for i in range(depth))
    closing = b"".join(b"\r\n--n%d--" % i for i in reversed(range(depth)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nthe bottom" + closing + b"\r\n"


def many_recipients(count: int) -> bytes:
    """A To: with `count` addresses, folded as a mail client would fold it."""
    addresses = ",\r\n ".join(f"user{i}@example.test" for i in range(count))
    return (f"From: sender@example.net\r\nTo: {addresses}\r\nSubject: {count} recipients\r\n"
            "\r\nhi\r\n").encode()


def hazard_messages(small: bool = False):
    yield aperson()
    yield crlf_encoded_words()
    yield nested_multipart(40 if small else 1000)
    yield many_recipients(40 if small else 20000)


def mime_messages():
    """Structures the corpus lacks: charsets that decode to odd text, RFC 2231
    names, nested messages, transfer encodings, bare line ends."""
    yield (b"From: a@example.net\r\nSubject: " + encoded_word("\u00e9t\u00e9", "utf-7").encode()
           + b"\r\nContent-Type: text/plain; charset=utf-7\r\n\r\n+2AA-lone +2D3cAA- surrogates\r\n")
    yield (b"Content-Type: text/html; charset=utf-16\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.b64encode("<p>caf\u00e9</p>".encode("utf-16")) + b"\r\n")
    yield (b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: inner\r\n"
           b"\r\nhi\r\n--d\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y\r\n\r\nbody\r\n--d--\r\n")
    yield (b"Content-Type: multipart/mixed; boundary=z\n\n--z\nContent-Type: application/pdf;"
           b" name*0*=iso-2022-jp''%1B%24B; name*1=x.pdf\nContent-Transfer-Encoding: base64\n\n"
           b"JVBERi0xLjQK\n--z\nContent-Type: text/plain; charset=idna\n"
           b"Content-Transfer-Encoding: quoted-printable\n\n=FF=FE=0D=0A\n--z--\n")
    yield (b"From: \"quoted, name\" <a@b.example>, (comment) c@d.example\r\n"
           b"Date: Tue, 02 Jan 2024 03:04:05 -0000\r\nReferences: <1@x> <2@x>\r\n"
           b"Content-Type: text/plain; charset=\"unknown-8bit\"\r\n\r\n\xe9\xe8\r\n")


def email_corpus() -> list[bytes]:
    return [path.read_bytes() for path in cpython_messages()]
