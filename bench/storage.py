"""Storage: bytes kept per message for a realistic mix, beside the bytes received.

    python bench/storage.py [--users 40] [--seed 6]

The mix (deterministic for a seed), sent over SMTP to one mailyard:
- announcements: one message with a 300 KB attachment to every user, in one
  transaction (one copy on the wire, one per recipient in a mailbox store);
- a 500 KB attachment forwarded again and again, to one user at a time, each
  time with a different covering note;
- reply threads between three users, each reply quoting the whole thread;
- one-to-one notes of 1-12 KB of text.
Once every message is delivered and indexed, mailyard is stopped (SQLite
folds its write-ahead logs back in) and its data directory is measured.
"""
from __future__ import annotations

import argparse
import base64
import json
import random
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path

from server import DOMAIN, MailyardServer

HERE = Path(__file__).resolve().parent
MARK = "benchmix"   # in every message, so Search can count what is indexed
WORDS = ("budget plan review meeting project update schedule client report deadline "
         "contract invoice team release design draft notes question answer thanks").split()

# What each part of the data directory holds, for the report.
PARTS = {
    "blobs": "message skeletons and part bodies, content-addressed, stored once (blobs/)",
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


def mix(users: list[str], rng: random.Random) -> list[tuple[list[str], EmailMessage]]:
    """(recipients, message) in sending order."""
    out = []
    deck = rng.randbytes(300_000)
    for n in range(3):
        out.append((users, mail("ceo@remote.example", users, f"All hands {n}",
                                text(rng, 3000), rng, (f"slides-{n}.pdf", deck))))
    report = rng.randbytes(500_000)
    for n in range(20):
        user = users[n % len(users)]
        out.append(([user], mail(f"partner{n}@remote.example", [user], f"Fwd: quarterly report",
                                 text(rng, 400), rng, ("quarterly-report.pdf", report))))
    for t in range(15):
        people = rng.sample(users, 3)
        parent, quoted = None, ""
        for n in range(6):
            sender, rcpts = people[n % 3], [p for p in people if p != people[n % 3]]
            body = text(rng, rng.randint(200, 1500)) + "\n\n" + "\n".join(
                "> " + line for line in quoted.splitlines())
            parent = mail(sender, rcpts, f"{'Re: ' if n else ''}thread {t}", body, rng,
                          reply_to=parent)
            quoted = body
            out.append((rcpts, parent))
    for n in range(200):
        user = rng.choice(users)
        out.append(([user], mail(f"friend{n % 30}@remote.example", [user], f"note {n}",
                                 text(rng, rng.randint(1000, 12000)), rng)))
    return out


def wire(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def measure(data_dir: Path) -> dict[str, int]:
    sizes = dict.fromkeys(PARTS, 0)
    for path in data_dir.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(data_dir).parts
        part = ("blobs" if rel[0] == "blobs" else
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "storage.json")
    args = parser.parse_args(argv)
    users = [f"user{n:02}@{DOMAIN}" for n in range(args.users)]
    messages = mix(users, random.Random(args.seed))
    received = copies = copy_bytes = 0
    expected = dict.fromkeys(users, 0)
    with MailyardServer(users) as server:
        with smtplib.SMTP(*server.smtp, timeout=60) as smtp:
            smtp.ehlo("bench.client")
            for rcpts, msg in messages:
                data = wire(msg)
                smtp.sendmail(msg["From"], rcpts, data)
                received += len(data)
                copies += len(rcpts)
                copy_bytes += len(data) * len(rcpts)
                for rcpt in rcpts:
                    expected[rcpt] += 1
        wait_indexed(server, expected)
        server.stop()
        stored = measure(server.data_dir)
    total = sum(stored.values())
    result = {
        "transactions": len(messages), "copies": copies, "users": args.users,
        "received_bytes": received, "copy_bytes": copy_bytes, "stored_bytes": stored,
        "stored_total": total, "parts": PARTS,
        "per_copy": {"received": copy_bytes / copies, "stored": total / copies},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{len(messages)} messages, {copies} mailbox copies: {received / 1e6:.1f} MB received,"
          f" {copy_bytes / 1e6:.1f} MB as per-recipient copies, {total / 1e6:.1f} MB stored"
          f" ({total / copy_bytes:.0%} of the copies)")
    for part, size in stored.items():
        print(f"  {part:9} {size / 1e6:8.2f} MB  {size / copies / 1024:7.1f} KiB/copy")
    return result


if __name__ == "__main__":
    main()
