"""Search benchmark: mailyard's FTS5 index against notmuch on the same corpus.

    python bench/search/run.py --messages 100000 [--repeat 5] [--workers 2] [--no-notmuch]

Prints the indexing rate, the index size per message and p50/p95/p99 latency
of a fixed mix of Gmail queries (top 50, newest first), for both, and the
Bloom filter's share of answers. See README.md beside this file.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import USER, Generator, testdata_messages  # noqa: E402

from mailyard.searchd.bloom import BloomFilters, TermBloom  # noqa: E402
from mailyard.searchd.bulk import Extractor, write_overlapped  # noqa: E402
from mailyard.searchd.index.fts5 import Fts5SearchIndex  # noqa: E402
from mailyard.searchd.query import terms  # noqa: E402
from mailyard.searchd.searcher import IndexSearcher  # noqa: E402
from mailyard.store.cache.memory import MemoryCache  # noqa: E402
from mailyard.store.metadata.base import MessageRecord  # noqa: E402

# (mailyard query, notmuch query). Words are picked by frequency rank in the
# generated vocabulary (rank 0 is "the"); see corpus.py.
def query_mix(words: list[str]) -> list[tuple[str, str]]:
    mid, rare, rarer = words[2000], words[20000], words[50000]
    return [
        ("the", "the"),
        ("time", "time"),
        ("budget", "budget"),
        (mid, mid),
        (rare, rare),
        (rarer, rarer),
        ('"quarterly report"', '"quarterly report"'),
        ('"let me know"', '"let me know"'),
        ('"the people"', '"the people"'),
        ("from:alice", "from:alice"),
        ("from:alice.smith@example.com", "from:alice.smith@example.com"),
        ("to:bench", "to:bench"),
        ("subject:meeting", "subject:meeting"),
        ("subject:report", "subject:report"),
        ("after:2023/01/01 before:2023/02/01", "date:2023-01-01..2023-01-31"),
        ("after:2024/12/01", "date:2024-12-01.."),
        ("has:attachment", "tag:attachment"),
        ("filename:pdf", "attachment:pdf"),
        ("filename:zip", "attachment:zip"),
        ("budget has:attachment", "budget and tag:attachment"),
        ("from:bob meeting", "from:bob and meeting"),
        ("project deadline after:2024/01/01", "project and deadline and date:2024-01-01.."),
        ("invoice OR contract", "invoice or contract"),
        ("meeting -budget", "meeting and not budget"),
        ("is:unread report", "tag:unread and report"),
        ("is:starred", "tag:flagged"),
        ("zzyzxnowhere", "zzyzxnowhere"),
        ('"board meeting" before:2023/01/01', '"board meeting" and date:..2022-12-31'),
        ("{client customer} subject:update", "(client or customer) and subject:update"),
        (f"{rare} OR {words[30000]}", f"{rare} or {words[30000]}"),
    ]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def corpus(count: int, maildir: Path) -> list[tuple[Path, int, bool, bool, str]]:
    """The corpus in MAILDIR: the one written there before for COUNT, or a new one."""
    listing = maildir.parent / f"corpus-{count}.tsv"
    if listing.exists():
        entries = []
        for line in listing.read_text().splitlines():
            name, received, unread, starred, message_id = line.split("\t")
            entries.append((maildir / "cur" / name, int(received), unread == "1",
                            starred == "1", message_id))
        return entries
    shutil.rmtree(maildir, ignore_errors=True)
    (maildir.parent / "notmuch-index.json").unlink(missing_ok=True)
    entries = write_corpus(count, maildir)
    listing.write_text("".join(f"{path.name}\t{received}\t{int(unread)}\t{int(starred)}\t{mid}\n"
                               for path, received, unread, starred, mid in entries))
    return entries


def write_corpus(count: int, maildir: Path) -> list[tuple[Path, int, bool, bool, str]]:
    """The messages as maildir files, with (path, received ms, unread, starred, Message-ID)."""
    (maildir / "cur").mkdir(parents=True)
    (maildir / "new").mkdir()
    (maildir / "tmp").mkdir()
    # Streamed to disk: a million messages do not fit in memory.
    written = []
    messages = itertools.chain(Generator().messages(count), testdata_messages())
    for n, message in enumerate(messages):
        path = maildir / "cur" / f"{n:08d}.bench:2,"
        path.write_bytes(message.raw)
        written.append((path, message.received_at_ms, message.message_id.strip("<>")))
    newest = max(received for _, received, _ in written)
    entries = []
    for n, (path, received, message_id) in enumerate(written):
        unread = (newest - received) / 86_400_000 < 60 or n % 7 == 0
        entries.append((path, received, unread, n % 50 == 0, message_id))
    return entries


def _record(entry, size: int) -> MessageRecord:
    path, received_at_ms, unread, starred, _ = entry
    labels = {"INBOX"} | ({"UNREAD"} if unread else set()) | ({"STARRED"} if starred else set())
    return MessageRecord(user_id=USER, message_id=path.name.split(".")[0], thread_id="",
                         received_at_ms=received_at_ms, skeleton_key="", size=size, labels=labels)


async def index_corpus(entries, db_path: Path, workers: int, bloom: TermBloom) -> float:
    """As `mailyard search reindex` does (searchd/bulk.py), from the maildir
    instead of the stores: extraction on WORKERS processes overlapping the
    FTS5 writes, batches of 1,000, the Bloom filter learning each batch first."""
    index = Fts5SearchIndex(db_path)
    await index.start()
    start = time.perf_counter()

    async def item_batches():
        for first in range(0, len(entries), 1000):
            items = []
            for entry in entries[first:first + 1000]:
                raw = entry[0].read_bytes()
                items.append((_record(entry, len(raw)), raw))
            yield items

    done = 0

    async def learn(batch) -> None:
        nonlocal done
        for doc in batch.documents:  # the corpus has no stored record saying so
            doc.has_attachment = bool(doc.text.get("filename"))
        bloom.update(batch.terms)
        done += len(batch.documents)
        if done % 50_000 < 1000:
            print(f"  indexed {done} ({done / (time.perf_counter() - start):.0f}/s)", flush=True)

    with Extractor(processes=workers) as extractor:
        async with index.rebuilding():  # a whole-index rebuild, as reindex of every user
            await write_overlapped(index, extractor.stream(item_batches()), learn)
    elapsed = time.perf_counter() - start
    await index.close()
    return elapsed


async def time_ours(db_path: Path, bloom: TermBloom, mix, repeat: int):
    index = Fts5SearchIndex(db_path)
    await index.start()
    cache = MemoryCache()
    blooms = BloomFilters(cache)
    await blooms.save(USER, bloom)
    searcher = IndexSearcher(index, blooms)
    results = {}
    for query, _ in mix:
        await searcher.search(USER, query, 50)  # warm
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            found = await searcher.search(USER, query, 50)
            times.append(time.perf_counter() - start)
        results[query] = {"times": times, "hits": len(found.message_ids)}
    await index.close()
    return results, searcher.stats


def notmuch_index(maildir: Path, entries) -> tuple[float | None, Path]:
    """Indexes MAILDIR with notmuch; None for the time when an earlier run did."""
    config = maildir.parent / "notmuch-config"
    if (maildir / ".notmuch").exists() and (maildir.parent / "notmuch-index.json").exists():
        return None, config
    config.write_text(f"[database]\npath={maildir}\n[user]\nname=Bench\nprimary_email={USER}\n"
                      "[new]\ntags=inbox;\n[search]\nexclude_tags=\n"
                      "[maildir]\nsynchronize_flags=false\n")
    env = {**os.environ, "NOTMUCH_CONFIG": str(config)}
    start = time.perf_counter()
    subprocess.run(["notmuch", "new", "--quiet"], env=env, check=True)
    elapsed = time.perf_counter() - start
    # The same read state and stars as ours, so is:unread/is:starred compare.
    tags = []
    for path, _, unread, starred, message_id in entries:
        names = (["+unread"] if unread else []) + (["+flagged"] if starred else [])
        if names and not message_id.startswith("testdata-"):
            tags.append(f"{' '.join(names)} -- id:{message_id}\n")
    subprocess.run(["notmuch", "tag", "--batch"], input="".join(tags), text=True, env=env,
                   check=True)
    return elapsed, config


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summary_line(name: str, results: dict) -> tuple[float, float, float]:
    times = [t * 1000 for r in results.values() for t in r["times"]]
    p50, p95, p99 = (percentile(times, p) for p in (50, 95, 99))
    print(f"{name:10} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms   p99 {p99:7.2f} ms")
    return p50, p95, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes extracting text, as `mailyard search reindex`"
                             " --processes (default: one per core)")
    parser.add_argument("--no-notmuch", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the figures here (for bench/run)")
    parser.add_argument("--work", type=Path,
                        help="work directory, kept: a corpus and notmuch index left there by an"
                             " earlier run of the same size are used again (mailyard's index is"
                             " always rebuilt)")
    args = parser.parse_args()

    if args.work:
        args.keep = True
        args.work.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="mailyard-search-bench-"))
    try:
        print(f"corpus: {args.messages} generated messages + shared testdata, in {work}")
        start = time.perf_counter()
        entries = corpus(args.messages, work / "mail")
        corpus_bytes = sum(e[0].stat().st_size for e in entries)
        print(f"  {len(entries)} messages, {corpus_bytes / len(entries) / 1024:.1f} KiB average,"
              f" written in {time.perf_counter() - start:.0f} s")
        mix = query_mix(Generator().words)

        bloom = TermBloom()
        db_path = work / "search.db"
        for old in work.glob("search.db*"):
            old.unlink()
        elapsed = asyncio.run(index_corpus(entries, db_path, args.workers, bloom))
        with sqlite3.connect(db_path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ours_rate = len(entries) / elapsed
        ours_size = db_path.stat().st_size / len(entries)
        print(f"mailyard: indexed {len(entries)} in {elapsed:.0f} s = {ours_rate:.0f} msgs/s"
              f" ({args.workers} extracting process(es)), index {ours_size / 1024:.2f} KiB/msg,"
              f" Bloom filter {len(bloom.to_bytes()) / 1024:.0f} KiB")
        ours, stats = asyncio.run(time_ours(db_path, bloom, mix, args.repeat))

        peer = None
        if not args.no_notmuch:
            nm_elapsed, nm_config = notmuch_index(work / "mail", entries)
            nm_size = dir_size(work / "mail" / ".notmuch") / len(entries)
            if nm_elapsed is None:
                print("notmuch:  the index an earlier run built here, with its figures")
                nm_elapsed, nm_size = json.loads((work / "notmuch-index.json").read_text())
            (work / "notmuch-index.json").write_text(json.dumps([nm_elapsed, nm_size]))
            print(f"notmuch:  indexed {len(entries)} in {nm_elapsed:.0f} s ="
                  f" {len(entries) / nm_elapsed:.0f} msgs/s, index {nm_size / 1024:.2f} KiB/msg")
            queries = work / "queries.json"
            queries.write_text(json.dumps([nm for _, nm in mix]))
            out = subprocess.run(["/usr/bin/python3", str(Path(__file__).with_name("notmuch_peer.py")),
                                  str(work / "mail"), str(queries), str(args.repeat)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "NOTMUCH_CONFIG": str(nm_config)})
            peer = json.loads(out.stdout)

        print(f"\nper query (median of {args.repeat}, ms; hits in the top 50):")
        print(f"  {'query':45} {'mailyard':>9} {'hits':>5}" + (f" {'notmuch':>9} {'hits':>5}" if peer else ""))
        for query, nm in mix:
            line = (f"  {query[:45]:45} {statistics.median(ours[query]['times']) * 1000:9.2f}"
                    f" {ours[query]['hits']:5}")
            if peer:
                line += (f" {statistics.median(peer[nm]['times']) * 1000:9.2f}"
                         f" {peer[nm]['hits']:5}")
            print(line)
        print(f"\nlatency over the mix ({len(mix)} queries x {args.repeat}), top 50 newest first:")
        p_ours = summary_line("mailyard", ours)
        figures = {"messages": len(entries), "repeat": args.repeat, "queries": len(mix),
                   "mailyard": {"msgs_per_s": ours_rate, "index_bytes_per_msg": ours_size,
                                "latency_ms": dict(zip(("p50", "p95", "p99"), p_ours))}}
        if peer:
            p_peer = summary_line("notmuch", peer)
            figures["notmuch"] = {"msgs_per_s": len(entries) / nm_elapsed,
                                  "index_bytes_per_msg": nm_size,
                                  "latency_ms": dict(zip(("p50", "p95", "p99"), p_peer))}
            print("ratio      " + "   ".join(f"{n} {b / a:5.1f}x faster"
                                             for n, a, b in zip(("p50", "p95", "p99"), p_ours, p_peer)))
            print(f"indexing   {ours_rate / (len(entries) / nm_elapsed):.1f}x notmuch's rate")
        print(f"\nBloom filter: answered {stats.answered_by_bloom} of {stats.searches} searches"
              f" in the mix ({100 * stats.answered_by_bloom / stats.searches:.0f}%) without the index")
        misspelled = [w[:-1] + ("x" if w[-1] != "x" else "y") for w in Generator().words[100:400:10]]
        absent = sum(all(t not in bloom for t in terms(w)) for w in misspelled)
        print(f"  and {absent} of {len(misspelled)} one-letter misspellings of common words")
        if args.json:
            figures["bloom_answered"] = [stats.answered_by_bloom, stats.searches]
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
