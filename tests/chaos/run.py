"""The chaos run from the command line (the full run and its cluster form).

    python3 tests/chaos/run.py --messages 10000
    python3 tests/chaos/run.py --messages 10000 --cluster   # also restarts the servers

--cluster needs the servers of tests/cluster/ running and their addresses in
the environment (`bash tests/cluster/servers/NAME.sh env` prints them); it
restarts Kafka, Cassandra, Redis and the S3 server during the run, so run it
when no one else is using them. Exits 1 unless nothing acknowledged was lost,
nothing was stored twice and every acknowledged message is searchable.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.chaos import driver  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--cluster", action="store_true",
                        help="every port on its distributed adapter; restarts the servers too")
    parser.add_argument("--senders", type=int, default=4, help="SMTP client threads")
    parser.add_argument("--rate", type=float, default=40.0,
                        help="messages per second at most, so the run lasts long enough for "
                             "many kills (0: as fast as the MX takes them)")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(1.0, 4.0),
                        metavar=("MIN", "MAX"), help="seconds between strikes")
    parser.add_argument("--backend-every", type=int, default=6,
                        help="--cluster: every Nth strike restarts a backend server")
    parser.add_argument("--catch-up", type=float, default=900.0,
                        help="seconds to wait for delivery and indexing after the load")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--dir", type=Path, help="where the data and logs go (kept)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="mailyard-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    settings, prepare, backends = None, None, ()
    if args.cluster:
        if not os.environ.get("MAILYARD_KAFKA"):
            sys.exit("--cluster: MAILYARD_KAFKA etc. are not set; eval the servers' `env` first")
        settings, prepare = driver.cluster_options(f"mailyard_chaos_{uuid.uuid4().hex[:8]}")
        backends = driver.BACKENDS
    figures = driver.run(root, args.messages, settings, args.seed, args.senders, args.rate,
                         tuple(args.kill_every), backends=backends,
                         backend_every=args.backend_every, catch_up=args.catch_up,
                         prepare=prepare)
    print(figures.summary())
    # On the embedded defaults no service has a backend to lose: none may exit.
    passed = figures.ok() and (args.cluster or not figures.exits)
    print("PASS" if passed else "FAIL", f"(logs in {root})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
