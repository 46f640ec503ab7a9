"""The leases of a shared backfill: its ``_id`` ranges in BSON order, who plans them, who scans
each one, and who keeps the leases of those being scanned.

A backfill splits its collection into contiguous ``_id`` ranges ``[lo, hi)`` that follow
MongoDB's comparison order *across* types (MinKey, null, numbers, strings, objects, binary,
ObjectId, bool, dates, timestamps, MaxKey): the first range has no lower bound and the last
no upper bound, so together they cover the whole key space, whatever types the ``_id`` s
have. :func:`range_filter` turns a range into a query: MongoDB's ``$gte``/``$lt`` compare
within one type bracket only, so the types strictly between the bounds are named with
``$type``.

The ranges live in the state collection, one document each beside the migration's own
document (``range_of`` names the migration; :class:`~cdc_migrator.core.state.StateStore`
leaves them out of its listing). :class:`RangeStore` is the only writer of these documents:

    _id "NAME#range#00003", range_of NAME, kind "range", index, lo, hi (absent: unbounded),
    position (the last _id scanned; absent: not started), scanned, done,
    owner, claim, lease_until (time.time()), armed_at

    _id "NAME#plan", range_of NAME, kind "plan", state "planning" | "ready", by, until,
    ranges, armed_at, total, estimate (how total was estimated; null: counted)

A worker *claims* a range with one atomic ``findOneAndUpdate`` that matches only a range not
done whose lease is free or ran out, and writes its own claim token and a new lease. Every
later write of the worker (its position, renewals, done) is conditional on that token: once
the lease ran out and another worker took the range, the old worker's writes match nothing and
it lets the range go. Leases are compared with the workers' wall clocks: clocks of the
machines running workers must agree to well within the lease duration.

The first backfill process of a pass plans (:func:`plan`): it samples ``_id`` s of the whole
collection (``$sample`` first, so that MongoDB reads only what it picks, never every matching
document), lets the server sort them (so the split points follow MongoDB's order, mixed types
included) and cuts the key space at evenly spaced ones (:func:`quantiles`); a collection
sharded on a key ranged on ``_id`` is also cut where its chunks change shard. Every other
process started meanwhile waits for the plan and then takes ranges from it. While a worker
scans a range, :class:`LeaseKeeper` renews its lease.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ..base.bsontypes import at_or_after, before, compare
from ..base.identity import id_key
from ..base.naming import RANGE_OF
from ..base.topology import ShardedCollection
from ..core.state import BackfillState, StateStore

log = logging.getLogger("cdc_migrator.backfill")


@dataclass(frozen=True)
class KeyRange:
    """``[lo, hi)`` in BSON order; ``has_lo``/``has_hi`` False: unbounded on that side."""

    lo: Any = None
    hi: Any = None
    has_lo: bool = False
    has_hi: bool = False


def range_filter(key_range: KeyRange) -> dict[str, Any]:
    """The query of the documents whose ``_id`` lies in ``key_range`` ({} for everything)."""
    parts = []
    if key_range.has_lo:
        parts.append(at_or_after(key_range.lo))
    if key_range.has_hi:
        parts.append(before(key_range.hi))
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


def split(points: Sequence[Any]) -> list[KeyRange]:
    """The ranges that ``points`` (ascending in BSON order, distinct) cut the key space into:
    ``len(points) + 1`` of them, the first and last unbounded outwards."""
    ranges = []
    bounds = [(False, None), *((True, p) for p in points), (False, None)]
    for (has_lo, lo), (has_hi, hi) in zip(bounds, bounds[1:], strict=False):
        ranges.append(KeyRange(lo=lo, hi=hi, has_lo=has_lo, has_hi=has_hi))
    return ranges


def quantiles(sorted_ids: Sequence[Any], parts: int) -> list[Any]:
    """At most ``parts - 1`` split points from a sample of ``_id`` s sorted in BSON order (as
    the server sorted them): evenly spaced, each one distinct from the one before."""
    points: list[Any] = []
    seen: set[Any] = set()
    if parts <= 1 or not sorted_ids:
        return points
    for i in range(1, parts):
        candidate = sorted_ids[min(len(sorted_ids) - 1, i * len(sorted_ids) // parts)]
        key = id_key(candidate)
        if key in seen:
            continue
        seen.add(key)
        points.append(candidate)
    return points


@dataclass
class RangeState:
    """One range as stored."""

    id: str
    index: int
    key_range: KeyRange
    position: Any = None
    started: bool = False  # a position is saved (the scan resumes after it)
    scanned: int = 0
    done: bool = False
    owner: str | None = None
    claim: str | None = None
    lease_until: float | None = None

    @property
    def leased(self) -> bool:
        """Held by a worker whose lease has not run out."""
        return (not self.done and self.lease_until is not None
                and self.lease_until > time.time())

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> RangeState:
        return cls(
            id=doc["_id"], index=int(doc["index"]),
            key_range=KeyRange(lo=doc.get("lo"), hi=doc.get("hi"), has_lo="lo" in doc,
                               has_hi="hi" in doc),
            position=doc.get("position"), started="position" in doc,
            scanned=int(doc.get("scanned", 0)), done=bool(doc.get("done")),
            owner=doc.get("owner"), claim=doc.get("claim"), lease_until=doc.get("lease_until"))


@dataclass
class Claim:
    """A range this worker holds: its token makes every write conditional on still holding it."""

    range: RangeState
    token: str
    owner: str
    taken_from: str | None = None  # the worker whose lease ran out, when taken over


class RangeStore:
    """The range documents of the migrations in a state collection."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    # ------------------------------------------------------------------ reading

    def ranges(self, name: str) -> list[RangeState]:
        return [RangeState.from_document(d) for d in self.collection.find(
            {RANGE_OF: name, "kind": "range"}, sort=[("index", 1)])]

    def plan(self, name: str) -> dict[str, Any] | None:
        return self.collection.find_one({"_id": _plan_id(name)})

    def all_done(self, name: str, armed_at: Any) -> bool:
        """Whether the pass armed at ``armed_at`` is planned and every range of it is done
        (not while a ``--reset`` or a re-armed capture plans it again)."""
        plan = self.plan(name)
        if plan is None or plan.get("state") != "ready" or plan.get("armed_at") != armed_at:
            return False
        ranges = self.ranges(name)
        return bool(ranges) and all(r.done for r in ranges)

    def summary(self, name: str) -> dict[str, Any] | None:
        """What ``status`` shows of the ranges: how many are done, which are in progress (by
        whom, how far), how many are left (not started, or their worker's lease ran out).
        None before a backfill planned any."""
        ranges = self.ranges(name)
        if not ranges:
            return None
        in_progress = [{"range": r.index, "owner": r.owner, "scanned": r.scanned,
                        "lease_left_seconds": round(float(r.lease_until or 0) - time.time(), 1)}
                       for r in ranges if r.leased]
        done = sum(r.done for r in ranges)
        return {"total": len(ranges), "done": done, "in_progress": in_progress,
                "left": len(ranges) - done - len(in_progress)}

    def leased_count(self, name: str) -> int:
        """Ranges held by a live lease now: the backfill's working workers."""
        return self.collection.count_documents(
            {RANGE_OF: name, "kind": "range", "done": False, "lease_until": {"$gt": time.time()}})

    # ------------------------------------------------------------------ planning

    def begin_planning(self, name: str, owner: str, *, hold: float, armed_at: Any) -> bool:
        """Become the one process that plans the ranges of ``name`` (True), or learn that
        another one does or did (False). A planner that died is replaced once its ``hold``
        ran out; its partial plan is removed first."""
        until = time.time() + hold
        try:
            self.collection.insert_one({"_id": _plan_id(name), RANGE_OF: name, "kind": "plan",
                                        "state": "planning", "by": owner, "until": until,
                                        "armed_at": armed_at})
            return True
        except DuplicateKeyError:
            pass
        taken = self.collection.find_one_and_update(
            {"_id": _plan_id(name), "state": "planning", "until": {"$lt": time.time()}},
            {"$set": {"by": owner, "until": until, "armed_at": armed_at}})
        if taken is None:
            return False
        self.collection.delete_many({RANGE_OF: name, "kind": "range"})
        return True

    def save_plan(self, name: str, ranges: Sequence[KeyRange], *, armed_at: Any,
                  total: int = 0, estimate: str | None = None, first_position: Any = None,
                  first_started: bool = False) -> None:
        """Write the planned ranges, then mark the plan ready with the pass's documents
        (``total``, and how it was ``estimate`` d). ``first_position``: the first range resumes
        after it (a backfill begun by a version without ranges)."""
        docs = []
        for index, key_range in enumerate(ranges):
            doc: dict[str, Any] = {"_id": _range_id(name, index), RANGE_OF: name,
                                   "kind": "range", "index": index, "scanned": 0,
                                   "done": False, "owner": None, "claim": None,
                                   "lease_until": None, "armed_at": armed_at}
            if key_range.has_lo:
                doc["lo"] = key_range.lo
            if key_range.has_hi:
                doc["hi"] = key_range.hi
            if index == 0 and first_started:
                doc["position"] = first_position
            docs.append(doc)
        if docs:
            self.collection.insert_many(docs, ordered=False)
        self.collection.update_one({"_id": _plan_id(name)}, {"$set": {
            "state": "ready", "ranges": len(docs), "total": total, "estimate": estimate}})

    def forget(self, name: str) -> None:
        """Remove the plan and every range of ``name`` (reset, re-armed capture)."""
        self.collection.delete_many({RANGE_OF: name})

    # ------------------------------------------------------------------ leases

    def claim(self, name: str, owner: str, lease: float) -> Claim | None:
        """Take a range that is not done and whose lease is free or ran out (atomically), or
        None when there is none now."""
        token = uuid.uuid4().hex
        now = time.time()
        fields = {"owner": owner, "claim": token, "lease_until": now + lease}
        before = self.collection.find_one_and_update(
            {RANGE_OF: name, "kind": "range", "done": False,
             "$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}]},
            {"$set": fields}, sort=[("index", 1)], return_document=ReturnDocument.BEFORE)
        if before is None:
            return None
        return Claim(RangeState.from_document({**before, **fields}), token, owner,
                     taken_from=before.get("owner"))

    def renew(self, claim: Claim, lease: float) -> bool:
        """Extend the lease; False when the range is no longer ours."""
        result = self.collection.update_one(
            {"_id": claim.range.id, "claim": claim.token},
            {"$set": {"lease_until": time.time() + lease}})
        return result.matched_count > 0

    def save_position(self, claim: Claim, last_id: Any, scanned: int, lease: float) -> bool:
        """A batch of the range acknowledged by the broker; the lease is renewed with it.
        False when the range is no longer ours (taken over, reset, re-armed)."""
        result = self.collection.update_one(
            {"_id": claim.range.id, "claim": claim.token},
            {"$set": {"position": last_id, "lease_until": time.time() + lease},
             "$inc": {"scanned": scanned}})
        return result.matched_count > 0

    def finish(self, claim: Claim) -> bool:
        """Every document of the range was scanned; the lease is given up."""
        result = self.collection.update_one(
            {"_id": claim.range.id, "claim": claim.token},
            {"$set": {"done": True, "lease_until": None, "finished_by": claim.owner}})
        return result.matched_count > 0

    def release(self, claim: Claim) -> None:
        """Give the range back before its lease runs out (a worker stopping cleanly)."""
        self.collection.update_one({"_id": claim.range.id, "claim": claim.token},
                                   {"$set": {"lease_until": None, "owner": None}})


def _plan_id(name: str) -> str:
    return f"{name}#plan"


def _range_id(name: str, index: int) -> str:
    return f"{name}#range#{index:05d}"


# ---------------------------------------------------------------------- planning

#: A range holds at least this many documents: fewer ranges on a small collection.
MIN_RANGE_DOCUMENTS = 1_000
#: ``_id`` s sampled per range wanted, to place the split points.
SAMPLES_PER_RANGE = 20
#: How long a planner may take before another process takes its place, in seconds.
PLANNING_HOLD = 60.0
#: MongoDB's ``$sample`` reads only the documents it picks (a random cursor) as the first stage
#: of a collection of more than this many documents, for at most this share of them; anywhere
#: else it reads every document first (src/mongo/db/pipeline/pipeline_d.cpp).
RANDOM_CURSOR_MIN_DOCUMENTS = 100
RANDOM_CURSOR_MAX_SHARE = 0.05


def ranges_for(total: int, most: int) -> int:
    """How many ranges a collection of ``total`` documents is split into (at most ``most``)."""
    return max(1, min(most, total // MIN_RANGE_DOCUMENTS))


@dataclass
class Sample:
    """What the planner learns of a collection without reading it whole: sampled ``_id`` s in
    the server's order, and the documents to scan (``estimate``: how that was estimated; None:
    counted)."""

    ids: list[Any]
    total: int
    estimate: str | None = None


def sample(collection: Collection, base_filter: Mapping[str, Any] | None, size: int, *,
           sharded: bool = False) -> Sample:
    """``size`` random ``_id`` s of the whole collection, and how many documents match
    ``base_filter``.

    ``$sample`` comes first and the filter after it, on the sample: with the filter first,
    ``$sample`` reads and sorts every matching document. The total is then the collection's
    metadata count (a sharded cluster's counts orphaned documents too) times the share of the
    sample that matches. A collection too small for MongoDB's random cursor is read whole anyway,
    and counted exactly.
    """
    listed = collection.estimated_document_count()
    ids_stages: list[dict[str, Any]] = [{"$project": {"_id": 1}}, {"$sort": {"_id": 1}}]
    if listed <= RANDOM_CURSOR_MIN_DOCUMENTS or size > RANDOM_CURSOR_MAX_SHARE * listed:
        ids = [d["_id"] for d in collection.aggregate([{"$sample": {"size": size}}, *ids_stages])]
        return Sample(ids, collection.count_documents(dict(base_filter or {})))
    metadata = "the collection's metadata count" + (
        ", orphaned documents included (sharded cluster)" if sharded else "")
    if not base_filter:
        ids = [d["_id"] for d in collection.aggregate([{"$sample": {"size": size}}, *ids_stages])]
        return Sample(ids, listed, metadata)
    found = next(collection.aggregate([{"$sample": {"size": size}}, {"$facet": {
        "ids": ids_stages, "matching": [{"$match": dict(base_filter)}, {"$count": "n"}]}}]))
    ids = [d["_id"] for d in found["ids"]]
    matching = found["matching"][0]["n"] if found["matching"] else 0
    return Sample(ids, round(listed * matching / max(1, len(ids))),
                  f"{metadata} times the share of a sample of {len(ids)} that matches")


def split_points(collection: Collection, base_filter: Mapping[str, Any] | None,
                 parts: int) -> list[Any]:
    """Up to ``parts - 1`` ``_id`` s that cut the collection into ``parts`` ranges of about
    equal size, ascending in the server's order."""
    if parts <= 1:
        return []
    return quantiles(sample(collection, base_filter, parts * SAMPLES_PER_RANGE).ids, parts)


def with_boundaries(points: Sequence[Any], boundaries: Sequence[Any]) -> list[Any]:
    """``points`` and ``boundaries`` (each ascending in the server's order) as one ascending
    list, each value once; a point whose order against a boundary is not known here
    (:func:`~cdc_migrator.base.bsontypes.compare`) is left out: the boundaries are what must
    cut."""
    gaps: list[list[Any]] = [[] for _ in range(len(boundaries) + 1)]
    for point in points:
        order = [compare(b, point) for b in boundaries]
        if None in order or 0 in order:
            continue
        gaps[sum(1 for o in order if o is not None and o < 0)].append(point)
    merged = list(gaps[0])
    for boundary, gap in zip(boundaries, gaps[1:], strict=True):
        merged += [boundary, *gap]
    return merged


@dataclass
class Planned:
    """A pass planned (or found planned): whether it resumes earlier work, its documents."""

    resumed: bool
    total: int
    estimate: str | None = None


def plan(collection: Collection, base_filter: Mapping[str, Any] | None, ranges: RangeStore,
         store: StateStore, name: str, *, owner: str, most: int, armed_at: Any,
         saved: BackfillState | None, reset: bool, wait: threading.Event,
         sharded: ShardedCollection | None = None) -> Planned:
    """Make sure the ranges of this pass exist, planning them if no process did.

    The split points come from a sample (:func:`sample`); on a collection sharded on a key
    ranged on ``_id`` (``sharded``), the pass is also cut where its chunks change shard, so that
    each range is read from one shard. A backfill saved by a version without ranges (one
    position, ``saved.position``) goes on from there: the first range starts after it.
    """
    if reset:
        ranges.forget(name)
    while True:
        existing = ranges.plan(name)
        if existing is not None and existing.get("armed_at") != armed_at:
            ranges.forget(name)  # a plan of an earlier pass (capture re-armed since)
            continue
        if existing is not None and existing.get("state") == "ready":
            total, estimate = int(existing.get("total") or 0), existing.get("estimate")
            store.start_backfill(name, total, over=False, estimate=estimate)
            return Planned(any(r.started or r.done for r in ranges.ranges(name)), total,
                           estimate)
        if ranges.begin_planning(name, owner, hold=PLANNING_HOLD, armed_at=armed_at):
            break
        wait.wait(0.2)  # another process plans now
        if wait.is_set():
            return Planned(False, 0)
    old = saved.position if saved is not None and not reset else None
    found = sample(collection, base_filter, most * SAMPLES_PER_RANGE, sharded=sharded is not None)
    points = quantiles(found.ids, ranges_for(found.total, most))
    if old is not None:  # what is before the saved position was scanned
        points = [p for p in points if (compare(p, old.last) or 1) > 0]
    by_chunks = sharded is not None and sharded.ranged_on_id
    if by_chunks:
        assert sharded is not None
        points = with_boundaries(points, sharded.shard_boundaries())
    store.start_backfill(name, found.total, over=old is None, estimate=found.estimate)
    ranges.save_plan(name, split(points), armed_at=armed_at, total=found.total,
                     estimate=found.estimate, first_position=old.last if old else None,
                     first_started=old is not None)
    log.info("backfill planned in %d ranges%s%s", len(points) + 1,
             ", cut where the chunks change shard" if by_chunks else "",
             " (resuming the saved position of an earlier version)" if old else "")
    return Planned(old is not None, found.total, found.estimate)


# ---------------------------------------------------------------------- keeping


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
