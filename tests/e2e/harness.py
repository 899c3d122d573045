"""Runs mailyard as a user would: real processes, real sockets, the real CLI.

Each service prints `mailyard: NAME listening on HOST:PORT` once it listens;
configs here bind port 0, so the harness reads the port from that line.
"""
from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import grpc

from mailyard.policy.cli import to_toml
from mailyard.proto import mailbox_pb2, mailbox_pb2_grpc

LISTENING = re.compile(r"mailyard: (\w+) listening on (.+):(\d+)")

CONFIG = """\
hostname = "mx.mailyard.test"
[mx]
listen = "127.0.0.1:0"
[mailbox]
listen = "127.0.0.1:0"
[gateway]
listen = "127.0.0.1:0"
[submission]
listen = "127.0.0.1:0"
tls_listen = "127.0.0.1:0"
[queue]
member_ttl = {member_ttl}
poll_interval = 0.1
[log]
level = "info"
[metrics]
listen = "127.0.0.1:0"
[dns]
zone_file = "{zone_file}"
"""


def _merge(base: dict, extra: dict) -> dict:
    for name, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(name), dict):
            _merge(base[name], value)
        else:
            base[name] = value
    return base


def cli(data_dir: Path, config: Path, *args: str, input: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mailyard", "--config", str(config), "--data-dir", str(data_dir),
         *args], input=input, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"mailyard {' '.join(args)} failed: {result.stderr}")
    return result.stdout


class Service:
    """One `mailyard up` or `mailyard run SERVICE` process."""

    def __init__(self, data_dir: Path, config: Path, args: list[str], log_path: Path):
        self.addresses: dict[str, tuple[str, int]] = {}
        self._ready = threading.Condition()
        self.log_path = log_path
        self._log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailyard", "--config", str(config),
             "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            match = LISTENING.search(line)
            if match:
                with self._ready:
                    self.addresses[match.group(1)] = (match.group(2), int(match.group(3)))
                    self._ready.notify_all()

    def wait_listening(self, *names: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self._ready:
            while not all(n in self.addresses for n in names):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mailyard exited {self.proc.returncode}; see {self.log_path}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{names} not listening; see {self.log_path}")
                self._ready.wait(min(left, 0.2))

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Mailyard:
    """A data directory plus the processes running on it."""

    def __init__(self, root: Path, member_ttl: float = 10.0, settings: dict | None = None,
                 zone: str = ""):
        """`settings` are merged into the config ({"greylist": {"enabled": True}});
        `zone` is the BIND zone file every DNS lookup is answered from (tests
        never query the real DNS), empty by default."""
        self.root = root
        self.data_dir = root / "data"
        self.config = root / "mailyard.toml"
        self.zone_file = root / "zone.db"
        self.zone_file.write_text(zone)
        text = CONFIG.format(member_ttl=member_ttl, zone_file=self.zone_file)
        if settings:
            text = to_toml(_merge(tomllib.loads(text), settings))
        self.config.write_text(text)
        self.services: list[Service] = []

    def cli(self, *args: str, input: str | None = None) -> str:
        return cli(self.data_dir, self.config, *args, input=input)

    def start(self, *args: str) -> Service:
        service = Service(self.data_dir, self.config, list(args),
                          self.root / f"service-{len(self.services)}.log")
        self.services.append(service)
        return service

    def add_users(self, *addresses: str) -> None:
        for domain in sorted({a.rpartition("@")[2] for a in addresses}):
            self.cli("domain", "add", domain)
        for address in addresses:
            self.cli("user", "add", address, input="correct horse battery staple\n")

    def token(self, address: str, ttl: int = 3600) -> str:
        return self.cli("token", "issue", address, "--ttl", str(ttl)).strip()

    def stop_all(self) -> None:
        for service in self.services:
            service.stop()


def wire_form(message: bytes) -> bytes:
    """The message with CRLF line ends and a final CRLF, as a mail client sends it
    (smtplib sends bytes as they are, and a bare-LF file is one long line)."""
    fixed = re.sub(rb"\r\n|\n|\r", b"\r\n", message)
    return fixed if fixed.endswith(b"\r\n") else fixed + b"\r\n"


def send(address: tuple[str, int], mail_from: str, rcpts: list[str], message: bytes) -> str:
    """Sends over real SMTP, in wire form, and returns the queue id from the 250 reply."""
    message = wire_form(message)
    with smtplib.SMTP(*address, timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        smtp.mail(mail_from)
        for rcpt in rcpts:
            code, reply = smtp.rcpt(rcpt)
            assert code == 250, (rcpt, code, reply)
        code, reply = smtp.data(message)
        assert code == 250, (code, reply)
        return reply.decode().rsplit(" ", 1)[-1]


class Client:
    """A gRPC mailbox client acting for one user."""

    def __init__(self, address: tuple[str, int], token: str | None):
        self.channel = grpc.insecure_channel(f"{address[0]}:{address[1]}")
        self.stub = mailbox_pb2_grpc.MailboxStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def list(self, label: str = "", page_size: int = 0, page_token: str = ""):
        return self.stub.ListMessages(
            mailbox_pb2.ListMessagesRequest(label=label, page_size=page_size,
                                            page_token=page_token),
            metadata=self.metadata, timeout=10)

    def list_all(self, label: str = "", page_size: int = 100) -> list:
        messages, token = [], ""
        while True:
            page = self.list(label, page_size, token)
            messages.extend(page.messages)
            token = page.next_page_token
            if not token:
                return messages

    def get(self, message_id: str, fmt=mailbox_pb2.FULL):
        return self.stub.GetMessage(mailbox_pb2.GetMessageRequest(id=message_id, format=fmt),
                                    metadata=self.metadata, timeout=10)

    def attachment(self, message_id: str, attachment_id: str) -> bytes:
        chunks = self.stub.GetAttachment(
            mailbox_pb2.GetAttachmentRequest(message_id=message_id, attachment_id=attachment_id),
            metadata=self.metadata, timeout=10)
        return b"".join(c.data for c in chunks)

    def modify(self, ids: list[str], add=(), remove=()):
        return self.stub.ModifyLabels(
            mailbox_pb2.ModifyLabelsRequest(ids=ids, add_labels=list(add),
                                            remove_labels=list(remove)),
            metadata=self.metadata, timeout=10)

    def search(self, query: str, page_size: int = 0, page_token: str = ""):
        return self.stub.Search(
            mailbox_pb2.SearchRequest(query=query, page_size=page_size, page_token=page_token),
            metadata=self.metadata, timeout=10)

    def wait_for(self, count: int, label: str = "", timeout: float = 60) -> list:
        """All messages under `label` once there are at least `count`."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.list_all(label)
            if len(messages) >= count or time.monotonic() > deadline:
                return messages
            time.sleep(0.2)

    def call(self, method: str, request, timeout: float = 10):
        """Any unary RPC by name: client.call("CreateLabel", CreateLabelRequest(name="x"))."""
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


class Rest:
    """An HTTP client of the REST gateway acting for one user (bearer token)."""

    def __init__(self, address: tuple[str, int], token: str | None):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=f"http://{address[0]}:{address[1]}", headers=headers,
                                 timeout=10)

    def request(self, method: str, path: str, **kwargs):
        return self.http.request(method, path, **kwargs)

    def get(self, path: str, **kwargs):
        return self.http.get(path, **kwargs)

    def post(self, path: str, json=None, **kwargs):
        return self.http.post(path, json=json, **kwargs)

    def close(self) -> None:
        self.http.close()


