"""The fuzzers, each for its share of MAILYARD_FUZZ_SECONDS (see budget.py).

A crash fails the test with the traceback and the input that caused it; fix
the code, then keep the input under tests/fuzz/regressions/TARGET/ so that
test_regressions.py replays it from then on.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fuzz import smtp
from tests.fuzz.budget import FIGURES, seconds_each, seed
from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
SECONDS = seconds_each()
pytestmark = pytest.mark.skipif(SECONDS == 0, reason="MAILYARD_FUZZ_SECONDS=0")
STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)


@pytest.mark.parametrize("target", TARGETS)
def test_atheris_target_finds_no_crash(target):
    # Not pytest's tmp_path: other runs rotate it away, and a crash must stay.
    work = Path(tempfile.mkdtemp(prefix=f"mailyard-fuzz-{target}-"))
    run_seed = seed()
    env = dict(os.environ)
    if os.environ.get("CI"):
        env["PYTHONHASHSEED"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, "--seconds", str(SECONDS),
         "--seed", str(run_seed), "--work", str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, errors="replace",
        timeout=SECONDS + 180)
    output = result.stdout + result.stderr
    stats = {name: int(value) for name, value in STAT.findall(output)}
    FIGURES.append(f"{target}: {stats.get('number_of_executed_units', 0)} executions in "
                   f"{SECONDS}s ({stats.get('average_exec_per_sec', 0)}/s), "
                   f"{stats.get('new_units_added', 0)} new inputs, seed {run_seed}")
    if result.returncode != 0:
        found = sorted(p.name for p in work.iterdir() if p.name.startswith(
            ("crash-", "timeout-", "oom-", "slow-unit-")))
        tail = output[output.find("=== Uncaught"):] if "=== Uncaught" in output else output[-4000:]
        pytest.fail(f"fuzz target {target} failed (exit {result.returncode}, seed {run_seed}); "
                    f"inputs in {work}: {found}\n{tail[:6000]}")
    shutil.rmtree(work, ignore_errors=True)


def test_smtp_fuzzer_finds_no_crash_and_loses_no_mail(tmp_path):
    run_seed = seed()
    report = smtp.run(tmp_path, SECONDS, run_seed)
    FIGURES.append(smtp.summary(report, run_seed, SECONDS).replace("smtp fuzz", "smtp:"))
    assert report.sessions > 0 and report.accepted, "the fuzzer reached no transaction"
    assert not report.findings, "\n\n".join(report.findings)
