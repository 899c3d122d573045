"""Every input a fuzzer ever crashed on, replayed through its target's checks.

Files live in tests/fuzz/regressions/TARGET/, named after what they broke.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS, load

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
CASES = sorted(path for target in TARGETS if (REGRESSIONS / target).is_dir()
               for path in (REGRESSIONS / target).iterdir())


def test_every_regression_belongs_to_a_target():
    assert {p.name for p in REGRESSIONS.iterdir()} <= set(TARGETS)
    assert CASES, "no regression cases found"


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_regression(path):
    load(path.parent.name).check(path.read_bytes())
