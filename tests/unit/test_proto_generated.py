"""The committed protobuf modules match the .proto files."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_are_current(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (extra 'dev') regenerates the modules")
    shutil.copytree(ROOT / "mailyard" / "proto", tmp_path / "mailyard" / "proto")
    protos = ["mailyard/proto/events.proto", "mailyard/proto/mailbox.proto"]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                    "--pyi_out=.", "--grpc_python_out=.", *protos], cwd=tmp_path, check=True)
    for name in ("events_pb2.py", "mailbox_pb2.py", "mailbox_pb2_grpc.py"):
        fresh = (tmp_path / "mailyard" / "proto" / name).read_text()
        assert fresh == (ROOT / "mailyard" / "proto" / name).read_text(), \
            f"{name} is stale: run mailyard/proto/generate.sh"
