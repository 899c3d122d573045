"""DKIM signing: keys made by `mailyard dkim keygen`, published as it prints them
in a BIND zone file, signatures checked by dkimpy (through mta/dkim.py and the
zone) and by independent verifiers (Mail::DKIM, opendkim -t)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mailyard.mta.dkim import verify_dkim
from mailyard.mta.dkim_sign import Signer, open_signer
from mailyard.mta.dns import Resolver, ZoneSource
from mailyard.policy import config as config_module
from mailyard.policy.config import ConfigError
from tests.dkim_verifiers import mail_dkim, opendkim

MESSAGE = (b"From: Alice <alice@sender.example>\r\n"
           b"To: bob@example.test\r\n"
           b"Subject: signed by mailyard\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Message-ID: <signed-1@sender.example>\r\n"
           b"\r\n"
           b"Hello, with   some  spaces \r\n"
           b"and trailing blank lines.\r\n\r\n\r\n")


def keygen(data_dir: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mailyard", "--data-dir", str(data_dir),
                           "dkim", "keygen", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def published(output: str) -> tuple[str, str]:
    """The zone line and the config lines keygen prints."""
    zone = next(line.split("zone:", 1)[1].strip() for line in output.splitlines()
                if line.strip().startswith("zone:"))
    return zone + "\n", output[output.index("[[dkim.keys]]"):]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An RSA and an Ed25519 key for sender.example, as an operator sets them up."""
    root = tmp_path_factory.mktemp("dkim")
    zone, toml = "", ""
    for args in (["--selector", "r1"], ["--selector", "e1", "--algorithm", "ed25519"]):
        zone_line, config_lines = published(keygen(root / "data", "sender.example", *args))
        zone, toml = zone + zone_line, toml + config_lines
    (root / "zone.db").write_text(zone)
    (root / "mailyard.toml").write_text(toml)
    return root, config_module.load(root / "mailyard.toml")


def signed(config, message: bytes = MESSAGE) -> bytes:
    return open_signer(config).signatures(message, "sender.example") + message


async def dkimpy_results(root: Path, message: bytes) -> list[tuple[str, str]]:
    resolver = Resolver(ZoneSource.from_file(root / "zone.db"))
    return [(r.result, r.algorithm) for r in await verify_dkim(resolver, message)]


def test_keygen_writes_a_private_2048_bit_key_and_refuses_to_overwrite(keys):
    root, config = keys
    rsa_entry = next(k for k in config.dkim.keys if k.algorithm == "rsa-sha256")
    path = Path(rsa_entry.private_key_file)
    assert path.is_absolute() and path.parent == root / "data" / "dkim" / "sender.example"
    assert os.stat(path).st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert key.key_size == 2048
    done = subprocess.run([sys.executable, "-m", "mailyard", "--data-dir", str(root / "data"),
                           "dkim", "keygen", "sender.example", "--selector", "r1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "exists" in done.stderr
    assert serialization.load_pem_private_key(path.read_bytes(), None).key_size == 2048


async def test_both_signatures_verify_everywhere_and_tampering_fails(keys, tmp_path):
    root, config = keys
    message = signed(config)
    assert message.count(b"DKIM-Signature:") == 2
    header = message.split(b"\r\n\r\n", 1)[0]
    assert b"c=relaxed/relaxed" in header and b"a=rsa-sha256" in header \
        and b"a=ed25519-sha256" in header
    assert await dkimpy_results(root, message) == [("pass", "rsa-sha256"),
                                                   ("pass", "ed25519-sha256")]
    assert opendkim(message, root / "zone.db", tmp_path / "od") == ["pass", "pass"]
    assert ("pass", "sender.example", "rsa-sha256") in mail_dkim(message, root / "zone.db")

    tampered = message.replace(b"Hello, with", b"Jello, with")
    assert [r for r, _ in await dkimpy_results(root, tampered)] == ["fail", "fail"]
    assert opendkim(tampered, root / "zone.db", tmp_path / "od") == ["fail", "fail"]
    assert mail_dkim(tampered, root / "zone.db")[0][0] == "fail"


async def test_relaxed_canonicalization_survives_whitespace_changes_in_transit(keys, tmp_path):
    root, config = keys
    message = signed(config)
    # What relaxed/relaxed allows a relay to do: refold and respace headers,
    # change whitespace runs in the body, drop trailing blank lines.
    rewritten = (message.replace(b"Subject: signed by mailyard", b"subject:  signed  by\r\n mailyard")
                 .replace(b"with   some  spaces ", b"with some spaces")
                 .replace(b"lines.\r\n\r\n\r\n", b"lines.\r\n"))
    assert [r for r, _ in await dkimpy_results(root, rewritten)] == ["pass", "pass"]
    assert opendkim(rewritten, root / "zone.db", tmp_path / "od") == ["pass", "pass"]
    assert mail_dkim(rewritten, root / "zone.db")[0][0] == "pass"


async def test_a_second_from_breaks_the_signature(keys):
    root, config = keys
    message = signed(config)
    forged = b"From: mallory@evil.example\r\n" + message
    assert [r for r, _ in await dkimpy_results(root, forged)] == ["fail", "fail"]


def test_domain_without_key_goes_out_unsigned_with_a_warning(keys, caplog):
    _, config = keys
    logger = logging.getLogger("mailyard.submission")
    logger.addHandler(caplog.handler)  # logs.setup may have stopped propagation
    try:
        with caplog.at_level(logging.WARNING, logger="mailyard.submission"):
            assert open_signer(config).signatures(MESSAGE, "other.example", "Q1") == b""
    finally:
        logger.removeHandler(caplog.handler)
    assert any("event=dkim_no_key" in r.getMessage() and "domain=other.example" in r.getMessage()
               and "queue_id=Q1" in r.getMessage() for r in caplog.records)
    assert Signer([]).signatures(MESSAGE, "sender.example") == b""


def test_config_show_prints_the_keys_so_that_they_load_back(keys, tmp_path):
    root, config = keys
    done = subprocess.run([sys.executable, "-m", "mailyard", "--config",
                           str(root / "mailyard.toml"), "config", "show"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (tmp_path / "shown.toml").write_text(done.stdout)
    assert config_module.load(tmp_path / "shown.toml").dkim == config.dkim


def test_bad_key_entries_are_configuration_errors(keys, tmp_path):
    root, config = keys
    rsa_entry = next(k for k in config.dkim.keys if k.algorithm == "rsa-sha256")
    cases = [
        (f'[[dkim.keys]]\ndomain = "a.example"\nselector = "s"\n'
         f'private_key_file = "{tmp_path / "missing.pem"}"\n', "dkim.keys[0].private_key_file"),
        (f'[[dkim.keys]]\ndomain = "a.example"\nselector = "s"\n'
         f'private_key_file = "{rsa_entry.private_key_file}"\nalgorithm = "ed25519-sha256"\n',
         "dkim.keys[0].algorithm"),
    ]
    for text, key in cases:
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(ConfigError) as err:
            open_signer(config_module.load(tmp_path / "bad.toml"))
        assert err.value.key == key
    (tmp_path / "bad.toml").write_text('[[dkim.keys]]\ndomain = "a.example"\nselector = "s"\n'
                                       'private_key_file = "/k"\nalgorithm = "rsa-sha1"\n')
    with pytest.raises(ConfigError) as err:
        config_module.load(tmp_path / "bad.toml")
    assert (err.value.key, err.value.line) == ("dkim.keys[0].algorithm", 5)
