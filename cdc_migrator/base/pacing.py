"""Pacing work to a rate that may change at any moment: the one pacer of the tool.

``apply --rate`` paces its scan with it, and the live throttle (core/throttle.py) paces every
backfill worker and consumer with it, at their share of ``cdc-migrator throttle``'s rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds of a rate a worker may save up (its own work between two batches counts).
BURST = 1.0


class Pacer:
    """Spaces work so that its long-run rate stays at or below a rate that may change at any
    moment (a token bucket). Time not used is saved up for at most :data:`BURST` seconds of
    the rate: the time a worker spends on its batch counts, an idle hour does not."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._owed = 0.0  # documents not yet paid for by elapsed time (negative: credit)
        self._last: float | None = None
        self._rate: float | None = None

    def add(self, n: int) -> None:
        self._settle(self._rate)
        self._owed += n

    def wait_needed(self, rate: float | None) -> float:
        """Seconds to wait before more work at ``rate`` (None: no limit, the debt is forgiven)."""
        self._settle(rate)
        if rate is None or self._owed <= 1e-6:
            return 0.0
        return self._owed / rate

    def _settle(self, rate: float | None) -> None:
        now = self.clock()
        elapsed = 0.0 if self._last is None else now - self._last
        self._last, self._rate = now, rate
        if rate is None:
            self._owed = 0.0
        else:
            self._owed = max(-rate * BURST, self._owed - elapsed * rate)
