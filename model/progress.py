"""A dependency-free progress line: batches, loss, samples/s (``\\r`` on a terminal, lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, *, stream: TextIO | None = None, every_s: float = 0.5) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self._tty = self.stream.isatty()
        self._every = every_s if self._tty else max(every_s, 10.0)
        self._last = 0.0

    def update(self, done: int, loss: float, samples_per_s: float, extra: str = "") -> None:
        now = time.monotonic()
        if now - self._last < self._every and done < self.total:
            return
        self._last = now
        width = 24
        filled = int(width * done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"train [{bar}] {done}/{self.total} loss {loss:.4f} {samples_per_s:,.0f} samples/s {extra}"
        if self._tty:
            self.stream.write("\r" + line.ljust(100))
            if done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self._tty:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
