"""A generated corpus of ham and spam for the spam classifier's tests.

Both classes draw most of their words from one shared vocabulary and carry
every header a well-formed message has (Date, Message-ID), so no rule tells
them apart: only learning can. Each class has its own topical words and
senders, mixed with the other class's words at a noise rate, as real mail is
(ham mentions "offer", spam mentions "meeting").
"""
from __future__ import annotations

import random
from email.message import EmailMessage
from email.utils import format_datetime
from datetime import datetime, timezone

COMMON = ("the and for with this that from your have will about time there what when "
          "which their would could other into more some these only then also than just "
          "like over after because first well even most made many before must through "
          "where much those while should here each might both same know today week").split()
HAM_WORDS = ("meeting project review draft schedule agenda minutes quarterly budget team "
             "deadline report lunch colleague sprint roadmap feedback slides notes client "
             "contract calendar thanks regards attached proposal invoice conference travel "
             "family dinner weekend birthday photos kids school homework garden recipe").split()
SPAM_WORDS = ("winner prize claim free offer discount limited exclusive guaranteed cash "
              "bonus casino jackpot crypto bitcoin investment profit pills pharmacy cheap "
              "unsubscribe click urgent verify account suspended lottery million inheritance "
              "beneficiary loan credit approved risk bargain deal miracle weight").split()
HAM_SENDERS = ["alice@corp.example", "bob@corp.example", "carol@partner.example",
               "dad@family.example", "news@lists.example"]
NOISE = 0.25   # share of topical words taken from the other class


def message(rng: random.Random, spam: bool, serial: int, to: str) -> bytes:
    own, other = (SPAM_WORDS, HAM_WORDS) if spam else (HAM_WORDS, SPAM_WORDS)

    def words(n: int) -> list[str]:
        found = []
        for _ in range(n):
            if rng.random() < 0.35:
                found.append(rng.choice(other if rng.random() < NOISE else own))
            else:
                found.append(rng.choice(COMMON))
        return found

    sender = (f"{rng.choice(['promo', 'info', 'deals', 'support'])}@"
              f"{rng.choice(['mailer', 'offers', 'win', 'shop'])}{rng.randrange(50)}.example"
              if spam else rng.choice(HAM_SENDERS))
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    # A tag of its own tells the messages apart (and says nothing of the class).
    msg["Subject"] = (" ".join(words(rng.randrange(3, 8))).capitalize()
                      + f" [{rng.randrange(16 ** 6):06x}]")
    msg["Date"] = format_datetime(datetime(2026, 11, 1, tzinfo=timezone.utc))
    msg["Message-ID"] = f"<{'s' if spam else 'h'}{serial}.{rng.randrange(10**9)}@corpus.example>"
    paragraphs = [" ".join(words(rng.randrange(15, 40))) for _ in range(rng.randrange(1, 4))]
    msg.set_content("\n\n".join(paragraphs) + "\n")
    return msg.as_bytes()


def corpus(seed: int, count: int, to: str) -> list[tuple[bool, bytes]]:
    """`count` messages, half spam, shuffled: (is_spam, message)."""
    rng = random.Random(seed)
    labelled = [(i % 2 == 0, i) for i in range(count)]
    rng.shuffle(labelled)
    return [(spam, message(rng, spam, serial, to)) for spam, serial in labelled]
