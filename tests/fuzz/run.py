"""Runs one atheris fuzz target:

    python -m tests.fuzz.run TARGET [--seconds N] [--seed N] [--work DIR] [LIBFUZZER_FLAG ...]

The fuzzer starts from the target's generated seeds, tests/fuzz/corpus/TARGET/,
tests/fuzz/regressions/TARGET/ and (for message targets) the messages of
../shared/testdata/email/. New inputs go to WORK/corpus, a crashing input to
WORK/crash-<sha1>; copy that into tests/fuzz/regressions/TARGET/ once fixed.
Seed 0 means a new random seed each run (libFuzzer's own); the CI passes a
fixed one. The mailyard package and the stdlib parsers it leans on (email,
tomllib) are instrumented for coverage.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
INSTRUMENTED = ["mailyard", "email", "tomllib", "dkim", "tests.fuzz"]


def corpus_dirs(name: str, target, work: Path) -> list[Path]:
    """The writable corpus first (libFuzzer adds new inputs to the first directory)."""
    from tests.testdata import CPYTHON_EMAIL

    writable, generated = work / "corpus", work / "seeds"
    writable.mkdir(parents=True, exist_ok=True)
    generated.mkdir(parents=True, exist_ok=True)
    for data in target.seeds():
        (generated / hashlib.sha1(data).hexdigest()).write_bytes(data)
    dirs = [writable, generated]
    dirs += [d for d in (HERE / "corpus" / name, HERE / "regressions" / name) if d.is_dir()]
    if getattr(target, "EMAIL_SEEDS", False):
        dirs.append(CPYTHON_EMAIL)
    return dirs


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    args, libfuzzer_flags = parser.parse_known_args(argv)

    from tests.fuzz.targets import load

    work = args.work or Path(tempfile.mkdtemp(prefix=f"mailyard-fuzz-{args.target}-"))
    (work / "scratch").mkdir(parents=True, exist_ok=True)
    os.environ["MAILYARD_FUZZ_SCRATCH"] = str(work / "scratch")
    with atheris.instrument_imports(include=INSTRUMENTED):
        target = load(args.target)
    flags = [f"-max_total_time={args.seconds}", f"-seed={args.seed}",
             f"-max_len={getattr(target, 'MAX_LEN', 4096)}",
             "-timeout=30", "-rss_limit_mb=2048", "-print_final_stats=1",
             f"-artifact_prefix={work}/", *libfuzzer_flags]
    dirs = [str(d) for d in corpus_dirs(args.target, target, work)]
    print(f"fuzzing {args.target} for {args.seconds}s, seed {args.seed}, work {work}",
          flush=True)
    atheris.Setup([sys.argv[0], *flags, *dirs], target.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
