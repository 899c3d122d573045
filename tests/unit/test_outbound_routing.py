"""Routing, the retry schedule, DSNs and the [outbound] settings, without a daemon."""
from __future__ import annotations

import email
import email.policy

import pytest

from mailyard.mta.dns import NetworkSource, Resolver, ZoneSource
from mailyard.mta.outbound import dsn, outcome
from mailyard.mta.outbound.routing import Route, RouteError, route
from mailyard.mta.outbound.schedule import RetrySchedule, tier_topic
from mailyard.policy.config import Config, ConfigError, OutboundConfig, load, parse_duration
from mailyard.proto import events_pb2

ZONE = """
multi.test.       IN MX 20 c.multi.test.
multi.test.       IN MX 10 a.multi.test.
multi.test.       IN MX 10 b.multi.test.
nomail.test.      IN MX 0 .
plain.test.       IN A 192.0.2.1
"""


def resolver() -> Resolver:
    return Resolver(ZoneSource.from_text(ZONE))


async def test_mx_hosts_in_preference_order_with_ties_shuffled():
    seen = set()
    for _ in range(40):
        found = await route(resolver(), "multi.test", "", 25)
        assert found.hosts[2] == "c.multi.test" and set(found.hosts[:2]) == {
            "a.multi.test", "b.multi.test"}
        seen.add(found.hosts[0])
    assert seen == {"a.multi.test", "b.multi.test"}, "equal preferences are tried in turn"


async def test_a_domain_without_mx_is_its_own_host():
    assert await route(resolver(), "plain.test", "", 2525) == Route(("plain.test",), 2525)


async def test_null_mx_and_missing_domains_fail_at_once():
    with pytest.raises(RouteError) as null:
        await route(resolver(), "nomail.test", "", 25)
    assert (null.value.outcome.action, null.value.outcome.status) == ("failed", "5.1.10")
    with pytest.raises(RouteError) as missing:
        await route(resolver(), "nowhere.test", "", 25)
    assert (missing.value.outcome.action, missing.value.outcome.status) == ("failed", "5.1.2")


async def test_a_dns_failure_defers():
    source = NetworkSource(timeout=1.0)
    # A loopback port where no DNS server listens: a real lookup that fails.
    source._resolver.nameservers = ["127.0.0.1"]
    source._resolver.port = 9
    with pytest.raises(RouteError) as failure:
        await route(Resolver(source, timeout=2.0), "example.com", "", 25)
    assert (failure.value.outcome.action, failure.value.outcome.status) == ("deferred", "4.4.3")


async def test_a_relay_host_takes_everything_and_literals_are_hosts():
    assert await route(resolver(), "multi.test", "smart.example:587", 25) == Route(
        ("smart.example",), 587)
    assert await route(resolver(), "multi.test", "smart.example", 2525) == Route(
        ("smart.example",), 25)
    assert await route(resolver(), "[192.0.2.7]", "", 25) == Route(("192.0.2.7",), 25)


def test_replies_map_onto_outcomes():
    assert outcome.from_reply(250, "2.0.0 Ok", "mx").action == "delivered"
    deferred = outcome.from_reply(451, "4.7.1 Greylisted\n  try later", "mx")
    assert (deferred.action, deferred.status, deferred.diagnostic) == (
        "deferred", "4.7.1", "451 4.7.1 Greylisted try later")
    assert outcome.from_reply(550, "no such user", "mx").status == "5.0.0"
    assert outcome.from_reply(550, "4.1.1 wrong class", "mx").status == "5.0.0"
    assert outcome.from_reply(550, "5.1.1 x", "mx").diagnostic_code == "smtp; 550 5.1.1 x"


def schedule(**settings) -> RetrySchedule:
    return RetrySchedule(OutboundConfig(**settings))


def envelope(**fields) -> events_pb2.OutboundEnvelope:
    return events_pb2.OutboundEnvelope(queue_id="Q1", submitted_at_ms=1_000_000, **fields)


def test_the_default_schedule_is_stalwarts_and_its_last_step_repeats():
    plan = schedule()
    assert [plan.step(n) for n in range(1, 11)] == [
        120, 300, 600, 900, 1800, 3600, 7200, 86400, 86400, 86400]
    assert [tier_topic(t) for t in plan.tiers][:2] == ["mail.outbound.delay.120s",
                                                       "mail.outbound.delay.300s"]
    assert len(plan.tiers) == 8


def test_the_next_attempt_is_capped_at_expiry_and_none_after_it():
    plan = schedule(retry_schedule=["10s"], expire_after=25.0)
    start = 1_000_000
    assert plan.next_attempt(envelope(attempt=1), start) == (start + 10_000, 10.0)
    assert plan.next_attempt(envelope(attempt=2), start + 20_000) == (start + 25_000, 10.0)
    assert plan.next_attempt(envelope(attempt=3), start + 25_000) is None
    assert plan.tier_for(3) == 10.0 and plan.tier_for(60) == 10.0


def test_the_delay_warning_comes_once_after_its_time():
    plan = schedule(delay_warning_after=60.0)
    assert not plan.warn_now(envelope(), 1_000_000 + 59_000)
    assert plan.warn_now(envelope(), 1_000_000 + 60_000)
    assert not plan.warn_now(envelope(delay_warned=True), 1_000_000 + 60_000)
    assert not schedule(delay_warning_after=0.0).warn_now(envelope(), 10**13)


def test_durations_and_outbound_settings_are_checked(tmp_path):
    assert [parse_duration(t) for t in ("90s", "2m", "1h", "1d", "0.5s", "7")] == [
        90, 120, 3600, 86400, 0.5, 7]
    for bad in ("soon", "0s", "-1m", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    path = tmp_path / "mailyard.toml"
    path.write_text('[outbound]\nretry_schedule = ["2m", "often"]\n')
    with pytest.raises(ConfigError, match=r"mailyard.toml:2: outbound.retry_schedule: "
                                          r"not a duration: 'often'"):
        load(path)
    path.write_text('[outbound]\ntls_policy = "dane"\n')
    with pytest.raises(ConfigError, match="outbound.tls_policy: must be one of"):
        load(path)
    path.write_text('[outbound]\nretry_schedule = []\n')
    with pytest.raises(ConfigError, match="needs at least one step"):
        load(path)
    assert Config().outbound.remote_port == 25


ORIGINAL = (b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\n"
            b"Subject: Quarterly report\r\nMessage-ID: <q3@example.test>\r\n\r\nBody.\r\n")


def test_a_failure_report_is_rfc_3464():
    refused = outcome.from_reply(550, "5.1.1 <bob@remote.test>: no such user", "mx.remote.test")
    report = dsn.build(hostname="mail.example.test",
                       envelope=envelope(mail_from="alice@example.test", generation=3),
                       raw=ORIGINAL, outcomes={"bob@remote.test": refused},
                       action=dsn.FAILED, now_ms=1_700_000_000_000)
    assert b"\n" not in report.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    assert parsed["Message-ID"] == "<Q1.failed.3@mail.example.test>"
    assert parsed["To"] == "alice@example.test"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["References"] == "<q3@example.test>"
    assert parsed.get_content_type() == "multipart/report"
    human, status, headers = parsed.get_payload()
    assert "Quarterly report" in human.get_content()
    assert "<bob@remote.test>: host mx.remote.test said: 550 5.1.1" in human.get_content()
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.example.test"
    assert per_message["X-Mailyard-Queue-ID"] == "Q1"
    assert dict(per_recipient.items()) | {"Last-Attempt-Date": ""} == {
        "Final-Recipient": "rfc822; bob@remote.test", "Action": "failed",
        "Status": "5.1.1", "Remote-MTA": "dns; mx.remote.test",
        "Diagnostic-Code": "smtp; 550 5.1.1 <bob@remote.test>: no such user",
        "Last-Attempt-Date": ""}
    assert headers.get_content_type() == "text/rfc822-headers"
    assert headers.get_payload().replace("\r\n", "\n") == ORIGINAL.split(
        b"\r\n\r\n")[0].decode().replace("\r\n", "\n") + "\n"


def test_a_delay_warning_has_one_id_per_message_and_says_until_when():
    first = envelope(mail_from="a@example.test", generation=2)
    later = envelope(mail_from="a@example.test", generation=5)
    assert dsn.report_queue_id(first, dsn.DELAYED) == dsn.report_queue_id(later, dsn.DELAYED)
    assert dsn.report_queue_id(first, dsn.FAILED) != dsn.report_queue_id(later, dsn.FAILED)
    waiting = outcome.deferred("4.4.1", "connect to mx.remote.test[192.0.2.1]:25: refused")
    report = dsn.build(hostname="h.test", envelope=first, raw=ORIGINAL,
                       outcomes={"bob@remote.test": waiting}, action=dsn.DELAYED,
                       now_ms=1_700_000_000_000, retry_until_ms=1_700_400_000_000)
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    (_, recipient) = parsed.get_payload()[1].get_payload()
    assert recipient["Action"] == "delayed" and recipient["Status"] == "4.4.1"
    assert recipient["Diagnostic-Code"].startswith("X-mailyard; connect to")
    assert recipient["Will-Retry-Until"] == "Sun, 19 Nov 2023 13:20:00 GMT"
    assert "Remote-MTA" not in recipient
