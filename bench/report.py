"""Writes bench/results/latest.md and its PNG plots from the JSON each
benchmark left in bench/results/ (and run.json, which bench/suite.py writes).

    python bench/report.py
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("smtp-sink", "postfix", "haraka", "mailyard")


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def goals(ingest, e2e, read) -> str:
    rows = []

    def check(goal: str, measured: str, met: bool | None) -> None:
        rows.append([goal, measured, "n/a" if met is None else ("met" if met else "**missed**")])

    sizes = (ingest or {}).get("sizes", {})
    small, large = sizes.get("4096", {}), sizes.get("102400", {})
    if {"mailyard", "postfix", "haraka"} <= small.keys():
        ours = small["mailyard"]["msgs_per_s"]
        check("4 KiB ingest ≥ 1.5× Postfix", f"{ours / small['postfix']['msgs_per_s']:.2f}×",
              ours >= 1.5 * small["postfix"]["msgs_per_s"])
        check("4 KiB ingest > Haraka", f"{ours / small['haraka']['msgs_per_s']:.2f}×",
              ours > small["haraka"]["msgs_per_s"])
    else:
        check("4 KiB ingest ≥ 1.5× Postfix and > Haraka", "not measured", None)
    if {"mailyard", "postfix"} <= large.keys():
        ratio = large["mailyard"]["msgs_per_s"] / large["postfix"]["msgs_per_s"]
        check("100 KiB ingest ≥ Postfix", f"{ratio:.2f}×", ratio >= 1)
    else:
        check("100 KiB ingest ≥ Postfix", "not measured", None)
    if e2e:
        p99 = e2e["latency_ms"]["p99"]
        check("e2e p99 < 1 s at half load", f"{num(p99, 1)} ms", p99 < 1000)
    else:
        check("e2e p99 < 1 s at half load", "not measured", None)
    cache = (read or {}).get("calls", {}).get("ListMessages INBOX page 1 (cache)")
    if cache:
        p99 = cache["latency_ms"]["p99"]
        check("ListMessages p99 < 10 ms (cache hit)", f"{num(p99, 2)} ms", p99 < 10)
    else:
        check("ListMessages p99 < 10 ms (cache hit)", "not measured", None)
    return table(["goal", "measured", ""], rows)


def ingest_section(ingest: dict) -> str:
    p = ingest["parameters"]
    out = [f"smtp-source, {p['sessions']} sessions, {p['messages']} messages per run, median of"
           f" {p['runs']} runs (after a warm-up); CPU is the server's process tree. mailyard"
           f" runs `mailyard up` with mx.processes = {p.get('mx_processes', 1)}.\n"]
    for size, peers in ingest["sizes"].items():
        ours = peers.get("mailyard")
        rows = []
        for name in PEERS:
            if name not in peers:
                continue
            r = peers[name]
            ratio = f"{ours['msgs_per_s'] / r['msgs_per_s']:.2f}×" if ours else "n/a"
            rows.append([name, num(r["msgs_per_s"]), " / ".join(num(v) for v in r["runs"]),
                         num(r["cpu_s_per_1000"], 2), ratio if name != "mailyard" else ""])
        out.append(f"**{int(size) // 1024} KiB messages**\n\n" + table(
            ["server", "msgs/s", "runs", "CPU s / 1000 msgs", "mailyard ÷ this"], rows))
    return "\n".join(out)


def ingest_plot(ingest: dict) -> None:
    sizes = list(ingest["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6))
    for ax, size in zip(axes if len(sizes) > 1 else [axes], sizes):
        peers = [n for n in PEERS if n in ingest["sizes"][size]]
        rates = [ingest["sizes"][size][n]["msgs_per_s"] for n in peers]
        bars = ax.bar(peers, rates, color=["#bbb", "#5a8", "#58c", "#d64"][:len(peers)])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_title(f"{int(size) // 1024} KiB messages")
        ax.set_ylabel("messages/s")
    fig.suptitle("Ingest throughput (durable acceptance; smtp-sink stores nothing)")
    fig.tight_layout()
    fig.savefig(RESULTS / "ingest.png", dpi=100)
    plt.close(fig)


def latency_plot(e2e: dict | None, read: dict | None) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if e2e and e2e["samples_ms"]:
        samples = e2e["samples_ms"]
        axes[0].plot(samples, [(i + 1) / len(samples) for i in range(len(samples))])
        axes[0].axvline(1000, color="#d64", linestyle="--", label="goal: p99 < 1 s")
        axes[0].set_xscale("log")
        axes[0].set_xlabel("ms from 250 to listed")
        axes[0].set_ylabel("fraction of messages")
        axes[0].set_title(f"End to end at {e2e['rate']:.0f} msgs/s")
        axes[0].legend()
    if read:
        names = list(read["calls"])
        for i, pct in enumerate(("p50", "p90", "p99")):
            axes[1].barh([n + 0.27 * (i - 1) for n in range(len(names))],
                         [read["calls"][c]["latency_ms"][pct] for c in names], height=0.27,
                         label=pct)
        axes[1].set_yticks(range(len(names)), [n.replace(" INBOX", "\n") for n in names],
                           fontsize=8)
        axes[1].set_xlabel("ms, one request in flight")
        axes[1].set_title(f"Read path, mailbox of {read['messages']} messages")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "latency.png", dpi=100)
    plt.close(fig)


def scaling_plot(scaling: dict) -> None:
    fig, (rate_ax, rss_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    for count, data in scaling["processes"].items():
        sessions = [r["sessions"] for r in data["runs"]]
        label = f"{count} MX process{'es' if int(count) > 1 else ''}"
        rate_ax.plot(sessions, [r["msgs_per_s"] for r in data["runs"]], "o-", label=label)
        rss_ax.plot(sessions, [r["peak_rss_mib"] for r in data["runs"]], "o-", label=label)
    for ax, what in ((rate_ax, "messages/s"), (rss_ax, "peak RSS, MiB")):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent SMTP sessions")
        ax.set_ylabel(what)
        ax.set_ylim(bottom=0)
        ax.legend()
    rate_ax.set_title("Ingest rate, 4 KiB messages")
    rss_ax.set_title("Memory of the mailyard process tree")
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=100)
    plt.close(fig)


def e2e_section(e2e: dict) -> str:
    p = e2e["latency_ms"]
    return (f"An open-loop sender offered {e2e['rate']:.0f} msgs/s ({e2e['size'] // 1024} KiB,"
            f" {e2e['sessions']} sessions) for {e2e['seconds']:.0f} s, half of mailyard's"
            f" measured 4 KiB maximum; {e2e['achieved_rate']:.0f} msgs/s were accepted"
            f" ({e2e['error_count']} refused, sends began at most"
            f" {e2e['max_send_lateness_s'] * 1000:.0f} ms late). The INBOX head was polled"
            f" every 5 ms, so figures include up to ~5 ms of polling.\n\n"
            + table(["messages", "p50 ms", "p90 ms", "p99 ms", "max ms", "not listed in 10 s"],
                    [[e2e["accepted"], num(p["p50"], 1), num(p["p90"], 1), num(p["p99"], 1),
                      num(p["max"], 1), e2e["not_listed"]]]))


def read_section(read: dict) -> str:
    rows = []
    for name, r in read["calls"].items():
        p = r["latency_ms"]
        rows.append([name, num(p["p50"], 2), num(p["p90"], 2), num(p["p99"], 2),
                     num(r["requests_per_s"])])
    concurrency = next(iter(read["calls"].values()))["concurrency"]
    return (f"One mailbox of {read['messages']} 4 KiB messages; latency over {read['requests']}"
            f" requests one at a time, requests/s with {concurrency} in flight (the Python"
            f" gRPC client shares the 2 cores).\n\n"
            + table(["call", "p50 ms", "p90 ms", "p99 ms", "requests/s"], rows))


def search_section(search: dict) -> str:
    rows = []
    for engine in ("mailyard", "notmuch"):
        if engine in search:
            e = search[engine]
            lat = e["latency_ms"]
            rows.append([engine, num(e["msgs_per_s"]), num(e["index_bytes_per_msg"] / 1024, 2),
                         num(lat["p50"], 2), num(lat["p95"], 2), num(lat["p99"], 2)])
    answered, searches = search.get("bloom_answered", (0, 0))
    return (f"bench/search/run.py on {search['messages']:,} messages (generated corpus plus the"
            f" shared test mail), {search['queries']} Gmail queries × {search['repeat']}, top 50"
            f" newest first; see bench/search/README.md.\n\n"
            + table(["engine", "indexed msgs/s", "index KiB/msg", "p50 ms", "p95 ms", "p99 ms"],
                    rows)
            + f"\nThe Bloom filter answered {answered} of {searches} searches without the index.\n")


def storage_section(storage: dict) -> str:
    copies = storage["copies"]
    rows = [[f"{part}: {storage['parts'][part]}", num(size / 1e6, 2), num(size / copies / 1024, 1)]
            for part, size in storage["stored_bytes"].items()]
    rows.append(["**total stored**", num(storage["stored_total"] / 1e6, 2),
                 num(storage["stored_total"] / copies / 1024, 1)])
    rows.append(["received on the wire (one copy per transaction)",
                 num(storage["received_bytes"] / 1e6, 2),
                 num(storage["received_bytes"] / copies / 1024, 1)])
    rows.append(["one copy per recipient (what a per-mailbox store keeps)",
                 num(storage["copy_bytes"] / 1e6, 2), num(storage["copy_bytes"] / copies / 1024, 1)])
    return (f"{storage['transactions']} messages to {storage['users']} users, {copies} mailbox"
            f" copies: announcements with a 300 KB attachment to everyone, a newsletter to"
            f" everyone, one 500 KB attachment forwarded 20 times, 15 reply threads of 6 quoting"
            f" messages, 5 mailing-list threads of 8 to 10 subscribers, 200 notes of 1–12 KB"
            f" (bench/storage.py). Measured after a clean stop.\n\n"
            + table(["", "MB", "KiB per copy"], rows)
            + f"\nStored ÷ per-recipient copies: {storage['stored_total'] / storage['copy_bytes']:.1%};"
              f" stored ÷ bytes received: {storage['stored_total'] / storage['received_bytes']:.1%}.\n"
            + blob_savings(storage))


def blob_savings(storage: dict) -> str:
    """Message bytes down to blob bytes, one saving per step (issue 7)."""
    if "blobs" not in storage:
        return ""
    from storage import breakdown_rows

    rows, before = [], None
    for label, size in breakdown_rows(storage):
        rows.append([label, num(size / 1e6, 2),
                     f"{size / before - 1:+.0%}" if before else ""])
        before = size
    b = storage["blobs"]
    return ("\nWhere the message bytes go (blobs read back through the sealing layer):\n\n"
            + table(["", "MB", "saved by the step"], rows)
            + f"\nDelta-encoded replies: {b['delta_plain'] / 1e3:.0f} KB of text, "
              f"{b['delta_compressed'] / 1e3:.0f} KB with zstd alone, "
              f"{b['delta_payload'] / 1e3:.0f} KB as deltas on their parents.\n")


def scaling_section(scaling: dict) -> str:
    rows = []
    for count, data in scaling["processes"].items():
        for r in data["runs"]:
            rows.append([count, r["sessions"], r["messages"], num(r["msgs_per_s"]),
                         num(r["cpu_s_per_1000"], 2), num(r["peak_rss_mib"]),
                         num(data["idle_rss_mib"])])
    note = ""
    if scaling["skipped_processes"]:
        note = (f"\nMX process counts {scaling['skipped_processes']} were not run: this tree has"
                f" no `mx.processes` key.\n")
    return (table(["MX processes", "sessions", "messages", "msgs/s", "CPU s / 1000 msgs",
                   "peak RSS MiB", "idle RSS MiB"], rows) + note)


def profile_section(profile: dict) -> str:
    out = []
    for name, title in (("gil", "Python CPU (the thread holding the GIL)"),
                        ("threads", "every busy thread (including time blocked in fsync)")):
        data = profile["passes"].get(name)
        if not data:
            continue
        rows = [[f"{share:.1%}", f"`{fn}`"] for fn, share in data["total"][:12]]
        out.append(f"**{title}**: {data['samples']} samples at {num(data['msgs_per_s'])} msgs/s"
                   f" under py-spy; share of samples in each function and what it calls"
                   f" (collapsed stacks: `{data['folded']}`).\n\n" + table(["share", "function"],
                                                                             rows))
    return "\n".join(out)


def main() -> None:
    run = load("run") or {}
    ingest, e2e, read = load("ingest"), load("e2e"), load("read")
    search, storage, scaling, profile = load("search"), load("storage"), load("scaling"), load("profile")
    parts = ["# mailyard benchmark results\n",
             f"Run {run.get('finished', '?')} on {run.get('machine', '?')}; `bench/run` took"
             f" {num(run.get('seconds', math.nan) / 60, 1)} minutes. Generated by bench/report.py;"
             f" how each figure is made is in [bench/README.md](../README.md). The machine is"
             f" shared and noisy: compare ratios within this run, not figures across runs.\n",
             "## Goals\n", goals(ingest, e2e, read)]
    failed = {step: info["error"] for step, info in run.get("steps", {}).items() if info.get("error")}
    if failed:
        parts.append("**Steps that failed in this run:**\n\n" + "\n".join(
            f"- {step}: `{error}`" for step, error in failed.items()) + "\n")
    sections = [("Ingest", ingest, ingest_section, "ingest.png"),
                ("End-to-end latency (250 → listed over gRPC)", e2e, e2e_section, "latency.png"),
                ("Read path", read, read_section, None),
                ("Search", search, search_section, None),
                ("Storage", storage, storage_section, None),
                ("Scaling", scaling, scaling_section, "scaling.png"),
                ("Profile of the ingest path", profile, profile_section, None)]
    if ingest:
        ingest_plot(ingest)
    if e2e or read:
        latency_plot(e2e, read)
    if scaling:
        scaling_plot(scaling)
    for title, data, render, plot in sections:
        parts.append(f"## {title}\n")
        if data is None:
            parts.append("Not measured in this run.\n")
            continue
        parts.append(render(data))
        if plot and (RESULTS / plot).exists():
            parts.append(f"![{title}]({plot})\n")
    if run.get("steps"):
        parts.append("## Time per step\n\n" + table(
            ["step", "seconds", "parameters"],
            [[s, num(i["seconds"]), f"`{' '.join(i['argv'])}`" if i["argv"] else "defaults"] for s, i in run["steps"].items()]))
    (RESULTS / "latest.md").write_text("\n".join(parts))
    print(f"wrote {RESULTS / 'latest.md'}")


if __name__ == "__main__":
    main()
