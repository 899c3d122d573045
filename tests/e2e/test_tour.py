"""The README's tour, run word for word: `mailyard up`, then its shell blocks."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
TOOLS = ("swaks", "grpcurl", "mailyard")


def tour_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_readme_tour_works_as_written(tmp_path):
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"the tour needs {', '.join(missing)} (tests/run installs them)")
    if not (port_free(2525) and port_free(50051)):
        pytest.skip("the tour's default ports 2525/50051 are taken on this machine")
    moved = ""  # defaults of services the tour does not use, when taken here
    if not port_free(8080):
        moved += '[gateway]\nlisten = "127.0.0.1:0"\n'
    if not (port_free(2587) and port_free(2465)):
        moved += '[submission]\nlisten = "127.0.0.1:0"\ntls_listen = "127.0.0.1:0"\n'
    if moved:
        (tmp_path / "mailyard.toml").write_text(moved)
    blocks = tour_blocks()
    assert len(blocks) == 2, "the tour's shell blocks changed; update this test"
    up = subprocess.Popen(["mailyard", "up"], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(up.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not all(any(f"{name} listening" in line for line in seen)
                      for name in ("mx", "mailbox")):
            if up.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mailyard up did not start:\n" + "".join(seen))
            time.sleep(0.1)
        # Both blocks in one shell, so TOKEN and ID carry over as in a terminal,
        # with the second or two a person takes between sending and looking.
        first = blocks[0].replace("\nTOKEN=", "\nsleep 2\nTOKEN=", 1)
        script = "set -euo pipefail\n" + first + blocks[1]
        result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr + result.stdout
        out = result.stdout
        assert "added alice@example.test" in out
        assert "250 2.0.0 Ok: queued as" in out  # swaks shows the conversation
        replies = [json.loads(doc) for doc in _json_documents(out)]
        listing = next((r for r in replies if "messages" in r and "unread_count" in r), None)
        assert listing, out
        assert listing["messages"][0]["subject"] == "hello from the tour"
        assert listing["unread_count"] == "1"
        full = next(r for r in replies if r.get("text_body"))
        assert full["text_body"].strip() == "It works."
        assert any(r.get("raw") for r in replies)
        modified = replies[-1]
        assert "UNREAD" not in modified["messages"][0]["labels"]
    finally:
        up.terminate()
        up.wait(30)
    assert up.returncode == 0


def _json_documents(text: str) -> list[str]:
    """grpcurl prints one pretty JSON document per reply; swaks and the CLI print lines."""
    documents, depth, current = [], 0, []
    for line in text.splitlines():
        if depth == 0 and line.startswith("{"):
            current = []
        if depth > 0 or line.startswith("{"):
            current.append(line)
            depth += line.count("{") - line.count("}")
            if depth == 0:
                documents.append("\n".join(current))
    return documents
