"""Runs every benchmark in turn at sizes that fit 20 minutes on 2 cores, then
the report. bench/run installs what is needed and calls this.

    python bench/suite.py [--steps ingest,e2e,read,search,storage,scaling,profile]

A step that fails is recorded with its error and the others still run (the
report names it); the exit status is then 1. Every server a step starts is
stopped by the step itself, also on SIGTERM, which is turned into SystemExit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import e2e_latency
import ingest
import profile_ingest
import read_path
import report
import scaling
import storage

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def search_main(argv: list[str]) -> None:
    # Its own process: run.py reaches notmuch through the system Python.
    subprocess.run([sys.executable, "bench/search/run.py", *argv], check=True, cwd=HERE.parent)


def half_of_measured_max() -> list[str]:
    """The e2e rate: half of mailyard's 4 KiB ingest rate in this run."""
    rate = json.loads((RESULTS / "ingest.json").read_text())["sizes"]["4096"]["mailyard"]
    return ["--rate", f"{rate['msgs_per_s'] / 2:.0f}"]


def one_mx_process_per_core() -> list[str]:
    """Postfix and Haraka (nodes=cpus) use every core; so does mailyard where it can."""
    return ["--mx-processes", str(os.cpu_count())] if scaling.has_mx_processes() else []


# name -> (entry point, fixed arguments, arguments computed when the step starts)
STEPS = {
    "ingest": (ingest.main, ["--messages", "2000", "--runs", "3"], one_mx_process_per_core),
    "e2e": (e2e_latency.main, ["--seconds", "20"], half_of_measured_max),
    "read": (read_path.main, ["--messages", "3000", "--requests", "1000", "--seconds", "5"],
             None),
    "search": (search_main, ["--messages", "20000", "--repeat", "3",
                             "--json", "bench/results/search.json"], None),
    "storage": (storage.main, [], None),
    "scaling": (scaling.main, ["--messages", "2000"], None),
    "profile": (profile_ingest.main, ["--messages", "3000"], None),
}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    postfix = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                             text=True).stdout.strip()
    haraka = json.loads((HERE / "node_modules" / "Haraka" / "package.json").read_text())["version"]
    commit = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Linux {platform.release()},"
            f" Python {platform.python_version()}, Postfix {postfix}, Haraka {haraka},"
            f" mailyard {commit or 'unknown'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default=",".join(STEPS))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    RESULTS.mkdir(exist_ok=True)
    run = {"machine": machine(), "steps": {}}
    wall_start = time.time()
    for name in args.steps.split(","):
        entry, fixed, computed = STEPS[name]
        print(f"\n=== {name} ===", flush=True)
        step_start = time.monotonic()
        info = run["steps"][name] = {"argv": list(fixed)}
        try:
            info["argv"] += computed() if computed else []
            entry(info["argv"])
        except Exception as exc:
            traceback.print_exc()
            info["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        info["seconds"] = time.monotonic() - step_start
        print(f"=== {name}: {info['seconds']:.0f} s", flush=True)
    # bench/run sets BENCH_STARTED, so the installs count in the total too.
    run["seconds"] = time.time() - float(os.environ.get("BENCH_STARTED", wall_start))
    run["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    (RESULTS / "run.json").write_text(json.dumps(run, indent=2))
    report.main()
    failed = [n for n, i in run["steps"].items() if "error" in i]
    print(f"\nbench: {run['seconds'] / 60:.1f} minutes"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
