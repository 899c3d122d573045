"""The SMTP client against real receivers on loopback: the TLS policies,
SMTPUTF8, and replies that end a session."""
from __future__ import annotations

import pytest

from mailyard.mta.dns import Resolver, ZoneSource
from mailyard.mta.outbound.client import Message, Settings, open_session
from mailyard.mta.outbound.routing import RouteError, route
from mailyard.mta.tls import self_signed_pair
from mailyard.policy.config import Config
from tests.e2e.receivers import Receiver, free_port

ZONE = """
remote.test.     IN MX 10 mx.remote.test.
mx.remote.test.  IN A  127.0.0.2
"""


def settings(policy: str, ca_file: str = "") -> Settings:
    config = Config(hostname="out.mailyard.test")
    config.outbound.tls_policy, config.outbound.tls_ca_file = policy, ca_file
    config.outbound.connect_timeout = config.outbound.command_timeout = 5.0
    return Settings.from_config(config)


async def session_with(port: int, policy: str, ca_file: str = ""):
    resolver = Resolver(ZoneSource.from_text(ZONE))
    return await open_session(resolver, await route(resolver, "remote.test", "", port),
                              settings(policy, ca_file))


async def test_verify_accepts_a_certificate_from_the_configured_ca(tmp_path):
    cert, key = self_signed_pair(tmp_path, "mx.remote.test")
    port = free_port()
    with Receiver("127.0.0.2", port, tls_cert=(cert, key)) as remote:
        session = await session_with(port, "verify", str(cert))
        assert session.tls in ("TLSv1.2", "TLSv1.3")
        results = await session.send(Message("Q", "a@mailyard.test", ["x@remote.test"],
                                             b"Subject: t\r\n\r\nhi\r\n"))
        await session.close()
    assert results["x@remote.test"].action == "delivered"
    assert remote.messages[0].tls


async def test_verify_refuses_an_unknown_certificate_and_encrypt_needs_starttls(tmp_path):
    cert, key = self_signed_pair(tmp_path, "mx.remote.test")
    port = free_port()
    with Receiver("127.0.0.2", port, tls_cert=(cert, key)):
        with pytest.raises(RouteError) as refused:
            await session_with(port, "verify")
    assert (refused.value.outcome.action, refused.value.outcome.status) == ("deferred", "4.7.5")
    assert "certificate verify failed" in refused.value.outcome.diagnostic
    with Receiver("127.0.0.2", port) as plain:
        with pytest.raises(RouteError) as unoffered:
            await session_with(port, "encrypt")
        assert unoffered.value.outcome.status == "4.7.4"
        session = await session_with(port, "may")  # opportunistic: plain text will do
        assert session.tls is None
        await session.close()
    assert plain.connections == 2


async def test_smtputf8_goes_only_where_it_is_offered():
    port = free_port()
    message = Message("Q", "jöran@mailyard.test", ["ünïcode@remote.test"],
                      "Subject: ü\r\n\r\nü\r\n".encode(), smtputf8=True)
    with Receiver("127.0.0.2", port) as remote:
        session = await session_with(port, "none")
        results = await session.send(message)
        await session.close()
    assert results["ünïcode@remote.test"].action == "delivered"
    assert remote.messages[0].mail_from == "jöran@mailyard.test"
    with Receiver("127.0.0.2", port, smtputf8=False):
        session = await session_with(port, "none")
        results = await session.send(message)
        await session.close()
    assert (results["ünïcode@remote.test"].action,
            results["ünïcode@remote.test"].status) == ("failed", "5.6.7")


async def test_a_421_defers_everyone_and_ends_the_session():
    port = free_port()
    answers = lambda rcpt, tries: "421 4.3.2 Shutting down" if rcpt.startswith("b") else None
    with Receiver("127.0.0.2", port, rcpt=answers) as remote:
        session = await session_with(port, "none")
        results = await session.send(Message(
            "Q", "a@mailyard.test", ["a@remote.test", "b@remote.test", "c@remote.test"],
            b"Subject: t\r\n\r\nhi\r\n"))
        assert not session.usable
        await session.close()
    assert {r: o.action for r, o in results.items()} == {
        "a@remote.test": "deferred", "b@remote.test": "deferred", "c@remote.test": "deferred"}
    assert results["c@remote.test"].diagnostic == "421 4.3.2 Shutting down"
    assert remote.messages == []
