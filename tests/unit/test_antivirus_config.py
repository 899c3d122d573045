"""The [antivirus] section: off by default, its policies and address checked at load."""
from __future__ import annotations

import pytest

from mailyard.policy import config


def load(tmp_path, text: str) -> config.Config:
    path = tmp_path / "mailyard.toml"
    path.write_text(text)
    return config.load(path)


def test_off_by_default_with_the_debian_socket():
    antivirus = config.Config().antivirus
    assert not antivirus.enabled
    assert (antivirus.on_infected, antivirus.on_failure) == ("reject", "tempfail")
    assert config.parse_clamd_address(antivirus.address) == ("/run/clamav/clamd.ctl", None)


def test_a_full_section_loads(tmp_path):
    loaded = load(tmp_path, '[antivirus]\nenabled = true\naddress = "127.0.0.1:3310"\n'
                            'timeout = 5\non_infected = "quarantine"\non_failure = "accept"\n')
    assert loaded.antivirus.enabled and loaded.antivirus.timeout == 5.0
    assert config.parse_clamd_address(loaded.antivirus.address) == ("", ("127.0.0.1", 3310))


@pytest.mark.parametrize("line, key", [
    ('on_infected = "delete"', "antivirus.on_infected"),
    ('on_failure = "pass"', "antivirus.on_failure"),
    ('address = "clamd"', "antivirus.address"),
    ('address = "unix:relative.sock"', "antivirus.address"),
    ("timeout = 0", "antivirus.timeout"),
    ("clean_ttl = -1", "antivirus.clean_ttl"),
])
def test_bad_settings_name_the_key_and_line(tmp_path, line, key):
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, f"[antivirus]\nenabled = true\n{line}\n")
    assert (err.value.key, err.value.line) == (key, 3)


def test_a_bare_path_is_a_unix_socket():
    assert config.parse_clamd_address("/var/run/clamav/clamd.ctl") == (
        "/var/run/clamav/clamd.ctl", None)
