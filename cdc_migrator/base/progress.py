"""Progress on long work: count, rate and ETA on stderr.

On a terminal the line is redrawn in place; otherwise one line is printed every few seconds, so
logs of a deployment stay readable. With JSON logging it is an INFO log record every few
seconds instead, so the output stays one JSON object per line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from . import logs

log = logging.getLogger("cdc_migrator.progress")


def rate_and_eta(done: int, total: int | None, elapsed: float) -> tuple[float, float | None]:
    rate = done / elapsed if elapsed > 0 else 0.0
    if not total or rate <= 0:
        return rate, None
    return rate, max(total - done, 0) / rate


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """``Progress("apply add_role", total)``; call ``update(n, **counts)``, then ``close()``."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None,
                 enabled: bool = True, interval: float | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (
            0.2 if self.tty and not logs.is_json() else 5.0)
        self.done = 0
        self.counts: dict[str, int] = {}
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, n: int, **counts: int) -> None:
        self.done += n
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw()

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate, eta = rate_and_eta(self.done, self.total, elapsed)
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total) if self.total else 100.0
            head = f"{self.done:,}/{self.total:,} ({pct:.0f}%)"
        else:
            head = f"{self.done:,}"
        extra = " ".join(f"{k}={v:,}" for k, v in self.counts.items())
        tail = f" ETA {format_duration(eta)}" if self.total else ""
        return f"{self.label}: {head} {rate:,.0f} docs/s{tail}" + (f" [{extra}]" if extra else "")

    def _draw(self) -> None:
        if not self.enabled:
            return
        if logs.is_json():
            log.info("%s", self.line())
        elif self.tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if logs.is_json():
            log.info("%s", self.line())
        elif self.tty:
            self.stream.write("\r\x1b[K" + self.line() + "\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
