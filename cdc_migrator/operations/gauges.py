"""What ``status`` shows of a migration, as the gauges of :mod:`cdc_migrator.base.metrics`.

A process's watch (:mod:`.observability`) measures the status of each migration it serves every
few seconds and sets these samples (:class:`~cdc_migrator.base.metrics.Published`): every
process serving a migration reports the same values, so a dashboard takes their ``max`` (the
least, for the runway).
"""

from __future__ import annotations

import time
from typing import Any

from ..base import metrics
from ..base.metrics import Sample
from ..core.state import MigrationState, Phase
from ..errors import UNEXPECTED

#: The phases in which a migration needs its tailer: only then do its checkpoint's age, the
#: runway of its resume point and the throttle's holds say something.
IN_FLIGHT = frozenset({Phase.ARMED, Phase.BACKFILLING, Phase.CATCHING_UP, Phase.READY,
                       Phase.FAILED})


def samples(status: dict[str, Any], state: MigrationState,
            members: int | None = None) -> list[Sample]:
    """The gauges of one migration's ``status`` (with its ``state``), and the members of its
    consumer group when they were counted."""
    name = (state.name,)
    phase = Phase.parse(status.get("phase"))
    found: list[Sample] = [(metrics.PAUSED, name, float(state.paused)),
                           (metrics.DEAD_LETTERS, name, float(state.dlq_pending))]
    if phase is not None:
        found.append((metrics.PHASE, name, phase.value))
    if members is not None:
        found.append((metrics.GROUP_MEMBERS, name, float(members)))
    for component, record in state.stopped.items():
        found.append((metrics.PIPELINE_STOPPED,
                      (state.name, component, str(record.get("reason") or UNEXPECTED)), 1.0))
    lag = status.get("lag") or {}
    for partition, entry in (lag.get("partitions") or {}).items():
        found.append((metrics.CONSUMER_LAG, (state.name, partition), float(entry["lag"])))
    found += _backfill(name, status.get("backfill"))
    found += _throttle(name, status["throttle"], phase in IN_FLIGHT)
    if phase in IN_FLIGHT:
        found += _tail(name, status.get("tail"), status.get("history"))
    return found


def _backfill(name: tuple[str, ...], backfill: dict[str, Any] | None) -> list[Sample]:
    if backfill is None:
        return []
    found: list[Sample] = [(metrics.BACKFILL_SCANNED, name, float(backfill["scanned"]))]
    if backfill.get("total") is not None:
        found.append((metrics.BACKFILL_DOCUMENTS, name, float(backfill["total"])))
    if backfill.get("eta_seconds") is not None:
        found.append((metrics.BACKFILL_ETA, name, float(backfill["eta_seconds"])))
    ranges = backfill.get("ranges")
    if ranges:
        found += [(metrics.RANGES_DONE, name, float(ranges["done"])),
                  (metrics.RANGES_IN_PROGRESS, name, float(len(ranges["in_progress"]))),
                  (metrics.RANGES_LEFT, name, float(ranges["left"]))]
    return found


def _throttle(name: tuple[str, ...], throttle: dict[str, Any], in_flight: bool) -> list[Sample]:
    found: list[Sample] = []
    if throttle.get("rate") is not None:
        found.append((metrics.THROTTLE_RATE, name, float(throttle["rate"])))
    if not in_flight:
        return found
    hold = throttle.get("hold") or {}
    held_for = max(0.0, time.time() - float(hold.get("since") or hold.get("at") or time.time()))
    holding = str(hold.get("bound") or "").replace(" ", "_")
    # Every reason at 0 while none holds: an alert's `for` and a panel see a series.
    found += [(metrics.THROTTLE_HOLD, (*name, reason), held_for if reason == holding else 0.0)
              for reason in metrics.HOLD_REASONS]
    return found


def _tail(name: tuple[str, ...], tail: dict[str, Any] | None,
          history: dict[str, Any] | None) -> list[Sample]:
    found: list[Sample] = []
    if tail and tail.get("seconds_since_heartbeat") is not None:
        found.append((metrics.TAILER_CHECKPOINT_AGE, name, float(tail["seconds_since_heartbeat"])))
    if history and history.get("window_seconds") is not None:
        found.append((metrics.HISTORY_WINDOW, name, float(history["window_seconds"])))
    if history and history.get("runway_seconds") is not None:
        found.append((metrics.HISTORY_RUNWAY, name, float(history["runway_seconds"])))
    return found
