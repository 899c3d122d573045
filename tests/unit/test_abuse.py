"""The abuse checks on their own: each returns the reply a sender would see, or None."""
from __future__ import annotations

import pytest

from mailyard.mta import abuse
from mailyard.mta.dns import Resolver, ZoneSource
from mailyard.policy.config import Config, ConfigError, load
from mailyard.policy.logs import EventLog
from mailyard.store.cache.memory import MemoryCache


def client(ip: str, config: Config, cache=None, zone: str = "") -> abuse.ClientContext:
    return abuse.ClientContext(ip, config, cache or MemoryCache(),
                               Resolver(ZoneSource.from_text(zone)), EventLog("test"))


async def test_message_rate_limit_per_ip_and_trusted_networks_exempt():
    config = Config()
    config.ratelimit.messages = 2
    cache = MemoryCache()
    replies = [await abuse.message_rate_limited(client("192.0.2.1", config, cache))
               for _ in range(3)]
    assert replies[:2] == [None, None]
    assert replies[2] == "450 4.7.1 Too many messages from 192.0.2.1, try again later"
    assert await abuse.message_rate_limited(client("192.0.2.2", config, cache)) is None
    for _ in range(5):  # loopback is trusted by default
        assert await abuse.message_rate_limited(client("127.0.0.1", config, cache)) is None


async def test_dnsbl_ipv4_and_ipv6_names_and_error_codes():
    assert abuse.dnsbl_name("192.0.2.1", "bl.test") == "1.2.0.192.bl.test"
    assert abuse.dnsbl_name("2001:db8::1", "bl.test").startswith("1.0.0.0.")
    config = Config()
    config.dnsbl.zones = ["bl.test"]
    zone = "1.2.0.192.bl.test. IN A 127.0.0.2\n2.2.0.192.bl.test. IN A 127.255.255.254\n"
    assert (await abuse.client_blocklisted(client("192.0.2.1", config, zone=zone))).startswith(
        "554 5.7.1")
    assert await abuse.client_blocklisted(client("192.0.2.2", config, zone=zone)) is None
    assert await abuse.client_blocklisted(client("192.0.2.3", config, zone=zone)) is None


@pytest.mark.parametrize("content, reply", [
    (b"Subject: a\r\n\r\nbody\n.\r\nmore\r\n", "550 5.5.2"),
    (b"Subject: a\r\n\r\nbody\r.\r\nmore\r\n", "550 5.5.2"),
    (b"Subject: a\r\n\r\nbody\n.\nmore\r\n", "550 5.5.2"),
    (b"Subject: a\r\n\r\nbody\r\n.\r\nmore\r\n", None),  # a dot-stuffed lone dot is data
])
async def test_smuggling_is_refused_even_when_bare_newlines_are_allowed(content, reply):
    config = Config()
    config.mx.reject_bare_newlines = False
    got = await abuse.smtp_smuggling(abuse.DataContext(content, config))
    assert (got[:9] if got else None) == reply
    assert await abuse.bare_newline(abuse.DataContext(b"a\nb\r\n", config)) is None
    config.mx.reject_bare_newlines = True
    assert (await abuse.bare_newline(abuse.DataContext(b"a\nb\r\n", config))).startswith(
        "550 5.5.2")


def test_new_settings_are_validated(tmp_path):
    path = tmp_path / "mailyard.toml"
    path.write_text('[dmarc]\nmode = "enforce"\n[dmarc.overrides]\n"a.example" = "bogus"\n')
    with pytest.raises(ConfigError, match="dmarc.overrides.a.example"):
        load(path)
    path.write_text('[mx]\ntrusted_networks = ["not-a-net"]\n')
    with pytest.raises(ConfigError, match="mx.trusted_networks"):
        load(path)
    path.write_text('[greylist]\ndelay = 0\n')
    with pytest.raises(ConfigError, match="greylist.delay"):
        load(path)
    path.write_text('[dmarc.overrides]\n"b.example" = "monitor"\n[tls]\nmin_version = "TLSv1.3"\n')
    config = load(path)
    assert config.dmarc.overrides == {"b.example": "monitor"} and config.tls.min_version == "TLSv1.3"
