"""DMARC, ARC and Authentication-Results as the MX evaluates them, offline.

Messages are signed for real (dkimpy); every record is in a local zone, read
by the same resolver the daemon uses.
"""
from __future__ import annotations

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailyard.mta import senderauth
from mailyard.mta.authresults import remove_forged
from mailyard.mta.dmarc import organizational_domain, parse_record
from mailyard.mta.dns import Resolver, ZoneSource
from mailyard.policy.config import Config

KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                        serialization.NoEncryption())
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)


def zone() -> str:
    import base64
    p = base64.b64encode(PUBLIC).decode()
    key = f'"v=DKIM1; k=rsa; p={p}"'
    return f"""
sel._domainkey.signer.example. IN TXT {key}
sel._domainkey.sender.example. IN TXT {key}
arc._domainkey.forwarder.example. IN TXT {key}
sender.example. IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
news.sender.example. IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.sender.example. IN TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@sender.example"
_dmarc.none.example. IN TXT "v=DMARC1; p=none"
_dmarc.quarantine.example. IN TXT "v=DMARC1; p=quarantine"
_dmarc.reject.example. IN TXT "v=DMARC1; p=reject"
_dmarc.sampled.example. IN TXT "v=DMARC1; p=reject; pct=0"
_dmarc.strict.example. IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"
sel._domainkey.strict.example. IN TXT {key}
strict.example. IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
mail.strict.example. IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
nodmarc.example. IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
"""


def message(author: str, body: str = "Hello.") -> bytes:
    return (f"From: Someone <{author}>\r\nTo: rcpt@example.test\r\nSubject: test\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\n{body}\r\n"
            ).encode()


def signed(raw: bytes, domain: str) -> bytes:
    return dkimpy.sign(raw, b"sel", domain.encode(), PEM,
                       include_headers=[b"from", b"to", b"subject", b"date"]) + raw


async def verdict(raw: bytes, *, mail_from: str, ip: str = "198.51.100.9",
                  config: Config | None = None, sample=lambda: 0.5):
    config = config or Config(hostname="mx.mailyard.test")
    resolver = Resolver(ZoneSource.from_text(zone()))
    return await senderauth.authenticate(config, resolver, raw, client_ip=ip,
                                         helo="client.example.net", mail_from=mail_from,
                                         sample=sample)


async def test_aligned_dkim_passes_dmarc_even_when_spf_fails():
    v = await verdict(signed(message("a@sender.example"), "sender.example"),
                      mail_from="bounce@elsewhere.example")
    assert (v.spf.result, v.dmarc.result, v.action) == ("none", "pass", "accept")
    assert [d.result for d in v.dkim] == ["pass"]


async def test_aligned_spf_passes_dmarc_without_dkim():
    v = await verdict(message("a@sender.example"), mail_from="b@sender.example", ip="192.0.2.5")
    assert (v.spf.result, v.dmarc.result, v.action) == ("pass", "pass", "accept")


@pytest.mark.parametrize("domain, action, policy", [
    ("none.example", "accept", "none"),
    ("quarantine.example", "quarantine", "quarantine"),
    ("reject.example", "reject", "reject"),
])
async def test_failure_under_each_policy(domain, action, policy):
    # signed by an unaligned domain, SPF for another domain: nothing aligns
    v = await verdict(signed(message(f"a@{domain}"), "signer.example"),
                      mail_from="b@sender.example")
    assert v.dmarc.result == "fail" and v.dmarc.policy == policy and v.action == action
    assert [d.result for d in v.dkim] == ["pass"]
    if action == "reject":
        assert v.reply == f"550 5.7.1 Message rejected: DMARC policy of {domain} (RFC 7489)"
    else:
        assert v.reply is None


async def test_relaxed_alignment_accepts_a_subdomain_strict_does_not():
    # relaxed (sender.example): d=sender.example aligns with From news.sender.example
    v = await verdict(signed(message("a@news.sender.example"), "sender.example"),
                      mail_from="")
    assert v.dmarc.result == "pass"
    # strict (strict.example): d=strict.example does not align with mail.strict.example,
    # nor does SPF for mail.strict.example's parent
    v = await verdict(signed(message("a@mail.strict.example"), "strict.example"),
                      mail_from="b@strict.example", ip="192.0.2.5")
    assert (v.spf.result, [d.result for d in v.dkim]) == ("pass", ["pass"])
    assert v.dmarc.result == "fail" and v.action == "reject"
    # exact match under strict passes
    v = await verdict(signed(message("a@strict.example"), "strict.example"), mail_from="")
    assert v.dmarc.result == "pass"


async def test_subdomain_policy_applies_to_subdomains():
    # news.sender.example has no record of its own: sender.example's sp=quarantine applies
    v = await verdict(message("a@news.sender.example"), mail_from="b@elsewhere.example")
    assert (v.dmarc.result, v.dmarc.policy, v.action) == ("fail", "quarantine", "quarantine")
    # the organizational domain itself gets p=reject
    v = await verdict(message("a@sender.example"), mail_from="b@elsewhere.example")
    assert (v.dmarc.policy, v.action) == ("reject", "reject")


async def test_missing_record_is_none_and_accepted():
    v = await verdict(message("a@nodmarc.example"), mail_from="b@nodmarc.example")
    assert (v.spf.result, v.dmarc.result, v.action) == ("fail", "none", "accept")


async def test_pct_sampling_downgrades_the_policy():
    v = await verdict(message("a@sampled.example"), mail_from="b@elsewhere.example")
    assert (v.dmarc.result, v.dmarc.policy, v.dmarc.disposition) == ("fail", "reject",
                                                                     "quarantine")
    assert v.action == "quarantine"


async def test_local_modes_and_per_domain_overrides():
    raw = message("a@reject.example")
    config = Config(hostname="mx.mailyard.test")
    config.dmarc.overrides = {"reject.example": "monitor"}
    assert (await verdict(raw, mail_from="", config=config)).action == "accept"
    config.dmarc.overrides = {"reject.example": "quarantine"}
    assert (await verdict(raw, mail_from="", config=config)).action == "quarantine"
    config = Config(hostname="mx.mailyard.test")
    config.dmarc.mode = "monitor"
    v = await verdict(raw, mail_from="", config=config)
    assert v.dmarc.result == "fail" and v.action == "accept"


def test_record_parsing():
    assert parse_record("v=DMARC1; p=reject; sp=none; adkim=s; pct=50").sp == "none"
    assert parse_record("v=DMARC1; p=reject; pct=50").pct == 50
    assert parse_record("p=reject; v=DMARC1") is None           # v must come first
    assert parse_record("v=DMARC1; p=bogus") is None            # no usable p, no rua
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:x@y.example").p == "none"
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("mail.sender.example") == "sender.example"


async def test_arc_chain_is_verified_and_recorded():
    raw = signed(message("a@sender.example"), "sender.example")
    with_ar = b"Authentication-Results: forwarder.example; dkim=pass header.d=sender.example\r\n" + raw
    seal = b"".join(dkimpy.arc_sign(with_ar, b"arc", b"forwarder.example", PEM,
                                    b"forwarder.example"))
    sealed = seal + with_ar
    v = await verdict(sealed, mail_from="")
    assert (v.arc.result, v.arc.instances) == ("pass", 1)
    assert b"arc=pass" in v.header
    broken = sealed.replace(b"Hello.", b"Hullo.")
    assert (await verdict(broken, mail_from="")).arc.result == "fail"
    assert (await verdict(raw, mail_from="")).arc.result == "none"


async def test_authentication_results_header_and_forged_ones_removed():
    raw = signed(message("a@sender.example"), "sender.example")
    forged = (b"Authentication-Results: mx.mailyard.test;\r\n\tdkim=pass header.d=bank.example\r\n"
              b"Authentication-Results: (comment) MX.MAILYARD.TEST; spf=pass\r\n"
              b"Authentication-Results: other.example; spf=pass\r\n")
    v = await verdict(forged + raw, mail_from="b@sender.example", ip="192.0.2.5")
    assert v.forged_removed == 2
    # the one change: the forged fields are cut, every other byte is as received
    assert v.message == b"Authentication-Results: other.example; spf=pass\r\n" + raw
    header = v.header.decode()
    assert header.startswith("Authentication-Results: mx.mailyard.test;\r\n\t")
    assert "spf=pass smtp.mailfrom=b@sender.example" in header
    assert "dkim=pass header.d=sender.example" in header and "header.s=sel" in header
    assert "dmarc=pass (p=reject dis=none) header.from=sender.example" in header
    assert header.endswith("arc=none\r\n")


def test_remove_forged_leaves_the_body_alone():
    raw = (b"Subject: x\r\nAuthentication-Results: mx.example; none\r\n\r\n"
           b"Authentication-Results: mx.example; none\r\n")
    cleaned, count = remove_forged(raw, "mx.example")
    assert count == 1
    assert cleaned == b"Subject: x\r\n\r\nAuthentication-Results: mx.example; none\r\n"
    assert remove_forged(b"Subject: x\r\n\r\nbody\r\n", "mx.example") == (
        b"Subject: x\r\n\r\nbody\r\n", 0)
