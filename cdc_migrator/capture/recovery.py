"""Recovery after lost change history (``--on-history-lost rebackfill``): capture is armed again
from now, and the whole collection is backfilled again.

Safe because applying is idempotent: documents migrated already are no-ops, and every write
after the new armed point has an event. The old resume token and backfill position are
dropped; the recovery is counted and logged, and ``status`` shows it.

:class:`Recovery` is the one owner of a recovery, whoever runs the tailer (``tail``, ``run``,
cutover's catch-up): the tailer hands it the cause when its stream cannot resume
(:meth:`Recovery.rearm`); the recovery's backfill pass then runs in a thread of its own, one
at a time, and records its end; a pass a stopped tailer left unfinished goes on when the tailer
starts again (:meth:`Recovery.resume`). A backfill started meanwhile by someone else (``run``'s
own, a ``backfill`` command) shares the new pass.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..base import history
from ..base.retry import MONGODB, Retrier
from ..base.settings import Settings
from ..base.threads import Threads
from ..core.state import now
from ..migration import Migration
from . import dependencies
from .backfill import backfill

log = logging.getLogger("cdc_migrator.tailer")


class Recovery:
    """The recoveries of one migration's tailer; ``stop`` ends a running backfill pass."""

    def __init__(self, settings: Settings, migration: Migration, stop: threading.Event,
                 pipeline: list[dict[str, Any]]) -> None:
        self.settings, self.migration, self.stop = settings, migration, stop
        self.pipeline = pipeline  # the tailer's stream: capture is armed again where it starts
        self.store = settings.store
        self._threads: Threads | None = None  # the backfill pass running, if any

    @property
    def running(self) -> bool:
        """Whether a backfill pass of a recovery is running now."""
        return self._threads is not None and self._threads.alive()

    def resume(self, retry: Retrier) -> None:
        """Go on with the backfill pass of a recovery that a stopped tailer left unfinished."""
        state = retry.call(MONGODB, self.store.get, self.migration.name)
        recovery = (state.tail.last_recovery if state else None) or {}
        if recovery.get("backfill") == "running":
            self._backfill(reset=False)

    def rearm(self, cause: str, retry: Retrier) -> None:
        """History lost: capture again from the server's present, then scan every document."""
        name = self.migration.name
        db = self.settings.db
        token, armed_at = retry.call(MONGODB, history.stream_start, db, self.pipeline)
        if self.migration.depends_on:  # the map may have missed changes: read it again
            retry.call(MONGODB, dependencies.forget, db, name)
            retry.call(MONGODB, dependencies.seed, db, self.migration)
        retry.call(MONGODB, self.store.rearm, name, armed_at, token,
                   {"reason": cause, "at": now(), "armed_at": armed_at, "backfill": "running"})
        log.warning("%s; --on-history-lost rebackfill: capture re-armed at %s, the collection "
                    "is backfilled again", cause, armed_at)
        self._backfill(reset=True)

    def check(self) -> None:
        """Raise the error that ended a recovery's backfill pass, if one did."""
        if self._threads is not None:
            self._threads.raise_first()

    def join(self, timeout: float) -> None:
        if self._threads is not None:
            self._threads.join(timeout)

    def _backfill(self, *, reset: bool) -> None:
        if self.running:
            return  # the running pass sees the new armed point and stops; a new one follows

        def run() -> None:
            report = backfill(self.settings, self.migration, reset=reset, show_progress=False,
                              stop=self.stop)
            if report.done:
                self.store.finish_recovery(self.migration.name)
                log.info("recovery after lost history: %s", report.summary())

        self._threads = Threads()
        self._threads.start(f"rebackfill-{self.migration.name}", run)
