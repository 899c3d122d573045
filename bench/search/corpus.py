"""A generated mailbox: realistic sizes and vocabulary, threads with quoting,
attachments, three years of dates; plus the messages of ../shared/testdata/email.

Deterministic for a seed, so runs compare. Words follow a Zipf law over a
vocabulary of common English words and generated ones (names, jargon, codes),
so there are very common words, a long tail of rare ones, and phrases that
recur (stock phrases mailed back and forth).
"""
from __future__ import annotations

import base64
import collections
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

COMMON = """the of and to a in is it you that he was for on are with as i his they be at one
have this from or had by hot but some what there we can out other were all your when up use
word how said an each she which do their time if will way about many then them would write
like so these her long make thing see him two has look more day could go come did my sound no
most number who over know water than call first people may down side been now find any new
work part take get place made live where after back little only round man year came show every
good me give our under name very through just form much great think say help low line before
turn cause same mean differ move right boy old too does tell sentence set three want air well
also play small end put home read hand port large spell add even land here must big high such
follow act why ask men change went light kind off need house picture try us again animal point
mother world near build self earth father head stand own page should country found answer school
grow study still learn plant cover food sun four thought let keep eye never last door between
city tree cross since hard start might story saw far sea draw left late run while press close
night real life few stop open seem together next white children begin got walk example ease
paper often always music those both mark book letter until mile river car feet care second group
carry took rain eat room friend began idea fish mountain north once base hear horse cut sure
watch color face wood main enough plain girl usual young ready above ever red list though feel
talk bird soon body dog family direct pose leave song measure state product black short numeral
class wind question happen complete ship area half rock order fire south problem piece told knew
pass farm top whole king size heard best hour better true during hundred am remember step early
hold west ground interest reach fast five sing listen six table travel less morning ten simple
several vowel toward war lay against pattern slow center love person money serve appear road map
science rule govern pull cold notice voice fall power town fine certain fly unit lead cry dark
machine note wait plan figure star box noun field rest correct able pound done beauty drive
stood contain front teach week final gave green oh quick develop sleep warm free minute strong
special mind behind clear tail produce fact street inch lot nothing course stay wheel full force
blue object decide surface deep moon island foot yet busy test record boat common gold possible
plane age dry wonder laugh thousand ago ran check game shape yes miss brought heat snow bed
bring sit perhaps fill east weight language among budget meeting report project review deadline
invoice contract client team manager schedule update release server deploy customer quarterly
""".split()
STOCK_PHRASES = ["let me know", "thanks in advance", "as discussed", "please find attached",
                 "quarterly report", "action items", "see you tomorrow", "looking forward",
                 "best regards", "per our conversation", "out of office", "happy to help",
                 "follow up", "end of day", "next steps", "board meeting"]
SYLLABLES = "ka lo mi ne ru sa ti vo ze pa qui dor ban tel mar fen gil hur jas kor lun".split()
FIRST = """alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy rupert
sybil trent victor walter yvonne zoe oscar quentin ursula xavier""".split()
LAST = """smith jones brown taylor wilson davies evans thomas roberts johnson walker wright
robinson thompson white hughes edwards green hall wood harris lewis martin jackson clarke""".split()
DOMAINS = ["example.com", "work.example", "partner.example", "mail.example.org", "shop.example"]
START = datetime(2022, 1, 1, tzinfo=timezone.utc)
DAYS = 3 * 365
USER = "bench@example.test"


@dataclass
class Message:
    raw: bytes
    received_at_ms: int
    message_id: str


def vocabulary(rng: random.Random, size: int = 60_000) -> list[str]:
    words = list(dict.fromkeys(COMMON))
    seen = set(words)
    while len(words) < size:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if rng.random() < 0.05:
            word += str(rng.randint(10, 9999))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class Generator:
    def __init__(self, seed: int = 7):
        self.rng = random.Random(seed)
        self.words = vocabulary(self.rng)
        # Zipf: weight 1/rank; cumulative weights make choices() a bisect.
        total, self.cum = 0.0, []
        for rank in range(1, len(self.words) + 1):
            total += 1.0 / rank
            self.cum.append(total)
        self.people = [f"{f} {l}" for f in FIRST for l in LAST]
        self.addresses = {p: f"{p.split()[0]}.{p.split()[1]}@{DOMAINS[i % len(DOMAINS)]}"
                          for i, p in enumerate(self.people)}

    def text(self, n_words: int) -> str:
        words = self.rng.choices(self.words, cum_weights=self.cum, k=n_words)
        for _ in range(n_words // 60):
            words.insert(self.rng.randrange(len(words) + 1), self.rng.choice(STOCK_PHRASES))
        lines, line = [], []
        for word in words:
            line.append(word)
            if len(line) >= 12:
                lines.append(" ".join(line))
                line = []
        lines.append(" ".join(line))
        return "\n".join(lines)

    def person(self) -> str:
        # A few correspondents write most of the mail.
        index = min(int(self.rng.paretovariate(1.2)) - 1, len(self.people) - 1)
        return self.people[index]

    def messages(self, count: int):
        rng = self.rng
        # (subject, message-id, body) of the last 50 messages, which replies pick from
        threads: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=50)
        times = sorted(rng.random() for _ in range(count))
        for n in range(count):
            when = START + timedelta(days=DAYS * times[n])
            sender = self.person()
            message_id = f"<{n}.{rng.getrandbits(40):x}@{self.addresses[sender].split('@')[1]}>"
            n_words = min(int(rng.lognormvariate(4.6, 0.9)) + 5, 3000)  # median ~100 words
            body = self.text(n_words)
            headers = {"From": f"{sender.title()} <{self.addresses[sender]}>",
                       "To": USER, "Date": format_datetime(when), "Message-ID": message_id}
            if rng.random() < 0.2:
                headers["Cc"] = f"{self.addresses[self.person()]}"
            if threads and rng.random() < 0.35:  # a reply quoting its parent
                subject, parent, parent_body = threads[rng.randrange(len(threads))]
                headers["Subject"] = "Re: " + subject.removeprefix("Re: ")
                headers["In-Reply-To"] = headers["References"] = parent
                body += "\n\nOn an earlier day someone wrote:\n" + "\n".join(
                    "> " + line for line in parent_body.splitlines()[:40])
            else:
                headers["Subject"] = " ".join(self.text(rng.randint(2, 7)).split()).capitalize()
            threads.append((headers["Subject"], message_id, body))
            raw = self._mime(headers, body)
            yield Message(raw, int(when.timestamp() * 1000), message_id)

    def _mime(self, headers: dict, body: str) -> bytes:
        rng = self.rng
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "MIME-Version: 1.0\r\n"
        body = body.replace("\n", "\r\n")
        kind = rng.random()
        if kind < 0.75:
            return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()
        boundary = f"b{rng.getrandbits(48):x}"
        parts = [f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"]
        if kind < 0.88:  # an HTML alternative
            html = "<html><body><p>" + body.replace("\r\n", "<br>\r\n") + "</p></body></html>"
            parts.append(f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n")
            subtype = "alternative"
        else:  # attachments
            subtype = "mixed"
            for _ in range(rng.randint(1, 2)):
                parts.append(self._attachment())
        return (head + f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'
                + "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n").encode()

    def _attachment(self) -> str:
        rng = self.rng
        stem = "-".join(rng.choices(self.words[:3000], k=2)) + f"-{rng.randint(1, 99)}"
        kind = rng.random()
        if kind < 0.4:
            name, ctype, data = stem + ".txt", "text/plain", self.text(rng.randint(50, 800)).encode()
        elif kind < 0.7:
            name, ctype, data = stem + ".pdf", "application/pdf", _pdf(self.text(rng.randint(20, 80)))
        else:
            name, ctype = stem + rng.choice([".jpg", ".png", ".zip", ".xlsx"]), "application/octet-stream"
            data = rng.randbytes(rng.randint(5_000, 150_000))
        encoded = base64.encodebytes(data).decode().replace("\n", "\r\n")
        return (f'Content-Type: {ctype}; name="{name}"\r\nContent-Disposition: attachment;'
                f' filename="{name}"\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}')


def _pdf(text: str) -> bytes:
    """A one-page PDF showing the text (pypdf reads it back)."""
    lines = [l.replace("(", "").replace(")", "") for l in text.splitlines()][:30]
    stream = ("BT /F1 10 Tf 20 780 Td 12 TL " + " ".join(f"({l}) '" for l in lines) + " ET").encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
               b" /Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 6\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size 6 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def testdata_messages() -> list[Message]:
    """The shared test messages, dated in the corpus's range."""
    root = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "email"
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    if not paths:
        raise FileNotFoundError(f"no test messages under {root}")
    found = []
    for i, path in enumerate(paths):
        when = START + timedelta(days=DAYS * (i + 0.5) / len(paths))
        found.append(Message(path.read_bytes(), int(when.timestamp() * 1000), f"<testdata-{i}>"))
    return found
