"""What the MX reads from untrusted input and writes back into the message.

The input is `HELO \\0 MAIL-FROM argument \\0 message`. Sender authentication
(SPF, DKIM, ARC, DMARC, against a local zone with real keys) must not raise:
the MX would answer 451 to that message forever. The Authentication-Results
and Received fields built from HELO, MAIL FROM and the message's signatures
must each be one well-formed field (a bare CR in a HELO or a selector must
not start a field of its own), and removing forged Authentication-Results
must leave every other byte as it came.
"""
from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import math
import random
import types

import dkim as dkimpy
from aiosmtpd.smtp import SMTP
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailyard.mta.authresults import remove_forged
from mailyard.mta.dns import Resolver, ZoneSource
from mailyard.mta.inbound import received_header
from mailyard.mta.senderauth import authenticate, authserv_id
from mailyard.policy.config import Config
from tests.fuzz.oracles import one_header_field

EMAIL_SEEDS = False
MAX_LEN = 8192
CONFIG = Config(hostname="mx.mailyard.test")
CLIENT_IPS = ("192.0.2.5", "198.51.100.9", "2001:db8::1")



def _fixed_key() -> rsa.RSAPrivateKey:
    """A 1024-bit RSA key from seeded primes, so that the signed seeds and any
    crash file are the same bytes on every run."""
    generator = random.Random(6376)

    def prime() -> int:
        while True:
            n = generator.getrandbits(512) | (1 << 511) | 1
            if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31)):
                return n

    while True:
        p, q = prime(), prime()
        if math.gcd(65537, (p - 1) * (q - 1)) == 1:
            break
    d = pow(65537, -1, (p - 1) * (q - 1))
    return rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                 rsa.rsa_crt_iqmp(p, q),
                                 rsa.RSAPublicNumbers(65537, p * q)).private_key()


_KEY = _fixed_key()
PEM = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                         serialization.NoEncryption())
_PUBLIC = base64.b64encode(_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
ZONE = f"""
sel._domainkey.sender.example. IN TXT "v=DKIM1; k=rsa; p={_PUBLIC}"
arc._domainkey.forwarder.example. IN TXT "v=DKIM1; k=rsa; p={_PUBLIC}"
sender.example. IN TXT "v=spf1 ip4:192.0.2.0/24 include:inc.sender.example -all"
inc.sender.example. IN TXT "v=spf1 a:mail.sender.example ~all"
mail.sender.example. IN A 192.0.2.7
_dmarc.sender.example. IN TXT "v=DMARC1; p=reject; sp=quarantine; pct=50; rua=mailto:d@sender.example"
"""
# aiosmtpd's own MAIL FROM parser decides what reaches the handler.
_PARSER = types.SimpleNamespace(local_part_limit=0)

_loop: asyncio.AbstractEventLoop | None = None
_resolver: Resolver | None = None


def _split(data: bytes) -> tuple[str, str, bytes]:
    helo, _, rest = data.partition(b"\0")
    argument, _, message = rest.partition(b"\0")
    # aiosmtpd reads a command up to LF and strips trailing CR/LF, so a bare
    # CR may sit inside; arguments are UTF-8 with surrogate escapes.
    helo = helo.split(b"\n")[0].rstrip(b"\r").decode("utf-8", "surrogateescape").strip()
    argument = argument.split(b"\n")[0].rstrip(b"\r").decode("utf-8", "surrogateescape")
    try:
        mail_from = SMTP._getaddr(_PARSER, argument)[0] or ""
    except Exception:  # aiosmtpd answers 500 to such a MAIL command: no transaction
        mail_from = ""
    return helo, mail_from, message


def check(data: bytes) -> None:
    global _loop, _resolver
    if _loop is None:
        _loop = asyncio.new_event_loop()
        _resolver = Resolver(ZoneSource.from_text(ZONE))
    helo, mail_from, message = _split(data)
    client_ip = CLIENT_IPS[len(data) % len(CLIENT_IPS)]
    verdict = _loop.run_until_complete(authenticate(
        CONFIG, _resolver, message, client_ip=client_ip, helo=helo, mail_from=mail_from,
        sample=lambda: 0.5))
    one_header_field(verdict.header, b"Authentication-Results")
    if verdict.forged_removed:
        assert len(verdict.message) < len(message)
        assert remove_forged(verdict.message, authserv_id(CONFIG)) == (verdict.message, 0)
    else:
        assert verdict.message == message
    trace = received_header(helo=helo, client_ip=client_ip, hostname=CONFIG.hostname,
                            queue_id="4XyZ0123456", protocol="ESMTP",
                            rcpts=["alice@example.test"],  # only a user's address gets a 250
                            when=1_717_000_000)
    one_header_field(trace, b"Received")
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        trace + verdict.header + b"\r\n")
    assert parsed.keys() == ["Received", "Authentication-Results"], parsed.keys()


def _message(author: str) -> bytes:
    return (f"From: Someone <{author}>\r\nTo: rcpt@example.test\r\nSubject: test\r\n"
            "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\nHello.\r\n").encode()


def seeds():
    raw = _message("a@sender.example")
    signed = dkimpy.sign(raw, b"sel", b"sender.example", PEM,
                         include_headers=[b"from", b"to", b"subject", b"date"]) + raw
    with_ar = (b"Authentication-Results: forwarder.example; dkim=pass header.d=sender.example\r\n"
               + signed)
    sealed = b"".join(dkimpy.arc_sign(with_ar, b"arc", b"forwarder.example", PEM,
                                      b"forwarder.example", timestamp=1_717_000_000)) + with_ar
    forged = b"Authentication-Results: (c) MX.MAILYARD.TEST; spf=pass\r\n\tdkim=pass\r\n" + signed
    envelopes = [b"client.example.net\0<a@sender.example>\0", b"[192.0.2.5]\0<>\0",
                 b"x\rInjected: yes\0<b@sender.example> SIZE=10\0"]
    for envelope in envelopes:
        for message in (raw, signed, sealed, forged):
            yield envelope + message
