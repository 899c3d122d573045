"""Hot reload: SIGHUP (or `mailyard reload`) makes a running mailyard read its
policy files again, like `postfix reload`.

The new files are checked whole first: one error and nothing changes, the
error is logged and the old policy stays. A good policy is copied into the
running Config object in place (section objects too, so every holder of
`config.mx` sees it) between two awaits, so each SMTP command and API request
sees one policy, old or new, and no connection is dropped. What is read only
at start (listen addresses, storage adapters and their servers, processes,
certificates, DKIM keys) keeps its old value until a restart; a reload that
changes it says so in the log.

Running processes are found through pid files in DATA_DIR/run/.
"""
from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

from mailyard.policy.config import LISTEN_KEYS, Config, check
from mailyard.policy.logs import EventLog

# Sections and keys a running process cannot change: they are kept.
RESTART_ONLY = {"data_dir", "services", "storage", "queue", "kafka", "cassandra", "s3",
                "redis", "opensearch", "elasticsearch", "mx.processes", "tls", "dkim", "dns",
                "mailbox.tls", "gateway.tls", "metrics.listen", *LISTEN_KEYS}


def pid_folder(data_path: Path) -> Path:
    return data_path / "run"


class PidFile:
    """DATA_DIR/run/mailyard-PID.pid while this process runs."""

    def __init__(self, data_path: Path):
        self.path = pid_folder(data_path) / f"mailyard-{os.getpid()}.pid"

    def __enter__(self) -> PidFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def signal_running(data_path: Path, signum: int = signal.SIGHUP) -> list[int]:
    """Sends `signum` to every live mailyard of this data directory; removes
    the pid files of processes that are gone. Returns the pids signalled."""
    signalled = []
    for path in sorted(pid_folder(data_path).glob("mailyard-*.pid")):
        try:
            pid = int(path.read_text().strip())
            if not _is_mailyard(pid):
                raise ProcessLookupError(pid)
            os.kill(pid, signum)
        except ProcessLookupError:
            path.unlink(missing_ok=True)  # it died without cleaning up
        except (ValueError, OSError):
            continue
        else:
            signalled.append(pid)
    return signalled


def _is_mailyard(pid: int) -> bool:
    """False for a pid the kernel gave to another program since (Linux's
    /proc tells; elsewhere the pid file is trusted)."""
    try:
        return b"mailyard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True


class Reloader:
    """Rereads `config_file` into the running `config` on request."""

    def __init__(self, config: Config, config_file: str | None, log: EventLog | None = None):
        self.config, self.config_file = config, config_file
        self.log = log or EventLog("master")

    def reload(self) -> bool:
        new, errors = check(self.config_file, self.config.data_dir)
        if errors:
            for error in errors:
                self.log.error("reload_refused", error=str(error))
            self.log.error("reload_refused", errors=len(errors), kept="the running policy")
            return False
        kept = apply(self.config, new)
        if kept:
            self.log.warning("reload_needs_restart", settings=",".join(kept))
        self.log.info("reloaded", file=self.config_file or "(defaults)",
                      domains=len(self.config.domains))
        return True


def apply(current, new, prefix: str = "") -> list[str]:
    """Copies `new` into `current` in place, except RESTART_ONLY settings;
    returns those of them whose value differs."""
    kept = []
    for field in dataclasses.fields(current):
        dotted = f"{prefix}{field.name}"
        old_value, new_value = getattr(current, field.name), getattr(new, field.name)
        if dotted in RESTART_ONLY:
            if old_value != new_value:
                kept.append(dotted)
        elif dataclasses.is_dataclass(old_value):
            kept += apply(old_value, new_value, f"{dotted}.")
        else:
            setattr(current, field.name, new_value)
    return kept
