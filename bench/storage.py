"""Storage: bytes kept per message for a realistic mix, beside the bytes received.

    python bench/storage.py [--users 40] [--seed 6]

The mix (deterministic for a seed), sent over SMTP to one mailyard:
- announcements: one message with a 300 KB attachment to every user, in one
  transaction (one copy on the wire, one per recipient in a mailbox store);
- a newsletter (text and HTML) to every user;
- a 500 KB attachment forwarded again and again, to one user at a time, each
  time with a different covering note;
- reply threads between three users, and mailing-list threads posted to ten
  subscribers, each reply quoting the whole message before it;
- one-to-one notes of 1-12 KB of text.
Replies are sent in rounds, each once the round before is delivered, as
replies arrive after what they answer. Once every message is delivered and
indexed, mailyard is stopped (SQLite folds its write-ahead logs back in) and
its data directory is measured; the blobs are then read back through the
sealing layer to split the saving into dedup, compression and delta encoding.
"""
from __future__ import annotations

import argparse
import json
import random
import smtplib
import asyncio
import time
from email.message import EmailMessage
from itertools import zip_longest
from pathlib import Path

from server import DOMAIN, MailyardServer

HERE = Path(__file__).resolve().parent
MARK = "benchmix"   # in every message, so Search can count what is indexed
WORDS = ("budget plan review meeting project update schedule client report deadline "
         "contract invoice team release design draft notes question answer thanks").split()

# What each part of the data directory holds, for the report.
PARTS = {
    "blobs": "message skeletons and part bodies, content-addressed, stored once, compressed"
             " and encrypted (blobs/, blobs-cold/)",
    "metadata": "users, one record per recipient, labels, threads, blob links (metadata.db*)",
    "queue": "the queue log: inbound envelopes and index events, and its WAL (queue.db*)",
    "search": "the full-text index (search.db*)",
    "other": "keys, secrets, TLS pair",
}


def text(rng: random.Random, size: int) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(WORDS))
    return "\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12))


def mail(sender: str, to: list[str], subject: str, body: str, rng: random.Random,
         attachment: tuple[str, bytes] | None = None, reply_to: EmailMessage | None = None,
         ) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, ", ".join(to), subject
    msg["Message-ID"] = f"<{rng.getrandbits(64):x}@remote.example>"
    if reply_to is not None:
        refs = f"{reply_to.get('References', '')} {reply_to['Message-ID']}".strip()
        msg["In-Reply-To"], msg["References"] = reply_to["Message-ID"], refs
    msg.set_content(f"{body}\n{MARK}\n")
    if attachment:
        name, data = attachment
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg


def newsletter(rng: random.Random, users: list[str]) -> EmailMessage:
    msg = mail("news@remote.example", users, "Monthly newsletter", text(rng, 6000), rng)
    items = "".join(f"<tr><td><h2>{rng.choice(WORDS).title()}</h2><p>{text(rng, 600)}</p>"
                    f"</td></tr>\n" for _ in range(12))
    msg.add_alternative(f"<html><body><table>{items}</table>{MARK}</body></html>", subtype="html")
    return msg


def thread_rounds(users: list[str], rng: random.Random, threads: int, messages: int,
                  members: int) -> list[list[tuple[list[str], EmailMessage]]]:
    """Round n holds message n of every thread, quoting message n-1 whole."""
    rounds = [[] for _ in range(messages)]
    for t in range(threads):
        people = rng.sample(users, members)
        parent, quoted = None, ""
        for n in range(messages):
            sender, rcpts = people[n % members], [p for p in people if p != people[n % members]]
            body = text(rng, rng.randint(200, 1500)) + "\n\n" + "\n".join(
                "> " + line for line in quoted.splitlines())
            parent = mail(sender, rcpts, f"{'Re: ' if n else ''}thread {members}-{t}", body, rng,
                          reply_to=parent)
            quoted = body
            rounds[n].append((rcpts, parent))
    return rounds


def mix(users: list[str], rng: random.Random) -> list[list[tuple[list[str], EmailMessage]]]:
    """Rounds of (recipients, message), in sending order."""
    out = [(users, newsletter(rng, users))]
    deck = rng.randbytes(300_000)
    for n in range(3):
        out.append((users, mail("ceo@remote.example", users, f"All hands {n}",
                                text(rng, 3000), rng, (f"slides-{n}.pdf", deck))))
    report = rng.randbytes(500_000)
    for n in range(20):
        user = users[n % len(users)]
        out.append(([user], mail(f"partner{n}@remote.example", [user], "Fwd: quarterly report",
                                 text(rng, 400), rng, ("quarterly-report.pdf", report))))
    for n in range(200):
        user = rng.choice(users)
        out.append(([user], mail(f"friend{n % 30}@remote.example", [user], f"note {n}",
                                 text(rng, rng.randint(1000, 12000)), rng)))
    rounds = [a + b for a, b in zip_longest(thread_rounds(users, rng, 15, 6, 3),
                                            thread_rounds(users, rng, 5, 8, min(11, len(users))),
                                            fillvalue=[])]
    return [out + rounds[0], *rounds[1:]]


def wire(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def measure(data_dir: Path) -> dict[str, int]:
    sizes = dict.fromkeys(PARTS, 0)
    for path in data_dir.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(data_dir).parts
        part = ("blobs" if rel[0] in ("blobs", "blobs-cold") else
                next((p for p in ("metadata", "queue", "search") if rel[0].startswith(p + ".db")),
                     "other"))
        sizes[part] += path.stat().st_size
    return sizes


def wait_indexed(server: MailyardServer, expected: dict[str, int], timeout: float = 120) -> None:
    """Until Search finds, for every user, as many messages as were sent to them."""
    deadline = time.monotonic() + timeout
    for user, count in expected.items():
        client = server.client(user)
        try:
            while len(client.search(MARK, 500).messages) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{user}: not all {count} messages indexed")
                time.sleep(0.2)
        finally:
            client.close()


async def blob_breakdown(data_dir: Path, level: int) -> dict[str, int]:
    """The blobs read back through the sealing layer: their plaintext (what
    dedup leaves), what zstd alone would make of each, and what is stored
    (deltas included), with the encryption's share of it."""
    import zstandard
    from mailyard.store.blobs.fs import FsBlobStore
    from mailyard.store.blobs.keyring import Keyring
    from mailyard.store.blobs.sealed import FLAG_DELTA, SealedBlobStore, read_header
    from mailyard.store.blobs.tiered import TieredBlobStore

    stored = TieredBlobStore(FsBlobStore(data_dir / "blobs"), FsBlobStore(data_dir / "blobs-cold"))
    sealed = SealedBlobStore(stored, Keyring(data_dir / "blob-keys.json").open(create=False))
    out = dict.fromkeys(("blobs", "deduplicated", "compressed", "stored", "deltas",
                         "delta_plain", "delta_compressed", "delta_payload", "sealing_overhead"), 0)
    compressor = zstandard.ZstdCompressor(level=level)
    async for key in sealed.keys():
        raw, plain = await stored.get(key), await sealed.get(key)
        header = read_header(raw)
        compressed = min(len(compressor.compress(plain)), len(plain))
        out["blobs"] += 1
        out["deduplicated"] += len(plain)
        out["compressed"] += compressed
        out["stored"] += len(raw)
        overhead = header.size + (16 if header.key_id else 0)  # the GCM tag
        out["sealing_overhead"] += overhead
        if header.flags & FLAG_DELTA:
            out["deltas"] += 1
            out["delta_plain"] += len(plain)
            out["delta_compressed"] += compressed
            out["delta_payload"] += len(raw) - overhead
    return out


def send_round(server: MailyardServer, round_: list,
               expected: dict[str, int]) -> tuple[int, int, int]:
    """Sends one round in one SMTP session and waits until it is indexed;
    (bytes received, mailbox copies, bytes as per-recipient copies)."""
    received = copies = copy_bytes = 0
    with smtplib.SMTP(*server.smtp, timeout=60) as smtp:
        smtp.ehlo("bench.client")
        for rcpts, msg in round_:
            data = wire(msg)
            smtp.sendmail(msg["From"], rcpts, data)
            received += len(data)
            copies += len(rcpts)
            copy_bytes += len(data) * len(rcpts)
            for rcpt in rcpts:
                expected[rcpt] += 1
    wait_indexed(server, expected)
    return received, copies, copy_bytes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "storage.json")
    args = parser.parse_args(argv)
    users = [f"user{n:02}@{DOMAIN}" for n in range(args.users)]
    rounds = mix(users, random.Random(args.seed))
    received = copies = copy_bytes = 0
    expected = dict.fromkeys(users, 0)
    with MailyardServer(users) as server:
        for round_ in rounds:
            sizes = send_round(server, round_, expected)
            received, copies, copy_bytes = (a + b for a, b in
                                            zip((received, copies, copy_bytes), sizes))
        server.stop()
        stored = measure(server.data_dir)
        blobs = asyncio.run(blob_breakdown(server.data_dir, level=3))
    total = sum(stored.values())
    result = {
        "transactions": sum(map(len, rounds)), "copies": copies, "users": args.users,
        "received_bytes": received, "copy_bytes": copy_bytes, "stored_bytes": stored,
        "stored_total": total, "parts": PARTS, "blobs": blobs,
        "per_copy": {"received": copy_bytes / copies, "stored": total / copies},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{result['transactions']} messages, {copies} mailbox copies: {received / 1e6:.1f} MB "
          f"received, {copy_bytes / 1e6:.1f} MB as per-recipient copies, {total / 1e6:.1f} MB "
          f"stored ({total / copy_bytes:.0%} of the copies)")
    for part, size in stored.items():
        print(f"  {part:9} {size / 1e6:8.2f} MB  {size / copies / 1024:7.1f} KiB/copy")
    print()
    for label, size in breakdown_rows(result):
        print(f"  {label:58} {size / 1e6:8.2f} MB")
    return result


def breakdown_rows(result: dict) -> list[tuple[str, int]]:
    """Bytes received down to blob bytes stored, one saving per step."""
    b = result["blobs"]
    after_delta = b["compressed"] - b["delta_compressed"] + b["delta_payload"]
    return [
        ("one copy per recipient (what a per-mailbox store keeps)", result["copy_bytes"]),
        ("received on the wire (one copy per transaction)", result["received_bytes"]),
        (f"after dedup: distinct blobs, plaintext ({b['blobs']} blobs)", b["deduplicated"]),
        ("after zstd compression (each blob alone)", b["compressed"]),
        (f"after delta encoding ({b['deltas']} blobs stored on their parent's)", after_delta),
        ("stored blob bytes, sealed (header + GCM tag included)", b["stored"]),
    ]


if __name__ == "__main__":
    main()
