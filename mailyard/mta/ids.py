"""Queue ids: short, unique, roughly time-ordered, safe in logs and headers."""
from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


def new_queue_id() -> str:
    """48 bits of milliseconds then 40 random bits, in 18 characters."""
    value = (int(time.time() * 1000) << 40) | secrets.randbits(40)
    chars = []
    while value:
        value, digit = divmod(value, len(_ALPHABET))
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars)).rjust(18, "0")
