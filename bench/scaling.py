"""Scaling: mailyard's ingest rate and memory against concurrent SMTP sessions
and the number of MX processes.

    python bench/scaling.py [--sessions 1,10,100,1000] [--processes 1,2] [--messages 2000]

For each MX process count, one `mailyard up`, then smtp-source with each
session count in turn (4 KiB messages; at least two per session). Reports
messages/s, CPU seconds per 1000 messages and the peak RSS of mailyard's
process tree during the run. 1000 sessions need about 2000 open files on
each side (bench/run raises `ulimit -n`). Process counts other than 1 need
the `mx.processes` key; without it they are skipped and the result says so.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from ingest import cpu_seconds
from server import DOMAIN, SENDER, MailyardServer, PeakRss, rss_bytes

from mailyard.policy import config as mailyard_config

HERE = Path(__file__).resolve().parent
RCPT = f"rcpt@{DOMAIN}"


def has_mx_processes() -> bool:
    return "processes" in mailyard_config.MxConfig.__dataclass_fields__


def run(server: MailyardServer, sessions: int, messages: int) -> dict:
    before = cpu_seconds(server.pid)
    with PeakRss(server.pid) as rss:
        start = time.monotonic()
        subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", "4096",
                        "-f", SENDER, "-t", RCPT, f"127.0.0.1:{server.smtp[1]}"],
                       check=True, stdout=subprocess.DEVNULL)
        seconds = time.monotonic() - start
    return {"sessions": sessions, "messages": messages, "msgs_per_s": messages / seconds,
            "cpu_s_per_1000": (cpu_seconds(server.pid) - before) / messages * 1000,
            "peak_rss_mib": rss.peak / 2**20}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,10,100,1000")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--messages", type=int, default=2000,
                        help="per run; a single session sends a fifth of it")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "scaling.json")
    args = parser.parse_args(argv)
    wanted = [int(p) for p in args.processes.split(",")]
    processes = [p for p in wanted if p == 1 or has_mx_processes()]
    result = {"processes": {}, "skipped_processes": [p for p in wanted if p not in processes]}
    if result["skipped_processes"]:
        print(f"mx.processes is not a config key here: skipping {result['skipped_processes']}")
    for count in processes:
        settings = {"mx": {"processes": count}} if count != 1 else {}
        with MailyardServer([RCPT], settings) as server:
            idle = rss_bytes(server.pid) / 2**20
            run(server, 20, 200)  # warm-up
            rows = []
            for sessions in (int(s) for s in args.sessions.split(",")):
                messages = max(2 * sessions, args.messages // 5 if sessions == 1
                               else args.messages)
                rows.append(run(server, sessions, messages))
                r = rows[-1]
                print(f"{count} MX process(es) {sessions:5} sessions: {r['msgs_per_s']:6.0f}"
                      f" msgs/s  {r['cpu_s_per_1000']:5.2f} CPU s/1000  peak RSS"
                      f" {r['peak_rss_mib']:6.0f} MiB", flush=True)
        result["processes"][count] = {"idle_rss_mib": idle, "runs": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
