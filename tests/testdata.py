"""Independent test material from ../shared/testdata, beside the project root.

Missing material is an error, not a skip: a test that silently runs on
nothing proves nothing.
"""
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
CPYTHON_EMAIL = SHARED / "email" / "cpython"


def cpython_messages() -> list[Path]:
    """The 48 messages of CPython's email test data."""
    paths = sorted(CPYTHON_EMAIL.glob("msg_*.txt"))
    if len(paths) != 48:
        raise FileNotFoundError(f"expected 48 messages in {CPYTHON_EMAIL}, found {len(paths)}")
    return paths
