"""The state of each migration: a typed model, and the named operations that change it.

One document per migration lives in the state collection. :class:`MigrationState` is what a
reader gets (typed, with the phase an :class:`Phase`); :class:`StateStore` has one method per
change the pieces make (arm, save the tailer's position, record a backfill batch, ...), so no
module writes a field path of the document by hand. Counters are updated with ``$inc`` so that
several processes share one document.

The stored layout (``schema_version`` 2)::

    _id, collection, phase, paused, cancelled, created_at, updated_at, completed_at,
    counts {produced, skipped, consumed, applied, updated, deleted, unchanged, failed, retried,
            dependency},
    errors [failure records], last_error, failure {reason, at, ...},
    stopped {consumer|tailer: stop record}, stalled {consumer: stop record},
    apply {started, done, cursor},
    backfill {total, estimate, scanned, done, cursor, started_at},
    reverted_at (after ``revert``: phase ``reverting``, then ``reverted``),
    old_shape {schema, enforced} (what enforces the old shape after ``revert``),
    tail {armed_at, armed_token, resume_token, heartbeat, last_event_time, position_time,
          stopped_at, recoveries, last_recovery {reason, at, armed_at, backfill}},
    fences {FENCE_ID: {partitions: {P: true}}}, dlq_pending, dlq_offset,
    consumers {MEMBER: {member_id, at}} (each group member's last sign of life),
    throttle {rate, set_at, auto {bound, value, limit, unit, by, at, until, since},
              members {MEMBER: {at, weight}}, lag_unknown {reason, fix, by, at}},
    announced {EVENT: occurrence} (the phase changes the hooks were told of),
    code {fingerprint, since, members {MEMBER: {component, fingerprint, holding, host, at}}}

``code.fingerprint`` is the code in force (:mod:`cdc_migrator.core.fingerprint`): recorded
when capture is armed (or ``apply`` starts), replaced only by ``accept``; each tailer,
consumer and backfill reports the code it runs under ``code.members`` (see
:mod:`cdc_migrator.core.holding`). The phase changes are also appended to the history
(:mod:`cdc_migrator.core.history`), which ``reset`` keeps.

The ranges of a shared backfill are documents of their own in the same collection (with a
``range_of`` field, see :mod:`cdc_migrator.capture.leases`); :meth:`StateStore.all` leaves them
out. A document written before ranges existed (``backfill.cursor``, one position) is resumed
as ranges: the first one starts after that position.

A document written by version 1 (no ``schema_version``; phases as display strings such as
``"ready for cutover"``) is read as the same state: a migration running during an upgrade
carries on.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import pymongo
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database

from ..base import naming
from ..base.checks import OPTIONS, Source
from ..base.naming import RANGE_OF
from ..errors import UNEXPECTED, ServiceUnavailable, SettingError
from .history import Event, History

log = logging.getLogger("cdc_migrator.state")

SCHEMA_VERSION = 2
MAX_ERRORS_KEPT = 50
#: An idle tailer writes its state at most this often (seconds): the latest resume token, so the
#: saved resume point stays seconds behind the server's history instead of aging toward its end,
#: and the heartbeat that tells `status` it runs. While events flow it writes every
#: ``flush_interval`` (200 ms) instead, after the broker acknowledged them.
HEARTBEAT_INTERVAL = 10.0
#: `status` counts a tailer as running while its heartbeat is younger than this.
HEARTBEAT_STALE_AFTER = 3 * HEARTBEAT_INTERVAL
#: A consumer reports itself alive (its group member id) this often.
CONSUMER_HEARTBEAT_INTERVAL = 2.0
#: A group member whose consumer has not reported for this long is silent: killed, most
#: likely, though the broker keeps it in the group until its session times out.
CONSUMER_SILENT_AFTER = 5 * CONSUMER_HEARTBEAT_INTERVAL
#: Reports older than this are forgotten (a consumer that started clears them).
CONSUMER_FORGOTTEN_AFTER = 600.0
#: A member reports the code it runs at least this often (seconds), and at once when it
#: starts or stops holding.
CODE_REPORT_INTERVAL = 10.0
#: A member counts as running while its last report is younger than this.
CODE_REPORT_STALE_AFTER = 3 * CODE_REPORT_INTERVAL


class Phase(StrEnum):
    """Where a migration is, in the order it normally goes through them."""

    ARMED = "armed"
    BACKFILLING = "backfilling"
    CATCHING_UP = "catching_up"
    READY = "ready"
    CUT_OVER = "cut_over"
    FAILED = "failed"
    CANCELLED = "cancelled"
    APPLYING = "applying"
    APPLIED = "applied"
    # After cutover, `revert` runs the inverse as a migration of its own (naming.revert):
    # the forward one is reverting meanwhile, and reverted once that reverse is cut over.
    REVERTING = "reverting"
    REVERTED = "reverted"

    @property
    def label(self) -> str:
        """How ``status`` shows the phase."""
        return _LABELS.get(self, self.value)

    @classmethod
    def parse(cls, stored: Any) -> Phase | None:
        """The phase of a stored value, today's or version 1's (its display strings)."""
        if stored is None:
            return None
        if isinstance(stored, str) and stored in _BY_LABEL:
            return _BY_LABEL[stored]
        return cls(stored)


_LABELS = {Phase.CATCHING_UP: "catching up", Phase.READY: "ready for cutover",
           Phase.CUT_OVER: "cut over"}
_BY_LABEL = {**{p.value: p for p in Phase}, **{label: p for p, label in _LABELS.items()}}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Counts:
    """What the pieces did, summed over every process."""

    produced: int = 0
    skipped: int = 0
    consumed: int = 0
    applied: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    retried: int = 0
    #: Of ``produced``: dependency events (a change to a ``depends_on`` collection, one per
    #: migrated document it affects).
    dependency: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Position:
    """Where a scan stands: after the ``_id`` ``last`` (any BSON value, None included)."""

    last: Any


@dataclass
class BackfillState:
    total: int | None = None
    estimate: str | None = None  # how total was estimated (None: counted)
    scanned: int = 0
    done: bool = False
    position: Position | None = None  # None: not started, or started over
    started_at: dt.datetime | None = None


@dataclass
class ApplyState:
    started: bool = False
    done: bool = False
    position: Position | None = None


@dataclass
class TailState:
    armed_at: Any = None  # the cluster time capture starts from (a bson Timestamp)
    # The change stream's own token for that point (its postBatchResumeToken when armed);
    # None for a migration armed by a version that took ping's operationTime instead.
    armed_token: Any = None
    resume_token: Any = None
    heartbeat: float | None = None  # time.time() of the tailer's last checkpoint
    last_event_time: Any = None
    position_time: float | None = None
    stopped_at: float | None = None
    recoveries: int = 0
    last_recovery: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        """Whether a tailer checkpointed recently and has not recorded a stop since."""
        if self.heartbeat is None:
            return False
        if self.stopped_at is not None and self.stopped_at >= self.heartbeat:
            return False
        return time.time() - self.heartbeat < HEARTBEAT_STALE_AFTER


@dataclass
class ThrottleState:
    """The pace set for the migration (``cdc-migrator throttle``) and the hold in force."""

    rate: float | None = None  # documents per second, for all workers together
    #: Why the stored rate was refused (written by an older version or by hand: not a finite
    #: number above 0); ``rate`` is then None and the workers keep the pace they had.
    refused: str | None = None
    set_at: dt.datetime | None = None
    auto: dict[str, Any] | None = None  # the last automatic hold (a bound exceeded)
    members: dict[str, tuple[float, float]] = field(default_factory=dict)  # at, weight
    # Why the replication lag could not be read, while a bound runs without it.
    lag_unknown: dict[str, Any] | None = None

    @property
    def holding(self) -> bool:
        """Whether an automatic hold is in force now."""
        return self.auto is not None and float(self.auto.get("until") or 0) > time.time()


@dataclass
class MemberCode:
    """What one member of a migration (a tailer, a consumer, a backfill) last reported of the
    code it runs."""

    component: str
    fingerprint: str
    holding: bool  # its code is not the code in force: it applies nothing
    host: str = "?"
    at: float = 0.0  # time.time() of the report

    @property
    def live(self) -> bool:
        return time.time() - self.at < CODE_REPORT_STALE_AFTER


@dataclass
class CodeState:
    """The code in force, and the code each member reported it runs."""

    fingerprint: str | None = None
    since: dt.datetime | None = None
    members: dict[str, MemberCode] = field(default_factory=dict)

    def live_members(self) -> dict[str, MemberCode]:
        return {name: m for name, m in self.members.items() if m.live}

    def applying_other_code(self) -> list[str]:
        """The live members still applying code other than the code in force: they have not
        looked since it changed (they hold once they do)."""
        return sorted(name for name, m in self.live_members().items()
                      if not m.holding and self.fingerprint is not None
                      and m.fingerprint != self.fingerprint)

    def holding(self) -> list[str]:
        """The live members holding: the code they run is not the code in force."""
        return sorted(name for name, m in self.live_members().items() if m.holding)


@dataclass
class MigrationState:
    """One migration's state, as read from its document."""

    name: str
    collection: str | None = None
    phase: Phase | None = None
    paused: bool = False
    cancelled: bool = False
    counts: Counts = field(default_factory=Counts)
    errors: list[dict[str, Any]] = field(default_factory=list)
    last_error: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    stopped: dict[str, dict[str, Any]] = field(default_factory=dict)
    stalled: dict[str, dict[str, Any]] = field(default_factory=dict)
    apply: ApplyState | None = None
    backfill: BackfillState | None = None
    tail: TailState = field(default_factory=TailState)
    fences: dict[str, set[int]] = field(default_factory=dict)
    dlq_pending: int = 0
    dlq_offset: int = 0
    throttle: ThrottleState = field(default_factory=ThrottleState)
    #: The Kafka member id of each consumer that reported itself, and when (time.time()).
    consumers: dict[str, float] = field(default_factory=dict)
    code: CodeState = field(default_factory=CodeState)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    reverted_at: dt.datetime | None = None
    #: After ``revert``: the old shape's schema (``old_schema``, or None) and whether the
    #: server enforces it (its validator installed), as the reverse's cutover left it.
    old_shape: dict[str, Any] | None = None

    @property
    def reverted(self) -> bool:
        """Whether ``revert`` took (or is taking) this migration back: its own tailer and
        consumers stand down, or they would migrate again what the reverse puts back."""
        return self.phase in (Phase.REVERTING, Phase.REVERTED)

    @property
    def armed(self) -> bool:
        """Whether change capture is armed: the backfill may read."""
        return self.tail.armed_at is not None

    @property
    def failed(self) -> bool:
        return self.phase is Phase.FAILED or self.failure is not None

    @property
    def failure_reason(self) -> str:
        """Why the migration failed, in a line."""
        return ((self.last_error or {}).get("error") or (self.failure or {}).get("reason")
                or "see `cdc-migrator status`")

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> MigrationState:
        """The state a stored document holds, in today's layout or version 1's."""
        backfill = doc.get("backfill")
        apply_ = doc.get("apply")
        tail = doc.get("tail") or {}
        counts = doc.get("counts") or {}
        throttle = doc.get("throttle") or {}
        code = doc.get("code") or {}
        return cls(
            name=doc["_id"],
            collection=doc.get("collection"),
            phase=Phase.parse(doc.get("phase")),
            paused=bool(doc.get("paused")),
            cancelled=bool(doc.get("cancelled")),
            counts=Counts(**{f.name: int(counts.get(f.name, 0)) for f in fields(Counts)}),
            errors=list(doc.get("errors") or []),
            last_error=doc.get("last_error"),
            failure=doc.get("failure"),
            stopped={k: v for k, v in (doc.get("stopped") or {}).items() if v},
            stalled={k: v for k, v in (doc.get("stalled") or {}).items() if v},
            apply=None if apply_ is None else ApplyState(
                started=bool(apply_.get("started")), done=bool(apply_.get("done")),
                position=Position(apply_["cursor"]) if "cursor" in apply_ else None),
            backfill=None if backfill is None else BackfillState(
                total=backfill.get("total"), estimate=backfill.get("estimate"),
                scanned=int(backfill.get("scanned", 0)),
                done=bool(backfill.get("done")),
                position=Position(backfill["cursor"]) if "cursor" in backfill else None,
                started_at=backfill.get("started_at")),
            tail=TailState(**{f.name: tail.get(f.name, f.default)
                              for f in fields(TailState)}),
            fences={fence: {int(p) for p in (entry or {}).get("partitions") or {}}
                    for fence, entry in (doc.get("fences") or {}).items()},
            dlq_pending=int(doc.get("dlq_pending", 0)),
            dlq_offset=int(doc.get("dlq_offset", 0)),
            throttle=ThrottleState(
                *_throttle_rate(doc["_id"], throttle.get("rate")), set_at=throttle.get("set_at"),
                auto=throttle.get("auto"), lag_unknown=throttle.get("lag_unknown"),
                members={m: (float(v.get("at", 0)), float(v.get("weight", 0)))
                         for m, v in (throttle.get("members") or {}).items()}),
            consumers={str(v.get("member_id")): float(v.get("at") or 0)
                       for v in (doc.get("consumers") or {}).values()
                       if isinstance(v, Mapping) and v.get("member_id")},
            code=CodeState(
                fingerprint=code.get("fingerprint"), since=code.get("since"),
                members={m: MemberCode(
                    component=str(v.get("component") or "?"),
                    fingerprint=str(v.get("fingerprint") or ""),
                    holding=bool(v.get("holding")), host=str(v.get("host") or "?"),
                    at=float(v.get("at") or 0)) for m, v in (code.get("members") or {}).items()
                    if v}),
            created_at=doc.get("created_at"),
            updated_at=doc.get("updated_at"),
            completed_at=doc.get("completed_at"),
            reverted_at=doc.get("reverted_at"),
            old_shape=doc.get("old_shape"),
        )


def _throttle_rate(name: str, stored: Any) -> tuple[float | None, str | None]:
    """The rate ``throttle`` stored, checked as ``throttle --rate`` checks it: (rate, None), or
    (None, the refusal) for a value no version of ``throttle`` takes now."""
    try:
        return OPTIONS["rate"].check(stored, Source("state", "throttle.rate", name)), None
    except SettingError as exc:
        return None, (f"{exc}; the workers keep the pace they had. Replace it: `cdc-migrator "
                      f"throttle {name} --rate DOCS/S` or `--off`")


#: How long a stopping piece tries to leave its last word in the state: MongoDB may be why it
#: stops, and the deadline it gave up on is not to be waited out again.
LAST_WORD_SECONDS = 2.0


def last_word(write: Callable[[], Any], exc: BaseException | None = None) -> None:
    """A stopping piece's last write to the state (why it stopped, that it stopped), best
    effort: within :data:`LAST_WORD_SECONDS`, and not at all when it stops because MongoDB was
    unavailable past the retry deadline (``exc``). The exit code tells in any case."""
    if isinstance(exc, ServiceUnavailable) and exc.service == "MongoDB":
        log.debug("MongoDB is unavailable: the stop is not recorded in the state")
        return
    try:
        with pymongo.timeout(LAST_WORD_SECONDS):
            write()
    except Exception as failure:
        log.debug("could not record the stop: %s", failure)


def stop_record(component: str, error: str, doc_id: Any = None,
                reason: str = UNEXPECTED) -> dict[str, Any]:
    """Why a piece (``consumer``, ``tailer``) stopped: kept under ``stopped.<component>`` and as
    ``last_error`` until the piece runs again, for ``status``, ``/readyz`` and the metrics.
    ``reason`` is the error's code (:func:`~cdc_migrator.errors.reason_of`), the metrics'
    label; the message stays in ``error``."""
    return {"component": component, "error": error, "id": doc_id, "reason": reason, "at": now()}


def failure_record(doc_id: Any, error: str, source: str) -> dict[str, Any]:
    """A document whose transform raised or whose write was refused."""
    return {"id": doc_id, "error": error, "source": source, "at": now()}


class StateStore:
    """The state documents in ``db[collection_name]``, read as :class:`MigrationState` and
    changed by named operations."""

    def __init__(self, db: Database, collection_name: str = naming.STATE_COLLECTION) -> None:
        self.collection: Collection = db[collection_name]
        self.history = History(db)

    # ------------------------------------------------------------------ reading

    def get(self, name: str) -> MigrationState | None:
        doc = self.collection.find_one({"_id": name})
        return None if doc is None else MigrationState.from_document(doc)

    def all(self) -> list[MigrationState]:
        return [MigrationState.from_document(d) for d in
                self.collection.find({RANGE_OF: {"$exists": False}}).sort("_id", 1)]

    def ensure(self, name: str, collection: str) -> MigrationState:
        """The state of ``name``, created when missing."""
        doc = self.collection.find_one_and_update(
            {"_id": name},
            {"$setOnInsert": {"collection": collection, "phase": None, "created_at": now(),
                              "counts": {}, "errors": [], "paused": False,
                              "schema_version": SCHEMA_VERSION}},
            upsert=True, return_document=ReturnDocument.AFTER)
        assert doc is not None  # an upsert that returns the document after it returns one
        return MigrationState.from_document(doc)

    def delete(self, name: str) -> None:
        """Forget the state of ``name`` (``reset``); its history keeps it, and the reset."""
        gone = self.collection.find_one_and_delete({"_id": name})
        self.collection.delete_many({RANGE_OF: name})  # its backfill's ranges
        if gone is not None:
            was = MigrationState.from_document(gone)
            self.history.record(name, was.collection, Event.RESET,
                                fingerprint=was.code.fingerprint,
                                phase=was.phase.value if was.phase else None)

    # ------------------------------------------------------------------ operator

    def pause(self, name: str) -> None:
        self._set(name, paused=True)

    def resume(self, name: str) -> None:
        self._set(name, paused=False)

    def cancel(self, name: str) -> None:
        self._set(name, cancelled=True, phase=Phase.CANCELLED)
        self._record(name, Event.CANCELLED)

    # ------------------------------------------------------------------ capture

    def arm(self, name: str, armed_at: Any, armed_token: Any,
            fingerprint: str | None = None) -> None:
        """Fix the point capture starts from (only when none is fixed yet): the change
        stream's token for it and its cluster time; a migration without a phase is then
        armed. ``fingerprint``: the code armed, in force unless another one is already."""
        armed = self.collection.update_one(
            {"_id": name, "tail.armed_at": None},
            {"$set": {"tail.armed_at": armed_at, "tail.armed_token": armed_token,
                      "updated_at": now()}}).modified_count
        self.collection.update_one({"_id": name, "phase": None},
                                   {"$set": {"phase": Phase.ARMED}})
        if fingerprint is not None:
            self.adopt_code(name, fingerprint)
        if armed:
            self._record(name, Event.ARMED, armed_at=armed_at)

    def rearm(self, name: str, armed_at: Any, armed_token: Any,
              recovery: dict[str, Any]) -> None:
        """Capture again from ``armed_token`` (at ``armed_at``) after the change history was
        lost: the resume token and the backfill are forgotten, the recovery is counted and
        kept."""
        self.collection.update_one({"_id": name}, {
            "$set": {"phase": Phase.ARMED, "tail.armed_at": armed_at,
                     "tail.armed_token": armed_token,
                     "tail.last_recovery": recovery, "updated_at": now()},
            "$unset": {"tail.resume_token": "", "tail.position_time": "", "backfill": "",
                       "failure": ""},
            "$inc": {"tail.recoveries": 1},
        })
        # The ranges of the old pass go too: their workers' next writes match nothing.
        self.collection.delete_many({RANGE_OF: name})
        self._record(name, Event.REARMED, reason=recovery.get("reason"))

    def finish_recovery(self, name: str) -> None:
        """The backfill of a recovery after lost history finished."""
        self._set(name, **{"tail.last_recovery.backfill": "done"})

    def save_tail_position(self, name: str, *, resume_token: Any, last_event_time: Any,
                           position_time: float | None, produced: int, skipped: int,
                           dependency: int = 0) -> None:
        """The tailer's checkpoint, after the broker acknowledged every event before it: the
        resume token, the heartbeat, and the events produced or skipped since the last one
        (``dependency``: how many of those produced were dependency events).
        Running again, the tailer clears the stop it may have recorded."""
        fields_: dict[str, Any] = {"tail.resume_token": resume_token,
                                   "tail.heartbeat": time.time()}
        if last_event_time is not None:
            fields_["tail.last_event_time"] = last_event_time
        if position_time is not None:
            fields_["tail.position_time"] = position_time
        self._update(name, {"$set": fields_, "$unset": {"stopped.tailer": ""},
                            **_inc({"produced": produced, "skipped": skipped,
                                    "dependency": dependency})})

    def tailer_stopped(self, name: str) -> None:
        """A tailer stopped cleanly: none runs until the next heartbeat."""
        self._set_if_exists(name, **{"tail.stopped_at": time.time()})

    def start_backfill(self, name: str, total: int, *, over: bool,
                       estimate: str | None = None) -> None:
        """A backfill pass begins (``over``: from the first document, forgetting the last);
        ``estimate`` says how ``total`` was estimated (None: counted)."""
        update: dict[str, Any] = {"$set": {
            "phase": Phase.BACKFILLING, "backfill.total": total, "backfill.done": False,
            "backfill.estimate": estimate, "updated_at": now()}}
        if over:
            update["$set"].update({"backfill.scanned": 0, "backfill.started_at": now()})
            update["$unset"] = {"backfill.cursor": ""}
        else:
            update["$min"] = {"backfill.started_at": now()}
        self.collection.update_one({"_id": name}, update)

    def save_backfill_position(self, name: str, *, last_id: Any, scanned: int, produced: int,
                               armed_at: Any) -> bool:
        """A backfill batch acknowledged by the broker. False when capture was armed again
        meanwhile (the history was lost): this pass is over, a new one follows."""
        return self._update(name, {
            "$set": {"backfill.cursor": last_id, "backfill.scanned": scanned},
            **_inc({"produced": produced})}, where={"tail.armed_at": armed_at})

    def record_backfill_batch(self, name: str, *, scanned: int, armed_at: Any) -> bool:
        """A batch of one range of a shared backfill, acknowledged by the broker (several
        workers add to the same counters). False when capture was armed again meanwhile."""
        return self._update(name, {"$inc": {"backfill.scanned": scanned,
                                            "counts.produced": scanned}},
                            where={"tail.armed_at": armed_at})

    def finish_backfill(self, name: str, *, armed_at: Any) -> bool:
        """Every document was scanned; False when capture was armed again meanwhile."""
        before = self.collection.find_one_and_update(
            {"_id": name, "tail.armed_at": armed_at},
            {"$set": {"phase": Phase.CATCHING_UP, "backfill.done": True, "updated_at": now()}},
            projection={"backfill": 1})
        if before is None:
            return False
        backfill = before.get("backfill") or {}
        if not backfill.get("done"):  # the first process to finish the pass tells
            self._record(name, Event.BACKFILLED, scanned=backfill.get("scanned"))
        return True

    # ------------------------------------------------------------------ throttle

    def set_throttle(self, name: str, rate: float | None) -> None:
        """The pace of every backfill worker and consumer together (None: no limit)."""
        if rate is None:
            self.collection.update_one({"_id": name}, {
                "$unset": {"throttle.rate": "", "throttle.members": ""},
                "$set": {"throttle.set_at": now(), "updated_at": now()}})
        else:
            self._set(name, **{"throttle.rate": float(rate), "throttle.set_at": now()})

    def record_auto_throttle(self, name: str, record: dict[str, Any]) -> None:
        """A bound was found exceeded: every worker holds until ``record["until"]``. A hold
        renewed before it ran out keeps the ``since`` of the first one (how long the migration
        has been held without a break)."""
        renewed = {f"throttle.auto.{k}": v for k, v in record.items() if k != "since"}
        held = self.collection.update_one(
            {"_id": name, "throttle.auto.bound": record.get("bound"),
             "throttle.auto.until": {"$gt": record.get("at", time.time())}},
            {"$set": renewed})
        if not held.matched_count:
            self.collection.update_one({"_id": name}, {"$set": {"throttle.auto": {
                **record, "since": record.get("at", time.time())}}})

    def record_lag_unknown(self, name: str, record: dict[str, Any] | None) -> None:
        """The replication lag could not be read (``record``: why, and the fix) and its bound
        runs without it; None: it can be read again."""
        if record is None:
            self.collection.update_one({"_id": name}, {"$unset": {"throttle.lag_unknown": ""}})
        else:
            self.collection.update_one({"_id": name},
                                       {"$set": {"throttle.lag_unknown": record}})

    def report_member(self, name: str, member: str, weight: float, *,
                      forget: Iterable[str] = ()) -> None:
        """A consumer counts in the shares of the rate with ``weight`` (its partitions);
        members seen stale are forgotten."""
        update: dict[str, Any] = {"$set": {f"throttle.members.{member}": {
            "at": time.time(), "weight": weight}}}
        gone = {f"throttle.members.{m}": "" for m in forget}
        if gone:
            update["$unset"] = gone
        self.collection.update_one({"_id": name}, update)

    def consumer_alive(self, name: str, member_id: str, *, forget: Iterable[str] = ()) -> None:
        """A consumer's sign of life, under its group member id (``status`` tells a member
        that stopped reporting, yet is still in the group, from one at work); the members
        in ``forget`` (reported too long ago) are removed."""
        key = member_id.replace(".", "_").replace("$", "_")  # a field name
        update: dict[str, Any] = {"$set": {f"consumers.{key}": {"member_id": member_id,
                                                                  "at": time.time()}}}
        gone = {f"consumers.{m.replace('.', '_').replace('$', '_')}": "" for m in forget
                if m != member_id}
        if gone:
            update["$unset"] = gone
        self.collection.update_one({"_id": name}, update)

    # ------------------------------------------------------------------ apply

    def start_apply(self, name: str, *, resumed: bool) -> None:
        update: dict[str, Any] = {"$set": {"phase": Phase.APPLYING, "apply.started": resumed,
                                           "apply.done": False, "updated_at": now()}}
        if not resumed:
            update["$unset"] = {"apply.cursor": ""}
        self.collection.update_one({"_id": name}, update)

    def save_apply_position(self, name: str, *, last_id: Any, counts: Mapping[str, int],
                            failures: Iterable[dict[str, Any]]) -> None:
        self._update(name, {"$set": {"apply.cursor": last_id, "apply.started": True},
                            **_inc(counts)}, errors=failures)

    def finish_apply(self, name: str) -> None:
        self._set(name, phase=Phase.APPLIED, **{"apply.done": True})

    def record_applied(self, name: str, *, counts: Mapping[str, int],
                       failures: Iterable[dict[str, Any]],
                       fences: Iterable[tuple[str, int]] = (), clear_stop: bool = False) -> None:
        """A consumed batch: its counts and failures, and the fences it passed (each fence id
        with the partition it passed in). ``clear_stop``: the consumer made progress, so a
        stop or stall it recorded before is over."""
        passed = {f"fences.{fence}.partitions.{p}": True for fence, p in fences}
        cleared = {"stopped.consumer": "", "stalled.consumer": ""} if clear_stop else {}
        self._update(name, {"$set": passed, "$unset": cleared, **_inc(counts)},
                     errors=failures)

    def add_counts(self, name: str, counts: Mapping[str, int]) -> None:
        self._update(name, _inc(counts))

    def add_dead_letters(self, name: str, sent: int) -> None:
        """Dead letters written to the dead-letter topic, unresolved until ``dlq retry``."""
        if sent:
            self.collection.update_one({"_id": name}, {"$inc": {"dlq_pending": sent}})

    def resolve_dead_letters(self, name: str, *, offset: int, pending: int) -> None:
        """``dlq retry`` replayed the dead letters up to ``offset``; ``pending`` failed again."""
        self._set(name, dlq_offset=offset, dlq_pending=pending)

    # ------------------------------------------------------------------ stops and failures

    def record_stop(self, name: str, component: str, record: dict[str, Any], *,
                    failed: bool = False) -> None:
        """Why a piece stopped (kept until it runs again); ``failed``: the migration too."""
        fields_: dict[str, Any] = {f"stopped.{component}": record, "last_error": record}
        if failed:
            fields_["phase"] = Phase.FAILED
        self._set_if_exists(name, **fields_)

    def record_stall(self, name: str, component: str, record: dict[str, Any]) -> None:
        self._set_if_exists(name, **{f"stalled.{component}": record})

    def fail(self, name: str, reason: str, message: str, **details: Any) -> None:
        """The migration cannot go on (its collection dropped, its history lost)."""
        self._set(name, phase=Phase.FAILED, failure={"reason": reason, "at": now(), **details},
                  last_error={"error": message})

    # ------------------------------------------------------------------ cutover

    def mark_ready(self, name: str) -> None:
        self._set(name, phase=Phase.READY)

    def mark_cut_over(self, name: str) -> None:
        """Cut over: recorded complete, with its counts in the history; the fences it waited
        for are forgotten."""
        self.collection.update_one({"_id": name}, {
            "$set": {"phase": Phase.CUT_OVER, "completed_at": now(), "updated_at": now()},
            "$unset": {"fences": ""}})
        state = self.get(name)
        self._record(name, Event.CUT_OVER, counts=state.counts.as_dict() if state else None)

    def mark_reverting(self, name: str) -> None:
        """``revert`` started taking a cut-over migration back."""
        self._set(name, phase=Phase.REVERTING)
        self._record(name, Event.REVERTING)

    def mark_reverted(self, name: str, old_shape: dict[str, Any]) -> None:
        """The reverse run of ``name`` was cut over: every document is in the old shape;
        ``old_shape`` says what enforces it from now on (``{schema, enforced}``)."""
        self._set(name, phase=Phase.REVERTED, reverted_at=now(), old_shape=old_shape)
        self._record(name, Event.REVERTED)

    # ------------------------------------------------------------------ code

    def adopt_code(self, name: str, fingerprint: str) -> None:
        """``fingerprint`` becomes the code in force, unless one is recorded already."""
        self.collection.update_one({"_id": name, "code.fingerprint": None}, {
            "$set": {"code.fingerprint": fingerprint, "code.since": now()}})

    def accept(self, name: str, fingerprint: str, *, previous: str | None,
               armed: bool) -> bool:
        """``accept``: ``fingerprint`` replaces the code in force ``previous``, and what ran
        starts over so that every document meets the new code: a new backfill pass (``armed``:
        the backfill and its ranges forgotten), or ``apply`` from the first document. False
        when the code in force is no longer ``previous`` (another accept came first)."""
        forget = {"backfill": ""} if armed else {"apply": ""}
        fields_: dict[str, Any] = {"code.fingerprint": fingerprint, "code.since": now(),
                                   "updated_at": now()}
        if armed:
            fields_["phase"] = Phase.ARMED
        changed = self.collection.update_one(
            {"_id": name, "code.fingerprint": previous},
            {"$set": fields_, "$unset": forget}).modified_count
        if not changed:
            return False
        if armed:
            self.collection.delete_many({RANGE_OF: name})
        self._record(name, Event.ACCEPTED, previous=previous)
        return True

    def report_code(self, name: str, member: str, report: MemberCode) -> None:
        """What one member runs (its code, whether it holds); nothing without a state."""
        self.collection.update_one({"_id": name}, {"$set": {f"code.members.{member}": {
            "component": report.component, "fingerprint": report.fingerprint,
            "holding": report.holding, "host": report.host, "at": report.at}}})

    def forget_code_member(self, name: str, member: str) -> None:
        """A member stopped: it runs nothing any more."""
        self.collection.update_one({"_id": name},
                                   {"$unset": {f"code.members.{member}": ""}})

    def forget_fence(self, name: str, fence: str) -> None:
        self.collection.update_one({"_id": name}, {"$unset": {f"fences.{fence}": ""}})

    # ------------------------------------------------------------------ hooks

    def claim_announcement(self, name: str, event: str, occurrence: str) -> bool:
        """Whether this process is the one to announce ``event`` (its ``occurrence``: which
        time it happened) to the hooks: True for the first caller only, across processes."""
        claimed = self.collection.update_one(
            {"_id": name, f"announced.{event}": {"$ne": occurrence}},
            {"$set": {f"announced.{event}": occurrence}})
        return claimed.matched_count > 0

    # ------------------------------------------------------------------ plumbing

    def _record(self, name: str, event: Event, **details: Any) -> None:
        """Append ``event`` to the history, with the migration's collection and code in
        force as the state holds them now."""
        state = self.get(name)
        self.history.record(name, state.collection if state else None, event,
                            fingerprint=state.code.fingerprint if state else None, **details)

    def _set(self, name: str, **fields_: Any) -> None:
        self.collection.update_one({"_id": name}, {"$set": {**fields_, "updated_at": now()}})

    def _set_if_exists(self, name: str, **fields_: Any) -> None:
        """For a piece that stops before its migration has state: it leaves none (and no
        state collection either)."""
        if self.collection.find_one({"_id": name}, {"_id": 1}) is not None:
            self._set(name, **fields_)

    def _update(self, name: str, update: dict[str, Any], *,
                errors: Iterable[dict[str, Any]] = (),
                where: dict[str, Any] | None = None) -> bool:
        update = {op: value for op, value in update.items() if value}
        update.setdefault("$set", {})["updated_at"] = now()
        errors = list(errors)
        if errors:
            update["$push"] = {"errors": {"$each": errors, "$slice": -MAX_ERRORS_KEPT}}
            update["$set"]["last_error"] = errors[-1]
        result = self.collection.update_one({"_id": name, **(where or {})}, update)
        return result.matched_count > 0


def _inc(counts: Mapping[str, int]) -> dict[str, Any]:
    """The ``$inc`` of counters that moved (an empty update part otherwise)."""
    moved = {f"counts.{k}": v for k, v in counts.items() if v}
    return {"$inc": moved} if moved else {}
