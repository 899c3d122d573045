"""How long and from which seed the fuzzers run inside pytest.

MAILYARD_FUZZ_SECONDS is the total fuzzing time of one test run (default 60,
shared equally by the fuzzers; 0 skips them). Under CI=true the seed is fixed,
so a run on correct code never fails by chance; elsewhere each run draws a new
seed and prints it. MAILYARD_FUZZ_SEED replays a given seed.
"""
from __future__ import annotations

import os
import random

CI_SEED = 9_2024
FUZZERS = 6  # five atheris targets and the SMTP fuzzer
FIGURES: list[str] = []  # one line per fuzzer run, printed at the end of the session


def seconds_each() -> int:
    total = float(os.environ.get("MAILYARD_FUZZ_SECONDS", "60"))
    return max(1, round(total / FUZZERS)) if total > 0 else 0


def seed() -> int:
    if os.environ.get("MAILYARD_FUZZ_SEED"):
        return int(os.environ["MAILYARD_FUZZ_SEED"])
    if os.environ.get("CI"):
        return CI_SEED
    return random.SystemRandom().randrange(1, 2 ** 31)
