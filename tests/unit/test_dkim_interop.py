"""DKIM verification against independent implementations and published vectors.

- opendkim (Debian `opendkim`, test mode `-t`) signs with rsa-sha256 and
  ed25519-sha256; Mail::DKIM (Debian `libmail-dkim-perl`) signs with
  rsa-sha256. opendkim also verifies its own signatures from a
  `TestPublicKeys` file first, so the keys published to mailyard are known good.
- The RFC 6376 / RFC 8463 vectors of the dkimpy source distribution (fetched
  once with pip into tests/.cache, never committed).

Every verification goes through mailyard's DKIM module and resolver, with the
keys published in a BIND zone file.
"""
from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailyard.mta.dkim import verify_dkim
from mailyard.mta.dns import Resolver, ZoneSource

CACHE = Path(__file__).resolve().parents[1] / ".cache"
DKIMPY = "dkimpy==1.1.8"

MESSAGE = (b"From: Alice <alice@sender.example>\r\n"
           b"To: bob@example.test\r\n"
           b"Subject: interop\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <interop-1@sender.example>\r\n"
           b"\r\n"
           b"Hello from an independent signer.\r\n"
           b"Second line.\r\n")


def tampered(message: bytes) -> bytes:
    return message.replace(b"Hello from", b"Jello from")


def txt_record(name: str, text: str) -> str:
    chunks = " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))
    return f"{name}. IN TXT {chunks}\n"


async def results(zone: str, message: bytes) -> list[str]:
    resolver = Resolver(ZoneSource.from_text(zone))
    return [(r.result, r.domain, r.algorithm) for r in await verify_dkim(resolver, message)]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An RSA-2048 and an Ed25519 key, as PEM files, and their DNS records."""
    directory = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    (directory / "rsa.pem").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (directory / "ed.pem").write_bytes(ed_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    rsa_public = base64.b64encode(rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    ed_public = base64.b64encode(ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    records = {"rsa2024._domainkey.sender.example": f"v=DKIM1; k=rsa; p={rsa_public}",
               "ed2024._domainkey.sender.example": f"v=DKIM1; k=ed25519; p={ed_public}"}
    zone = "".join(txt_record(name, text) for name, text in records.items())
    (directory / "keys.txt").write_text("".join(f"{n} {t}\n" for n, t in records.items()))
    return directory, zone


def opendkim(directory: Path, settings: str, message: bytes, *flags: str) -> str:
    conf = directory / "opendkim.conf"
    conf.write_text("Syslog no\nRequireSafeKeys false\n" + settings)
    msg = directory / "message.eml"
    msg.write_bytes(message)
    done = subprocess.run(["opendkim", "-x", str(conf), "-t", str(msg), *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def opendkim_sign(directory: Path, algorithm: str, selector: str, key: str) -> bytes:
    out = opendkim(directory, f"Mode s\nDomain sender.example\nSelector {selector}\n"
                              f"KeyFile {directory / key}\nCanonicalization relaxed/simple\n"
                              f"SignatureAlgorithm {algorithm}\n", MESSAGE)
    start = out.index("DKIM-Signature:")
    lines = [out[start:].split("\n", 1)[0]]
    for line in out[start:].split("\n")[1:]:
        if not line.startswith(("\t", " ")):
            break
        lines.append(line)
    return "\r\n".join(lines).encode() + b"\r\n" + MESSAGE


def opendkim_verdict(directory: Path, message: bytes) -> str:
    out = opendkim(directory, f"Mode v\nTestPublicKeys {directory / 'keys.txt'}\n", message,
                   "-vv")
    return "pass" if "dkim=pass" in out else "fail"


@pytest.mark.parametrize("algorithm, selector, key", [
    ("rsa-sha256", "rsa2024", "rsa.pem"),
    ("ed25519-sha256", "ed2024", "ed.pem"),
])
async def test_opendkim_signatures_verify_and_tampering_fails(keys, algorithm, selector, key):
    directory, zone = keys
    signed = opendkim_sign(directory, algorithm, selector, key)
    assert f"a={algorithm}".encode() in signed
    assert opendkim_verdict(directory, signed) == "pass"  # the reference agrees
    assert await results(zone, signed) == [("pass", "sender.example", algorithm)]
    assert opendkim_verdict(directory, tampered(signed)) == "fail"
    assert await results(zone, tampered(signed)) == [("fail", "sender.example", algorithm)]


MAIL_DKIM_SIGNER = r'''
use strict; use warnings;
use Mail::DKIM::Signer; use Mail::DKIM::TextWrap;
my ($keyfile) = @ARGV;
my $dkim = Mail::DKIM::Signer->new(Algorithm => "rsa-sha256", Method => "relaxed/relaxed",
    Domain => "sender.example", Selector => "rsa2024", KeyFile => $keyfile,
    Headers => "from:to:subject:date:message-id");
binmode STDIN; binmode STDOUT;
while (<STDIN>) { s/\015?\012/\015\012/; $dkim->PRINT($_); }
$dkim->CLOSE;
my $header = $dkim->signature->as_string;
$header =~ s/\015?\012/\015\012/g;
print $header, "\015\012";
'''


@pytest.mark.parametrize("method", ["relaxed/relaxed", "simple/simple"])
async def test_mail_dkim_signatures_verify_and_tampering_fails(keys, method):
    directory, zone = keys
    script = MAIL_DKIM_SIGNER.replace("relaxed/relaxed", method)
    done = subprocess.run(["perl", "-e", script, str(directory / "rsa.pem")], input=MESSAGE,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    signed = done.stdout + MESSAGE
    assert signed.startswith(b"DKIM-Signature:") and f"c={method}".encode() in signed
    assert await results(zone, signed) == [("pass", "sender.example", "rsa-sha256")]
    assert await results(zone, tampered(signed)) == [("fail", "sender.example", "rsa-sha256")]
    reordered = signed.replace(b"Subject: interop", b"Subject: interop!")
    assert (await results(zone, reordered))[0][0] == "fail"


# --- the dkimpy vectors --------------------------------------------------------

def dkimpy_vectors() -> Path:
    """dkim/tests/data of the dkimpy sdist, fetched once into tests/.cache."""
    target = CACHE / "dkimpy-1.1.8-data"
    if (target / "rfc6376.signed.msg").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    download = CACHE / "download"
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                           "--no-binary", ":all:", "-d", str(download), DKIMPY],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"cannot fetch the dkimpy vectors: {done.stderr}"
    (archive,) = download.glob("dkimpy-1.1.8.tar.gz")
    partial = CACHE / "dkimpy-partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/dkim/tests/data/" in m.name and m.isfile()]
        for member in members:
            member.name = Path(member.name).name
            tar.extract(member, partial, filter="data")
    partial.rename(target)
    return target


# RFC 8463 Appendix A.2: the Ed25519 key of the brisbane selector (the RSA key
# of the test selector is data/test.txt in the dkimpy vectors).
RFC8463_BRISBANE = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


@pytest.fixture(scope="module")
def vectors():
    data = dkimpy_vectors()
    zone = (txt_record("brisbane._domainkey.football.example.com", RFC8463_BRISBANE)
            + txt_record("test._domainkey.football.example.com",
                         (data / "test.txt").read_text().strip())
            + txt_record("sed._domainkey.test.ex", (data / "eximtest.dns").read_text().strip()))
    return data, zone


async def test_rfc8463_example_both_signatures_pass(vectors):
    data, zone = vectors
    message = (data / "rfc6376.signed.msg").read_bytes()
    assert await results(zone, message) == [
        ("pass", "football.example.com", "ed25519-sha256"),
        ("pass", "football.example.com", "rsa-sha256"),
    ]
    broken = message.replace(b"We lost the game.", b"We won the game.")
    assert [r[0] for r in await results(zone, broken)] == ["fail", "fail"]


async def test_signature_without_t_is_evaluated_not_crashed(vectors):
    # dkimpy's test_no_t: t= is optional; this vector's b= belongs to another
    # header (it has x= added), so it must come out as a failed signature.
    data, zone = vectors
    message = (data / "rfc6376.signed.no_t.msg").read_bytes()
    assert await results(zone, message) == [("fail", "football.example.com", "rsa-sha256")]


@pytest.mark.parametrize("name", ["rfc6376.signed.rsa.msg", "ed25519test2.msg"])
async def test_dkimpy_signed_vectors_pass(vectors, name):
    data, zone = vectors
    message = (data / name).read_bytes()
    got = await results(zone, message)
    assert got and all(r[0] == "pass" for r in got), got
    # tampering with a signed header breaks every signature
    broken = message.replace(b"Subject:", b"Subject: [changed]", 1) \
        if b"Subject:" in message else message.replace(b"From:", b"From: x", 1)
    assert all(r[0] == "fail" for r in await results(zone, broken))


async def test_missing_key_is_permerror_and_unsigned_is_none(vectors):
    data, _ = vectors
    message = (data / "rfc6376.signed.rsa.msg").read_bytes()
    assert [r[0] for r in await results("", message)] == ["permerror"]
    assert await results("", MESSAGE) == []
