"""The notmuch side of the benchmark, run by Debian's python3 (python3-notmuch2):
each query in process, top 50 newest first, timed like ours.

    /usr/bin/python3 notmuch_peer.py MAILDIR QUERIES.json REPEAT  ->  JSON on stdout
"""
import json
import sys
import time

import notmuch2


def main() -> None:
    maildir, queries_file, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
    queries = json.load(open(queries_file))
    db = notmuch2.Database(maildir, mode=notmuch2.Database.MODE.READ_ONLY, config=notmuch2.Database.CONFIG.EMPTY)
    newest = notmuch2.Database.SORT.NEWEST_FIRST

    def top50(query: str) -> list:
        found = []
        for message in db.messages(query, sort=newest):
            found.append(message.messageid)
            if len(found) == 50:
                break
        return found

    results = {}
    for query in queries:
        top50(query)  # warm, as ours is
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            found = top50(query)
            times.append(time.perf_counter() - start)
        results[query] = {"times": times, "hits": len(found)}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
