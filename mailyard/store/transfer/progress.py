"""A progress bar on stderr, redrawn in place, shown only on a terminal."""
from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
REDRAW_EVERY_S = 0.1


class Progress:
    def __init__(self, verb: str, out: TextIO = sys.stderr) -> None:
        self.verb, self.out = verb, out
        self.tty = out.isatty()
        self.total = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def start(self, total: int) -> None:
        self.total, self.started = total, time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty or (not force and now - self._drawn < REDRAW_EVERY_S):
            return
        self._drawn = now
        filled = WIDTH if not self.total else WIDTH * min(done, self.total) // self.total
        rate = done / max(now - self.started, 1e-6)
        self.out.write(f"\r{self.verb} [{'#' * filled}{'.' * (WIDTH - filled)}] "
                       f"{done}/{self.total} messages, {rate:.0f}/s ")
        self.out.flush()

    def close(self, done: int) -> None:
        if self.tty:
            self.update(done, force=True)
            self.out.write("\n")
            self.out.flush()
