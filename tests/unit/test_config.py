"""Configuration: defaults that run on one machine, and errors that say where."""
from __future__ import annotations

import pytest

from mailyard.policy import config
from mailyard.policy.cli import main, to_toml


def write(tmp_path, text: str):
    path = tmp_path / "mailyard.toml"
    path.write_text(text)
    return path


def test_defaults_listen_on_loopback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = config.load()
    assert loaded.mx.listen == "127.0.0.1:2525"
    assert loaded.mailbox.listen == "127.0.0.1:50051"
    assert loaded.data_dir == "mailyard-data"
    assert loaded.mx.max_message_size == 25 * 1024 * 1024


def test_file_in_working_directory_is_picked_up_and_data_dir_option_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, 'hostname = "mx.example.test"\ndata_dir = "/from/file"\n[mx]\nmax_recipients = 7\n')
    loaded = config.load(data_dir="/from/option")
    assert loaded.hostname == "mx.example.test"
    assert loaded.mx.max_recipients == 7
    assert loaded.data_dir == "/from/option"


@pytest.mark.parametrize("text, line, key, reason", [
    ('[mx]\nlisten = "127.0.0.1:2525"\nmax_message_size = "big"\n', 3, "mx.max_message_size",
     "expected an integer"),
    ('hostname = "x"\n\n[mailbox]\nlisen = "127.0.0.1:1"\n', 4, "mailbox.lisen", "unknown setting"),
    ('[queue]\npartitions = 0\n', 2, "queue.partitions", "greater than 0"),
    ('[storage]\nqueue = "rabbitmq"\n', 2, "storage.queue", "must be one of"),
    ('[mx]\nlisten = "nowhere"\n', 2, "mx.listen", "HOST:PORT"),
    ('services = ["mx", "fax"]\n', 1, "services", "unknown service"),
    ('mx = 3\n', 1, "mx", "a table"),
])
def test_invalid_file_names_file_line_and_key(tmp_path, text, line, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert (err.value.file, err.value.line, err.value.key) == (str(path), line, key)
    assert reason in str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: {key}: ")


def test_toml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, '[mx]\nlisten = \n')
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert str(path) in str(err.value) and "line 2" in str(err.value)


def test_cli_refuses_to_start_with_a_bad_file(tmp_path, capsys):
    path = write(tmp_path, '[mx]\nmax_recipients = -1\n')
    assert main(["--config", str(path), "--data-dir", str(tmp_path / "d"), "up"]) == 78
    assert f"{path}:2: mx.max_recipients" in capsys.readouterr().err


def test_config_show_round_trips(tmp_path, capsys):
    path = write(tmp_path, '[mx]\nmax_recipients = 9\n')
    assert main(["--config", str(path), "config", "show"]) == 0
    shown = write(tmp_path, capsys.readouterr().out)
    assert config.load(shown) == config.load(path)
    assert to_toml(config.to_dict(config.Config())).count("[") >= 8
