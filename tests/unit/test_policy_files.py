"""Policy files: the main file plus policy.d/DOMAIN.toml, checked as a whole
(every error, each with file, line and key), shown as one effective config,
and the domain policy's address resolution and limits."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mailyard.mta.recipients import limits_for, resolve, sender_blocked
from mailyard.policy.cli import main, to_toml
from mailyard.policy.config import Config, ConfigError, check, load, to_dict
from mailyard.store.metadata.base import User
from mailyard.store.metadata.sqlite import SqliteMetadataStore

EXAMPLE = """\
catch_all = "postmaster@example.test"
plus_separator = "+"
blocklist = ["spammer@bad.test", "@worse.test", "192.0.2.0/24"]

[aliases]
info = "alice@example.test"
"sales@example.test" = "team"

[lists]
team = ["alice@example.test", "bob@example.test"]

[limits]
max_message_size = 1000000
max_recipients = 3

[user_limits.bob]
max_message_size = 5000
"""


def write(root: Path, main: str, **domains: str) -> Path:
    (root / "policy.d").mkdir(exist_ok=True)
    for name, text in domains.items():
        (root / "policy.d" / f"{name}.toml").write_text(text)
    (root / "mailyard.toml").write_text(main)
    return root / "mailyard.toml"


def test_domain_files_land_in_the_one_model(tmp_path):
    config = load(write(tmp_path, 'hostname = "mx.example.test"\n',
                        **{"example.test": EXAMPLE, "Other.Test": 'catch_all = "a@other.test"\n'}))
    policy = config.domains["example.test"]
    assert policy.aliases == {"info": "alice@example.test", "sales@example.test": "team"}
    assert policy.lists == {"team": ["alice@example.test", "bob@example.test"]}
    assert policy.limits.max_recipients == 3 and policy.user_limits["bob"].max_message_size == 5000
    assert config.domains["other.test"].catch_all == "a@other.test"


def test_every_error_of_every_file_is_reported_with_file_line_and_key(tmp_path):
    path = write(tmp_path, '[mx]\nmax_recipients = 0\nlisen = 1\n'
                           '[domains."b.test"]\ncatch_all = "no body"\n',
                 **{"example.test": '[aliases]\ninfo = "alice@example.test"\n'
                                    '"x@elsewhere.test" = "alice@example.test"\n'
                                    '[limits]\nmax_message_size = -1\n'
                                    '[user_limits.bob]\nmax_recipients = "many"\n'
                                    'require_tls = "yes"\n',
                    "broken.test": "x = [\n",
                    "not a domain": "",
                    "c.test": 'blocklist = ["not an entry"]\n[lists]\nteam = []\n'})
    _, errors = check(path)
    main_file, domains = str(path), tmp_path / "policy.d"
    found = {(e.file, e.line, e.key) for e in errors}
    assert found == {
        (main_file, 2, "mx.max_recipients"),
        (main_file, 3, "mx.lisen"),
        (main_file, 5, "domains.b.test.catch_all"),
        (str(domains / "example.test.toml"), 3, "aliases.x@elsewhere.test"),
        (str(domains / "example.test.toml"), 5, "limits.max_message_size"),
        (str(domains / "example.test.toml"), 7, "user_limits.bob.max_recipients"),
        (str(domains / "example.test.toml"), 8, "user_limits.bob.require_tls"),
        (str(domains / "broken.test.toml"), None, None),
        (str(domains / "not a domain.toml"), None, None),
        (str(domains / "c.test.toml"), 1, "blocklist"),
        (str(domains / "c.test.toml"), 3, "lists.team"),
    }
    with pytest.raises(ConfigError) as first:  # a daemon refuses to start on the first
        load(path)
    assert str(first.value).startswith(f"{main_file}:")


def test_check_command_prints_all_errors_in_file_order(tmp_path, capsys):
    path = write(tmp_path, "[mx]\nmax_recipients = 0\n",
                 **{"example.test": "[limits]\nmax_recipients = -2\n"})
    assert main(["--config", str(path), "check"]) == 78
    err = capsys.readouterr().err.splitlines()
    assert err == [f"mailyard: {path}:2: mx.max_recipients: must be greater than 0",
                   f"mailyard: {tmp_path / 'policy.d' / 'example.test.toml'}:2: "
                   f"limits.max_recipients: must be 0 (the [mx] value) or more",
                   "mailyard: 2 errors"]
    (tmp_path / "policy.d" / "example.test.toml").write_text(EXAMPLE)
    path.write_text("")
    assert main(["--config", str(path), "check"]) == 0
    assert "configuration OK (1 domain policies)" in capsys.readouterr().out


def test_config_show_prints_the_domain_files_and_loads_back_the_same(tmp_path, capsys):
    path = write(tmp_path, 'hostname = "mx.example.test"\n', **{"example.test": EXAMPLE})
    assert main(["--config", str(path), "config", "show"]) == 0
    shown = capsys.readouterr().out
    assert tomllib.loads(shown)["domains"]["example.test"]["lists"]["team"] == [
        "alice@example.test", "bob@example.test"]
    elsewhere = tmp_path / "shown"
    elsewhere.mkdir()
    (elsewhere / "mailyard.toml").write_text(shown)
    assert load(elsewhere / "mailyard.toml") == load(path)


def test_a_domain_in_both_places_is_an_error_and_policy_dir_is_relative(tmp_path):
    (tmp_path / "domains").mkdir()
    (tmp_path / "domains" / "a.test.toml").write_text('catch_all = "x@a.test"\n')
    (tmp_path / "mailyard.toml").write_text(
        'policy_dir = "domains"\n[domains."a.test"]\ncatch_all = "y@a.test"\n')
    _, errors = check(tmp_path / "mailyard.toml")
    assert [e.file for e in errors] == [str(tmp_path / "domains" / "a.test.toml")]
    assert "keep one" in errors[0].reason
    (tmp_path / "mailyard.toml").write_text('policy_dir = "missing"\n')
    _, errors = check(tmp_path / "mailyard.toml")
    assert [(e.line, e.key) for e in errors] == [(1, "policy_dir")]


@pytest.fixture
async def metadata(tmp_path):
    store = SqliteMetadataStore(tmp_path / "metadata.db")
    await store.start()
    await store.add_domain("example.test")
    for user in ("alice", "bob", "postmaster"):
        await store.put_user(User(f"{user}@example.test"))
    yield store
    await store.close()


def config_with(tmp_path, text: str) -> Config:
    return load(write(tmp_path, "", **{"example.test": text}))


async def test_addresses_resolve_to_local_users(tmp_path, metadata):
    config = config_with(tmp_path, EXAMPLE)

    async def users(address):
        return await resolve(config, metadata, address)
    assert await users("alice@example.test") == ["alice@example.test"]
    assert await users("Info@Example.Test") == ["alice@example.test"]          # alias
    assert await users("team@example.test") == ["alice@example.test", "bob@example.test"]
    assert await users("sales@example.test") == ["alice@example.test", "bob@example.test"]
    assert await users("bob+lists@example.test") == ["bob@example.test"]       # plus tag
    assert await users("info+x@example.test") == ["alice@example.test"]        # tag on an alias
    assert await users("nobody@example.test") == ["postmaster@example.test"]   # catch-all
    assert await users("alice@other.test") == []


async def test_no_catch_all_and_no_plus_means_unknown_and_loops_end(tmp_path, metadata):
    config = config_with(tmp_path, 'plus_separator = ""\n[aliases]\nloop = "back@example.test"\n'
                                   'back = "loop@example.test"\n')
    assert await resolve(config, metadata, "alice+tag@example.test") == []
    assert await resolve(config, metadata, "nobody@example.test") == []
    assert await resolve(config, metadata, "loop@example.test") == []
    # Without any domain policy, + still works (the default separator).
    assert await resolve(Config(), metadata, "alice+x@example.test") == ["alice@example.test"]


def test_limits_go_user_then_domain_then_mx(tmp_path):
    config = config_with(tmp_path, EXAMPLE)
    assert limits_for(config, "bob@example.test").max_message_size == 5000
    assert limits_for(config, "bob@example.test").max_recipients == 3
    assert limits_for(config, "alice@example.test").max_message_size == 1000000
    assert limits_for(config, "x@elsewhere.test").max_recipients == config.mx.max_recipients


def test_blocklist_matches_address_domain_and_network(tmp_path):
    policy = config_with(tmp_path, EXAMPLE).domains["example.test"]
    assert sender_blocked(policy, "Spammer@Bad.Test", "203.0.113.1")
    assert sender_blocked(policy, "anyone@worse.test", "203.0.113.1")
    assert sender_blocked(policy, "fine@good.test", "192.0.2.77")
    assert not sender_blocked(policy, "fine@good.test", "203.0.113.1")
    assert not sender_blocked(policy, "", "203.0.113.1")


def test_shown_config_with_domains_is_toml_that_round_trips():
    config = Config()
    text = to_toml(to_dict(config))
    assert "domains" not in tomllib.loads(text) or tomllib.loads(text)["domains"] == {}


def test_reload_applies_policy_in_place_and_keeps_what_needs_a_restart(tmp_path):
    from mailyard.policy.reload import Reloader

    path = write(tmp_path, '[mx]\nmax_recipients = 5\n', **{"example.test": EXAMPLE})
    running = load(path)
    mx_section, before_listen = running.mx, running.mx.listen
    path.write_text('[mx]\nmax_recipients = 7\nlisten = "127.0.0.1:2600"\n'
                    '[storage]\nqueue = "kafka"\n')
    (tmp_path / "policy.d" / "example.test.toml").write_text('catch_all = "bob"\n')
    assert Reloader(running, str(path)).reload()
    assert running.mx is mx_section and mx_section.max_recipients == 7  # holders see it
    assert running.mx.listen == before_listen and running.storage.queue == "sqlite"
    assert running.domains["example.test"].catch_all == "bob"
    assert running.domains["example.test"].aliases == {}
    (tmp_path / "policy.d" / "example.test.toml").write_text('catch_all = 1\n')
    assert not Reloader(running, str(path)).reload()
    assert running.domains["example.test"].catch_all == "bob"


def test_reload_signals_live_mailyard_processes_only(tmp_path):
    import signal
    import subprocess
    import sys

    from mailyard.policy.reload import PidFile, signal_running

    mailyard = subprocess.Popen([sys.executable, "-c", "import time  # mailyard\n"
                                                       "time.sleep(60)"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        with PidFile(tmp_path) as own:
            own.path.write_text(f"{mailyard.pid}\n")  # as if it were that process's file
            for pid in (other.pid, 999_999_999):  # a reused pid, a process gone
                (tmp_path / "run" / f"mailyard-{pid}.pid").write_text(f"{pid}\n")
            assert signal_running(tmp_path, signal.SIGCONT) == [mailyard.pid]
            assert [p.name for p in (tmp_path / "run").iterdir()] == [own.path.name]
        assert signal_running(tmp_path) == []
        assert main(["--data-dir", str(tmp_path), "reload"]) == 1
        assert other.poll() is None and mailyard.poll() is None
    finally:
        for proc in (mailyard, other):
            proc.kill()
            proc.wait()


def test_a_domain_files_dkim_keys_sign_that_domains_mail(tmp_path):
    from mailyard.mta.dkim_sign import generate, open_signer

    key = generate(tmp_path, "example.test", "sel1", "ed25519-sha256")
    config = load(write(tmp_path, "", **{"example.test": (
        f'[[dkim]]\nselector = "sel1"\nprivate_key_file = "{key.path}"\n'
        f'algorithm = "ed25519-sha256"\n')}))
    signer = open_signer(config)
    message = b"From: alice@example.test\r\nTo: x@remote.test\r\nSubject: s\r\n\r\nHi.\r\n"
    signature = signer.signatures(message, "example.test")
    assert b"d=example.test" in signature and b"s=sel1" in signature
    assert signer.signatures(message, "other.test") == b""
