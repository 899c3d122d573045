"""The committed protobuf modules match the .proto files."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The generator stamps its own version (and the protobuf runtime it needs) into the
# modules; a newer grpcio-tools on a fresh machine must not read as a stale .proto.
_STAMPS = re.compile(r"(GRPC_GENERATED_VERSION = |# Protobuf Python Version: |"
                     r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)"
                     r"[\s\d.,']*")


def without_stamps(module: str) -> str:
    return _STAMPS.sub(r"\1", module)


def test_generated_modules_are_current(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (extra 'dev') regenerates the modules")
    shutil.copytree(ROOT / "mailyard" / "proto", tmp_path / "mailyard" / "proto")
    protos = ["mailyard/proto/events.proto", "mailyard/proto/mailbox.proto"]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                    "--pyi_out=.", "--grpc_python_out=.", *protos], cwd=tmp_path, check=True)
    for name in ("events_pb2.py", "mailbox_pb2.py", "mailbox_pb2_grpc.py"):
        fresh = (tmp_path / "mailyard" / "proto" / name).read_text()
        committed = (ROOT / "mailyard" / "proto" / name).read_text()
        assert without_stamps(fresh) == without_stamps(committed), \
            f"{name} is stale: run mailyard/proto/generate.sh"
