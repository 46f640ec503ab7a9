"""Planning the ranges of a shared backfill, and keeping the leases of the ones being scanned.

The first backfill process of a pass plans: it samples ``_id`` s (``$sample``), lets the
server sort them (so the split points follow MongoDB's order, mixed types included) and cuts
the key space at evenly spaced ones (:func:`cdc_migrator.capture.leases.quantiles`). Every other
process started meanwhile waits for the plan and then takes ranges from it. See
:mod:`cdc_migrator.capture.leases` for the leases.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from pymongo.collection import Collection

from ..base.scanner import scan_filter
from ..core.state import BackfillState, StateStore
from .leases import Claim, RangeStore, quantiles, split

log = logging.getLogger("cdc_migrator.backfill")

#: A range holds at least this many documents: fewer ranges on a small collection.
MIN_RANGE_DOCUMENTS = 1_000
#: ``_id`` s sampled per range wanted, to place the split points.
SAMPLES_PER_RANGE = 20
#: How long a planner may take before another process takes its place, in seconds.
PLANNING_HOLD = 60.0


def ranges_for(total: int, most: int) -> int:
    """How many ranges a collection of ``total`` documents is split into (at most ``most``)."""
    return max(1, min(most, total // MIN_RANGE_DOCUMENTS))


def split_points(collection: Collection, base_filter: Mapping[str, Any] | None,
                 parts: int) -> list[Any]:
    """Up to ``parts - 1`` ``_id`` s that cut the matching documents into ``parts`` ranges of
    about equal size, ascending in the server's order."""
    if parts <= 1:
        return []
    pipeline: list[dict[str, Any]] = [{"$match": dict(base_filter)}] if base_filter else []
    pipeline += [{"$sample": {"size": parts * SAMPLES_PER_RANGE}}, {"$project": {"_id": 1}},
                 {"$sort": {"_id": 1}}]
    sample = [doc["_id"] for doc in collection.aggregate(pipeline)]
    return quantiles(sample, parts)


def plan(collection: Collection, base_filter: Mapping[str, Any] | None, ranges: RangeStore,
         store: StateStore, name: str, *, owner: str, total: int, most: int, armed_at: Any,
         saved: BackfillState | None, reset: bool, wait: threading.Event) -> bool:
    """Make sure the ranges of this pass exist, planning them if no process did; True when
    the backfill resumes work done before (some range started, or an old single position).

    A backfill saved by a version without ranges (one position, ``saved.position``) goes on
    from there: the ranges split what is after it, and the first one starts after it.
    """
    if reset:
        ranges.forget(name)
    while True:
        existing = ranges.plan(name)
        if existing is not None and existing.get("armed_at") != armed_at:
            ranges.forget(name)  # a plan of an earlier pass (capture re-armed since)
            continue
        if existing is not None and existing.get("state") == "ready":
            store.start_backfill(name, total, over=False)
            return any(r.started or r.done for r in ranges.ranges(name))
        if ranges.begin_planning(name, owner, hold=PLANNING_HOLD, armed_at=armed_at):
            break
        wait.wait(0.2)  # another process plans now
        if wait.is_set():
            return False
    old = saved.position if saved is not None and not reset else None
    base = scan_filter(base_filter, old.last, True) if old is not None else base_filter
    points = split_points(collection, base, ranges_for(total, most))
    store.start_backfill(name, total, over=old is None)
    ranges.save_plan(name, split(points), armed_at=armed_at,
                     first_position=old.last if old else None, first_started=old is not None)
    log.info("backfill planned in %d ranges%s", len(points) + 1,
             " (resuming the saved position of an earlier version)" if old else "")
    return old is not None


class LeaseKeeper:
    """Renews the leases of the ranges this process scans, every third of the lease."""

    def __init__(self, ranges: RangeStore, lease: float) -> None:
        self.ranges, self.lease = ranges, lease
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="backfill-leases")

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._held[claim.token] = claim

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop(claim.token, None)

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with self._lock:
                held = list(self._held.values())
            for claim in held:
                try:
                    if not self.ranges.renew(claim, self.lease):
                        log.info("range %d was taken over by another worker",
                                 claim.range.index)
                        self.drop(claim)
                except Exception as exc:  # MongoDB away: the workers' retries report it
                    log.debug("renewing the lease of range %d: %s", claim.range.index, exc)
