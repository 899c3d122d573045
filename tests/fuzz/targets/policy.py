"""The policy loader on any file.

A file either loads, or is refused with ConfigError naming the file and, for
an error about a key, the key and the line that sets it: nothing else may
escape (a daemon would die with a traceback instead of a clear message). A
loaded config satisfies what validation promises, and `mailyard config show`
prints it as TOML that loads back to the same config.
"""
from __future__ import annotations

from mailyard.policy.cli import to_toml
from mailyard.policy.config import POSITIVE, Config, ConfigError, _get, load, to_dict
from tests.fuzz.targets import scratch

EMAIL_SEEDS = False
MAX_LEN = 4096

_root = scratch("policy")
FILE, SHOWN = _root / "mailyard.toml", _root / "shown.toml"


def check(data: bytes) -> None:
    FILE.write_bytes(data)
    try:
        config = load(FILE)
    except ConfigError as error:
        assert error.file == str(FILE) and str(error).startswith(f"{FILE}"), str(error)
        assert error.reason, str(error)
        if error.key is not None:
            lines = data.decode("utf-8", "replace").split("\n")  # TOML's lines
            assert error.line is not None, f"names {error.key!r} but not its line: {error}"
            assert 1 <= error.line <= len(lines), f"line {error.line} of {len(lines)}: {error}"
        return
    for key in POSITIVE:
        value = _get(config, key)
        assert value > 0, f"{key} = {value!r} was accepted"  # nan too
    for key, value in _settings(to_dict(config)):
        if isinstance(value, int):  # TOML's integers are 64-bit; SQLite's too
            assert -2 ** 63 <= value < 2 ** 63, f"{key} = {value} was accepted"
    SHOWN.write_text(to_toml(to_dict(config)), encoding="utf-8")
    try:
        shown = load(SHOWN)
    except ConfigError as error:
        raise AssertionError(f"`config show` printed a file that does not load: {error}") from None
    assert shown == config, "`config show` printed a different config"


def _settings(values: dict, prefix: str = ""):
    for name, value in values.items():
        if isinstance(value, dict):
            yield from _settings(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def seeds():
    yield to_toml(to_dict(Config())).encode()
    yield ('hostname = "mx.example.test"\nservices = ["mx", "delivery"]\n[mx]\n'
           'listen = "[::1]:2525"\nmax_recipients = 7\ntrusted_networks = ["10.0.0.0/8"]\n'
           '[dmarc]\nmode = "monitor"\n[dmarc.overrides]\n"example.org" = "quarantine"\n').encode()
    yield b'mx.listen = "127.0.0.1:0"\nmailbox = { listen = "127.0.0.1:0" }\n[queue]\npoll_interval = 0.1\n'
    yield b'[mx]\nmax_message_size = "big"\n'
    yield b'hostname = "x"\n\n[mailbox]\nlisen = "127.0.0.1:1"\n'
    yield b'[queue]\npartitions = 0\nretention_hours = nan\n'
    yield b'[storage]\nqueue = "rabbitmq"\n[tls]\ncert_file = "a"\n'
    yield b"[[mx]]\nlisten = 1\n"
    yield b'a = [[[[[[[[1]]]]]]]]\n[ "mx" ]\n"listen" = """x\ny"""\n'
    yield b"[search]\nbatch_size = 1" + b"0" * 40 + b"\ntimeout = inf\n"
    yield b'[dmarc.overrides]\n"\xc3\xa9.example" = "monitor"\n"a\\nb" = "enforce"\n'
