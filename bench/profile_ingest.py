"""Profiles mailyard's ingest path: py-spy samples `mailyard up` (and any
processes it forks) while smtp-source sends 4 KiB messages over 20 sessions.

    python bench/profile_ingest.py [--messages 3000] [--rate 250]

Two passes under the same load: "gil" samples only the thread holding the
GIL (the Python CPU time, which one interpreter cannot spread over cores);
"threads" samples every busy thread (adding time blocked in fsync and SQLite).
Writes the collapsed stacks (bench/results/profile-PASS.folded, for
flamegraph.pl or speedscope) and, as JSON for the report, the functions that
take the most samples on their own ("self") and with what they call ("total").
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import subprocess
import time
from pathlib import Path

from server import DOMAIN, SENDER, MailyardServer

HERE = Path(__file__).resolve().parent
RCPT = f"rcpt@{DOMAIN}"
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
# Entry points and event-loop or thread-pool plumbing: in nearly every stack,
# so their "total" says nothing about where the cost is.
PLUMBING = ("<frozen", "threading.py", "concurrent/", "asyncio/", "multiprocessing/",
            "mailyard/__main__.py", "mailyard/policy/cli.py", "mailyard/policy/launcher.py",
            "mailyard/policy/mx_workers.py")


def short(frame: str) -> str:
    """`handle_DATA (mailyard/mta/inbound.py:170)` -> `mailyard/mta/inbound.py:handle_DATA`."""
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        path = path.split(marker)[-1]
    return f"{path}:{match['func']}"


def summarize(folded: str, top: int) -> dict:
    """Self and total sample counts per function over the stacks; a function
    is counted once per stack even when it recurses."""
    own, total = collections.Counter(), collections.Counter()
    samples = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [short(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        n = int(count)
        samples += n
        if frames:
            own[frames[-1]] += n
        for name in set(frames):
            if not name.startswith(PLUMBING):
                total[name] += n
    share = lambda c: [(name, n / samples) for name, n in c.most_common(top)]  # noqa: E731
    return {"samples": samples, "self": share(own), "total": share(total)}


def profile(pass_name: str, messages: int, rate: int, folded: Path) -> float:
    """Runs one pass; returns the messages/s smtp-source saw under py-spy."""
    with MailyardServer([RCPT]) as server:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--subprocesses",
                                "--rate", str(rate), "--format", "raw", "--output", str(folded),
                                "--nonblocking", *(["--gil"] if pass_name == "gil" else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1)  # py-spy attaches
            start = time.monotonic()
            subprocess.run(["smtp-source", "-s", "20", "-m", str(messages), "-l", "4096",
                            "-f", SENDER, "-t", RCPT, f"127.0.0.1:{server.smtp[1]}"],
                           check=True, stdout=subprocess.DEVNULL)
            seconds = time.monotonic() - start
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            _, err = spy.communicate(timeout=60)
    if not folded.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.strip()}")
    return messages / seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "profile.json")
    args = parser.parse_args(argv)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"messages": args.messages, "passes": {}}
    for pass_name in ("gil", "threads"):
        folded = args.json.with_name(f"profile-{pass_name}.folded")
        rate = profile(pass_name, args.messages, args.rate, folded)
        found = summarize(folded.read_text(), args.top)
        result["passes"][pass_name] = {"msgs_per_s": rate, "folded": folded.name} | found
        print(f"{pass_name}: {args.messages} messages at {rate:.0f} msgs/s under py-spy,"
              f" {found['samples']} samples")
        for kind in ("self", "total"):
            print(f"  top by {kind}:")
            for name, share in found[kind][:10]:
                print(f"    {share:6.1%}  {name}")
    args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
