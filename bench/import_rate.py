"""Import and export rates on a generated mbox, through the real command line.

    python bench/import_rate.py [--messages 100000] [--seed 7] [--keep]

Generates an mbox (bench/search/corpus.py: realistic sizes, threads with
quoting, about one message in eight with attachments, three years of
dates), then on a fresh data directory times
`mailyard import mbox USER FILE`, `mailyard export USER --format mbox` and
`mailyard export USER --format maildir`, each as a separate process (its
start-up included), and checks the round trip: the exported mbox holds the
same messages byte for byte with the same From_ line dates, oldest first
(messages received in the same second, which From_ lines cannot tell apart,
may swap places; its From_ lines name the header sender, not the original
envelope sender). Prints the rates and one JSON line. No service runs
meanwhile, so the index events wait in mail.index for the indexer.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
import mmap
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "search"))

from corpus import Generator  # noqa: E402

from mailyard.store.transfer import mbox  # noqa: E402

USER = "bench@example.test"
SENDER = re.compile(rb"^From: (.*)$", re.MULTILINE)


def generate(path: Path, count: int, seed: int) -> int:
    """Writes the mbox, with LF line ends as mail programs save them; returns its size."""
    with path.open("wb") as out:
        for message in Generator(seed).messages(count):
            raw = message.raw.replace(b"\r\n", b"\n")
            sender = SENDER.search(raw)[1].decode()
            out.write(mbox.entry(sender, message.received_at_ms, raw))
        return out.tell()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mailyard(data_dir: Path, *args: str, stdin: str | None = None) -> tuple[float, float, str]:
    """Runs one command; its wall time, the CPU time of its processes (the
    import's worker processes included), and its last output line."""
    started, cpu = time.monotonic(), children_cpu()
    result = subprocess.run([sys.executable, "-m", "mailyard", "--data-dir", str(data_dir),
                             *args], input=stdin, capture_output=True, text=True)
    seconds, cpu = time.monotonic() - started, children_cpu() - cpu
    if result.returncode != 0:
        raise SystemExit(f"mailyard {' '.join(args)} failed:\n{result.stderr}")
    return seconds, cpu, (result.stdout + result.stderr).strip().splitlines()[-1]


def dated(path: Path) -> list[tuple[int | None, bytes]]:
    """(From_ line date, message) of each message in an mbox, in file order."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return [(mbox.from_line_ms(entry.from_line), entry.raw) for entry in mbox.read(data)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mailyard-import-"))
    try:
        source, data_dir = work / "in.mbox", work / "data"
        started = time.monotonic()
        size = generate(source, args.messages, args.seed)
        print(f"generated {args.messages} messages, {size / 2**20:.0f} MiB "
              f"(mean {size / args.messages / 1024:.1f} KiB) in {time.monotonic() - started:.0f} s")
        mailyard(data_dir, "domain", "add", USER.split("@")[1])
        mailyard(data_dir, "user", "add", USER, stdin="bench password\n")

        import_s, import_cpu, summary = mailyard(data_dir, "import", "mbox", USER, str(source))
        print(summary)
        mbox_s, _, _ = mailyard(data_dir, "export", USER, "--format", "mbox",
                                "--output", str(work / "out.mbox"))
        maildir_s, _, _ = mailyard(data_dir, "export", USER, "--format", "maildir",
                                   "--output", str(work / "out.maildir"))
        files = sum(1 for _ in (work / "out.maildir" / "cur").iterdir())

        before, after = dated(source), dated(work / "out.mbox")
        exact = Counter(before) == Counter(after)
        oldest_first = all(a[0] <= b[0] for a, b in zip(after, after[1:]))
        if not exact or not oldest_first or files != args.messages:
            raise SystemExit(f"round trip failed: exact={exact}, oldest first={oldest_first}, "
                             f"maildir files={files}")
        ties = sum(n - 1 for n in Counter(date for date, _ in before).values())
        figures = {"messages": args.messages, "mbox_mib": round(size / 2**20),
                   "import_s": round(import_s, 1),
                   "import_rate": round(args.messages / import_s),
                   "import_cpu_ms_per_message": round(import_cpu * 1000 / args.messages, 2),
                   "load_average": round(os.getloadavg()[0], 1),
                   "export_mbox_rate": round(args.messages / mbox_s),
                   "export_maildir_rate": round(args.messages / maildir_s),
                   "round_trip_exact": exact}
        print(f"import:         {figures['import_rate']} messages/s "
              f"({import_s:.0f} s, process start included; "
              f"{figures['import_cpu_ms_per_message']} ms CPU per message over all its processes, "
              f"{os.cpu_count()} cores, load average {figures['load_average']})")
        print(f"export mbox:    {figures['export_mbox_rate']} messages/s ({mbox_s:.0f} s)")
        print(f"export maildir: {figures['export_maildir_rate']} messages/s ({maildir_s:.0f} s)")
        print(f"round trip: the exported mbox holds the same messages byte for byte, with "
              f"their dates, oldest first ({ties} received in a second shared with another)")
        print(json.dumps(figures))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
