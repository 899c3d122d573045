"""A real ClamAV daemon for tests: its own config, socket and signature file.

There is no internet for freshclam here, so the database is one signature we
write: the EICAR test file's (public, harmless by design). With one signature
clamd starts in well under a second.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
# Split so that this source file itself is not the EICAR file to a scanner.
EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")
SIGNATURE = "Mailyard.Test.EICAR"


def installed() -> bool:
    return os.access(CLAMD, os.X_OK)


class Clamd:
    """clamd in the foreground on a unix socket under `root`, and on a
    loopback TCP port when `tcp` is set."""

    def __init__(self, root: Path, tcp: bool = False):
        self.root = root
        self.socket = root / "clamd.sock"
        self.port = _free_port() if tcp else None
        self.log = root / "clamd.log"
        self.process: subprocess.Popen | None = None
        database = root / "db"
        database.mkdir(parents=True, exist_ok=True)
        # .ndb body signature: name:target type (0: any file):offset (*: anywhere):hex
        (database / "mailyard-test.ndb").write_text(f"{SIGNATURE}:0:*:{EICAR.hex()}\n")
        lines = ["Foreground yes", f"DatabaseDirectory {database}",
                 f"LocalSocket {self.socket}", f"LogFile {self.log}",
                 f"TemporaryDirectory {root}", "MaxThreads 4"]
        if self.port:
            lines += [f"TCPSocket {self.port}", "TCPAddr 127.0.0.1"]
        self.config = root / "clamd.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.port else f"unix:{self.socket}"

    def start(self, timeout: float = 30) -> None:
        self.process = subprocess.Popen([CLAMD, "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._pong():
                return
            time.sleep(0.05)
        tail = self.log.read_text()[-2000:] if self.log.exists() else "(no log)"
        self.stop()
        raise RuntimeError(f"clamd did not start within {timeout}s:\n{tail}")

    def _pong(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(str(self.socket))
                sock.sendall(b"zPING\0")
                return sock.recv(16) == b"PONG\0"
        except OSError:
            return False

    def freeze(self) -> None:
        """Stopped, not gone: connections queue up and no reply ever comes."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
