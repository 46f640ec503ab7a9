"""The backfill scanner: the documents already in the collection become events on its topic.

It refuses to start before change capture is armed, so every write after a document was
scanned also yields a change event. The position (last ``_id``) is saved after the broker
acknowledged the batch, so an interrupted backfill resumes where it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from . import events, logs, observability, topics
from .config import Settings
from .errors import Refused
from .migration import Migration
from .progress import Progress
from .scanner import count, scan
from .state import BACKFILLING, CATCHING_UP, StateStore
from .tailer import is_armed

log = logging.getLogger("cdc_migrator.backfill")

@dataclass
class BackfillReport:
    migration: str
    scanned: int
    total_scanned: int
    resumed: bool
    done: bool

    def summary(self) -> str:
        how = " (resumed from the saved position)" if self.resumed else ""
        state = "finished" if self.done else "stopped before the end"
        return (f"{self.migration}: backfill {state}; {self.scanned:,} documents produced "
                f"in this run, {self.total_scanned:,} in all{how}")


def backfill(
    settings: Settings,
    migration: Migration,
    *,
    batch_size: int | None = None,
    rate: float | None = None,
    reset: bool = False,
    show_progress: bool = True,
    stop: threading.Event | None = None,
) -> BackfillReport:
    """Scan the collection in ``_id`` order into the migration's topic."""
    logs.bind(migration=migration.name, component="backfill")
    store = StateStore(settings.db, settings.state_collection)
    state = store.get(migration.name)
    if not is_armed(state):
        raise Refused(
            f"change capture for {migration.name!r} is not armed: start `cdc-migrator tail "
            f"{migration.name}` first (or use `cdc-migrator run`), so no write can fall "
            "between the scan and the change stream")
    if state.get("cancelled"):
        raise Refused(f"migration {migration.name!r} was cancelled; `reset` it to start again")
    saved = state.get("backfill") or {}
    if saved.get("done") and not reset:
        return BackfillReport(migration.name, 0, saved.get("scanned", 0), False, True)
    resumed = "cursor" in saved and not reset
    if not resumed:
        store.unset(migration.name, "backfill")
    topic = settings.topic(migration.collection)
    topics.ensure_topic(settings, topic)
    collection = settings.db[migration.collection]
    total = count(collection, migration.filter)
    store.set(migration.name, phase=BACKFILLING, **{"backfill.total": total,
                                                     "backfill.done": False})
    done_before = saved.get("scanned", 0) if resumed else 0
    log.info("backfill %s: %d documents to scan into %s",
             f"resumed after {done_before} documents" if resumed else "started", total, topic)
    progress = Progress(f"backfill {migration.name}", total, enabled=show_progress)
    progress.done = done_before
    producer = topics.producer(settings)
    database = settings.database_name
    scanned = 0
    finished = True
    batch_started = time.monotonic()
    try:
        for batch in scan(collection, migration.filter, after=saved.get("cursor"),
                          started=resumed, batch_size=batch_size or migration.batch_size,
                          rate=rate):
            futures = [
                producer.send(topic, key=events.key_bytes(doc["_id"]), value=events.encode(
                    events.Envelope.snapshot(migration.name, database, migration.collection, doc)))
                for doc in batch
            ]
            producer.flush()
            for future in futures:
                future.get(timeout=0)  # a failed send raises; the position is not saved
            scanned += len(batch)
            store.add(migration.name, {"produced": len(batch)},
                      **{"backfill.cursor": batch[-1]["_id"],
                         "backfill.scanned": done_before + scanned})
            progress.update(len(batch))
            observability.record_produced(migration.name, len(batch), "backfill",
                                          time.monotonic() - batch_started)
            batch_started = time.monotonic()
            if not _hold_while_paused(store, migration.name, stop):
                finished = False
                break
            if stop is not None and stop.is_set():
                finished = False
                break
    finally:
        producer.close()
        progress.close()
    if finished:
        store.set(migration.name, phase=CATCHING_UP, **{"backfill.done": True})
    log.info("backfill %s: %d documents produced in this run, %d in all",
             "finished" if finished else "stopped", scanned, done_before + scanned)
    return BackfillReport(migration.name, scanned, done_before + scanned, resumed, finished)


def _hold_while_paused(store: StateStore, name: str, stop: threading.Event | None) -> bool:
    """Wait while the migration is paused; False when it was cancelled or we must stop."""
    while True:
        state = store.get(name) or {}
        if state.get("cancelled"):
            return False
        if not state.get("paused"):
            return True
        if stop is not None and stop.wait(1.0):
            return False
        if stop is None:
            time.sleep(1.0)
