"""``cdc-migrator run``: tail, backfill and consume in one process, until the topic is drained.

The orchestrator of the single-machine deployment. The tailer is armed before the backfill
reads its first document; the run ends when the backfill finished, the tailer has caught up,
and the group's lag is zero. Each piece rides out lost connections on its own (see
:mod:`cdc_migrator.retry`); the run fails when one of them gives up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .apply.consumer import TransformConsumer, group_id
from .base import topics
from .base.retry import KAFKA, MONGODB, Retrier, StopRequested
from .base.settings import Settings
from .base.state import READY, StateStore
from .capture.backfill import BackfillReport, backfill
from .capture.tailer import Tailer, arm
from .migration import Migration
from .operations.cutover import CutoverReport, cutover


@dataclass
class RunReport:
    migration: str
    backfill: BackfillReport | None
    counts: dict[str, int]
    lag: int
    drained: bool
    cutover: CutoverReport | None = None
    unresolved: int = 0  # failed documents and poison records in the dead-letter topic


def run_pipeline(settings: Settings, migration: Migration, *, batch_size: int | None = None,
                 rate: float | None = None, show_progress: bool = True,
                 stop: threading.Event | None = None, timeout: float | None = None,
                 settle: float = 1.0, then_cutover: bool = False,
                 on_history_lost: str = "fail") -> RunReport:
    """Run the three pieces in threads of this process until the topic is drained.

    With ``then_cutover`` the cutover runs once drained, while the tailer and consumer still
    run: its fence must travel through them. With ``on_history_lost="rebackfill"`` a tailer
    whose change history is gone re-arms capture, and the backfill runs again from the start.
    """
    stop = stop or threading.Event()
    retry = Retrier(settings, stop=stop)
    try:
        retry.call(MONGODB, arm, settings, migration)
    except StopRequested:
        return RunReport(migration.name, None, {}, -1, False)
    tailer = Tailer(settings, migration, on_history_lost=on_history_lost,
                    backfill_on_recovery=False)
    consumer = TransformConsumer(settings, migration)
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced to the caller below
                errors.append(exc)
                stop.set()
        return run

    threads = [threading.Thread(target=guarded(tailer.run), daemon=True, name="tail"),
               threading.Thread(target=guarded(consumer.run), daemon=True, name="consume")]
    for t in threads:
        t.start()
    report = None
    outcome = None
    drained = False
    deadline = time.monotonic() + timeout if timeout else None
    try:
        while True:
            tailer.rearmed.clear()
            report = backfill(settings, migration, batch_size=batch_size, rate=rate,
                              show_progress=show_progress, stop=stop)
            drained = wait_drained(settings, migration, tailer, stop, deadline, settle, retry)
            if not tailer.rearmed.is_set() or stop.is_set():
                break
        if drained and then_cutover:
            outcome = cutover(settings, migration)
    except StopRequested:
        drained = False
    finally:
        tailer.stop()
        consumer.stop()
        for t in threads:
            t.join(timeout=60)
    if errors:
        raise errors[0]
    lag = retry.call(KAFKA, topics.group_lag, settings, settings.topic(migration.collection),
                     group_id(settings, migration)).total
    store = StateStore(settings.db, settings.state_collection)
    if drained and lag == 0 and outcome is None:
        retry.call(MONGODB, store.set, migration.name, phase=READY)
    state = retry.call(MONGODB, store.get, migration.name) or {}
    return RunReport(migration.name, report, state.get("counts", {}), lag, drained, outcome,
                     unresolved=state.get("dlq_pending", 0))


def wait_drained(settings: Settings, migration: Migration, tailer: Tailer,
                 stop: threading.Event, deadline: float | None, settle: float,
                 retry: Retrier | None = None) -> bool:
    """Wait until the tailer has caught up and the group's lag stays zero for ``settle`` s."""
    retry = retry or Retrier(settings, stop=stop)
    topic = settings.topic(migration.collection)
    group = group_id(settings, migration)
    zero_since = None
    while not stop.is_set() and not tailer.rearmed.is_set():
        if deadline and time.monotonic() > deadline:
            return False
        tailer.caught_up.clear()
        tailer.caught_up.wait(timeout=2)
        lag = retry.call(KAFKA, topics.group_lag, settings, topic, group).total
        if lag == 0 and tailer.caught_up.is_set():
            zero_since = zero_since or time.monotonic()
            if time.monotonic() - zero_since >= settle:
                return True
        else:
            zero_since = None
        time.sleep(0.2)
    return False
