"""The atheris fuzz targets. Each module has `check(data)`, which raises on a
finding and is all a regression replay needs, and `seeds()`, generated inputs
the fuzzer starts from (besides tests/fuzz/corpus/NAME/ and, where
`EMAIL_SEEDS` is true, the messages of ../shared/testdata/email/)."""
from __future__ import annotations

import atexit
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

TARGETS = ("mime", "headers", "query", "policy", "mxheaders")


def load(name: str) -> ModuleType:
    if name not in TARGETS:
        raise KeyError(f"no fuzz target {name!r}; known: {', '.join(TARGETS)}")
    return importlib.import_module(f"tests.fuzz.targets.{name}")


def scratch(name: str) -> Path:
    """A directory for a target's files: under the run's work directory when
    tests.fuzz.run set one (libFuzzer ends the process without running atexit
    hooks), else a temporary one removed at exit."""
    root = os.environ.get("MAILYARD_FUZZ_SCRATCH")
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    if root is None:
        atexit.register(shutil.rmtree, path, True)
    return path
