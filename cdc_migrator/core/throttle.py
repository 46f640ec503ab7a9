"""Live throttling: the pace set by ``cdc-migrator throttle``, and holds on bounds, gh-ost style.

The throttle of a migration lives in its state (``throttle.rate``, documents per second, set by
``cdc-migrator throttle NAME --rate``). Every backfill worker and every consumer reads it again
every :data:`POLL_INTERVAL` seconds, so a change reaches running processes without a restart.

The rate is for the whole migration, not per process: the backfill's workers together read at
most ``rate`` documents per second, and the consumer group together applies at most ``rate``.
Each worker takes its *share*: a backfill worker ``rate / W``, W being the ranges held by a live
lease now (each working worker holds one); a consumer ``rate * p / P``, p being the partitions
assigned to it and P those of every member that reported itself in the last
:data:`MEMBER_STALE_AFTER` seconds (members report while a rate is set). A worker that joins or
leaves changes the others' shares at their next poll; until then the total may be over the rate
by one worker's share.

Automatic holds, on bounds the operator sets (settings ``max_replication_lag`` and
``max_write_latency``): a process that finds a bound exceeded — the lag of the secondaries
that count behind the primary (see :mod:`cdc_migrator.base.topology`), or the latency of its
own last bulk write — records the hold in the state for :data:`AUTO_HOLD` seconds, and every
worker of the migration holds (reads and writes nothing) while a hold is in force. Then it goes
on and the bound is measured again: a write latency can only be measured by writing.

A lag that cannot be read (the server refused) is decided by the setting ``on_lag_unknown``:
``fail`` refuses (at start, :func:`check_lag_readable`, naming what to grant; and later, should
the privilege go), ``run`` goes on without the bound and records why in the state, which
``status`` shows until the lag can be read again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..base.pacing import Pacer
from ..base.scanner import RELEASE_BEFORE_WAIT
from ..base.topology import Lag
from ..errors import Refused
from .state import MigrationState, StateStore

log = logging.getLogger("cdc_migrator.throttle")

#: How often a worker reads the throttle (and measures its bounds), in seconds.
POLL_INTERVAL = 1.0
#: How long an exceeded bound holds the migration before the next measure.
AUTO_HOLD = 2.0
#: A consumer that has not reported for this long no longer counts in the shares.
MEMBER_STALE_AFTER = 3 * POLL_INTERVAL


def share(rate: float | None, mine: float, live: float) -> float | None:
    """This worker's part of ``rate``: ``mine`` of the ``live`` total weight (itself included,
    so never more than the whole rate). None: no limit."""
    if rate is None:
        return None
    if mine <= 0:
        return rate  # holding nothing: it does no work, so any value serves
    return rate * mine / max(live, mine)


@dataclass(frozen=True)
class Bounds:
    """The automatic holds a process checks (None: not checked); ``on_lag_unknown`` is what a
    lag that cannot be read does: ``fail`` or ``run`` without the bound."""

    max_replication_lag: float | None = None  # seconds
    max_write_latency: float | None = None  # milliseconds
    on_lag_unknown: str = "fail"


def lag_refusal(lag: Lag) -> Refused:
    """The refusal of a lag bound whose lag cannot be read, naming the fix and the way out."""
    return Refused(f"--max-replication-lag: the replication lag cannot be read: {lag.unknown}; "
                   f"{lag.fix}, or run with --on-lag-unknown run to go on without the bound "
                   "(`status` shows the lag as unknown)")


def check_lag_readable(bounds: Bounds, read_lag: Callable[[], Lag]) -> Lag | None:
    """At start: with a lag bound, read the lag once; refuse (:class:`Refused`) when it cannot
    be read and ``on_lag_unknown`` is ``fail``. The reading, or None without a bound."""
    if bounds.max_replication_lag is None:
        return None
    lag = read_lag()
    if lag.unknown is not None and bounds.on_lag_unknown != "run":
        raise lag_refusal(lag)
    return lag


def worker_name(index: int = 0) -> str:
    """A name for one worker thread of this process, unique across machines and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


class Throttle:
    """The pace of one worker of a migration: call :meth:`spend` with the documents it is about
    to read or write; it returns when the worker may go on (or ``stop`` was set).

    ``weight`` is what the worker holds (1 for a backfill worker, its partitions for a
    consumer); ``live`` the total over every worker, given the state just read; with
    ``members`` the worker reports itself in the state and the total is the members' (the
    consumer group, whose members know nothing of each other otherwise). ``cap`` bounds the
    worker's pace besides (a backfill's own ``--rate``, shared by its workers).
    """

    def __init__(self, store: StateStore, name: str, *, member: str, bounds: Bounds,
                 lag: Callable[[], Lag] | None = None,
                 weight: Callable[[], float] = lambda: 1.0,
                 live: Callable[[MigrationState], float] | None = None, members: bool = False,
                 stop: threading.Event | None = None, cap: float | None = None) -> None:
        # The member's name is a field name in the state: no dots, no leading dollar.
        self.store, self.name = store, name
        self.member = member.replace(".", "-").replace("$", "-")
        self.bounds, self.read_lag = bounds, lag
        self.weight, self.live, self.members = weight, live, members
        self.stop = stop or threading.Event()
        self.cap = cap
        self.pacer = Pacer()
        self.rate: float | None = None  # this worker's share, as of the last poll
        self.holding: dict[str, Any] | None = None  # the hold in force, as of the last poll
        self._polled = float("-inf")
        self._write_latency: float | None = None  # seconds, of the last bulk write
        self._refused_logged: str | None = None  # the refused rate last logged
        self._rate: float | None = None  # the rate last taken: kept over a refused one
        self._lag_unknown: str | None = None  # why the lag could not be read, as recorded
        self._no_replica_set_logged = False

    def chunk(self, most: int) -> int:
        """How many documents to take at once: ``most``, or about a second's worth of this
        worker's share (at least 10), so that a slow rate is kept smoothly, not in bursts."""
        if self.rate is None:
            return most
        return max(10, min(most, int(self.rate)))

    def note_write(self, seconds: float | None) -> None:
        """The latency of the worker's last bulk write (for ``max_write_latency``)."""
        if seconds is not None:
            self._write_latency = seconds

    def spend(self, n: int, before_long_wait: Callable[[], None] | None = None) -> None:
        """Account for ``n`` documents; wait while the migration is held and as long as this
        worker's share of the rate asks. ``before_long_wait`` is called once the wait grows
        longer than :data:`~cdc_migrator.base.scanner.RELEASE_BEFORE_WAIT` (a scan closes its
        cursor, which MongoDB would kill after 10 idle minutes)."""
        self.pacer.add(n)
        waited = 0.0
        released = before_long_wait is None
        while not self.stop.is_set():
            self._refresh()
            if self.holding is not None:
                wait = POLL_INTERVAL
            else:
                wait = min(self.pacer.wait_needed(self.rate), POLL_INTERVAL)
                if wait <= 0:
                    return
            if not released and waited + wait > RELEASE_BEFORE_WAIT:
                released = True
                before_long_wait()  # type: ignore[misc]
            self.stop.wait(wait)
            waited += wait

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._polled < POLL_INTERVAL:
            return
        self._polled = now
        bound = self._exceeded()
        if bound is not None:
            record = {**bound, "by": self.member, "at": time.time(),
                      "until": time.time() + AUTO_HOLD}
            self.store.record_auto_throttle(self.name, record)
            log.warning("holding: %s", describe_hold(record))
        state = self.store.get(self.name)
        if state is None:
            self.rate, self.holding = self.cap, None
            return
        throttle = state.throttle
        self.holding = throttle.auto if throttle.holding else None
        if throttle.refused is None:
            self._rate = throttle.rate
        elif throttle.refused != self._refused_logged:
            self._refused_logged = throttle.refused
            log.warning("%s", throttle.refused)
        rate = self._rate
        mine = self.weight()
        if self.members and rate is not None:
            fresh = {m: w for m, (at, w) in throttle.members.items()
                     if time.time() - at < MEMBER_STALE_AFTER and m != self.member}
            stale = [m for m in throttle.members if m not in fresh and m != self.member]
            self.store.report_member(self.name, self.member, mine, forget=stale)
            total = mine + sum(fresh.values())
        else:
            total = self.live(state) if self.live is not None else mine
        self.rate = _capped(share(rate, mine, total), self.cap)

    def _exceeded(self) -> dict[str, Any] | None:
        """The bound this worker finds exceeded now, as a hold record; or None."""
        limit_ms = self.bounds.max_write_latency
        if limit_ms is not None and self._write_latency is not None \
                and self._write_latency * 1000 > limit_ms:
            value, self._write_latency = self._write_latency * 1000, None
            return {"bound": "write latency", "value": round(value, 1), "limit": limit_ms,
                    "unit": "ms"}
        limit = self.bounds.max_replication_lag
        if limit is not None and self.read_lag is not None:
            lag = self._lag()
            if lag is not None and lag > limit:
                return {"bound": "replication lag", "value": round(lag, 1), "limit": limit,
                        "unit": "s"}
        return None

    def _lag(self) -> float | None:
        """The lag in seconds; None when there is none to bound or it is unknown (recorded in
        the state with its reason, or refused: ``on_lag_unknown``)."""
        assert self.read_lag is not None
        lag = self.read_lag()
        if lag.unknown is not None:
            if self.bounds.on_lag_unknown != "run":
                raise lag_refusal(lag)
            if lag.unknown != self._lag_unknown:
                log.warning("--max-replication-lag is not enforced: the replication lag cannot "
                            "be read: %s; %s", lag.unknown, lag.fix)
                self.store.record_lag_unknown(self.name, {
                    "reason": lag.unknown, "fix": lag.fix, "by": self.member, "at": time.time()})
                self._lag_unknown = lag.unknown
            return None
        if self._lag_unknown is not None:
            self.store.record_lag_unknown(self.name, None)
            self._lag_unknown = None
        if lag.seconds is None and not self._no_replica_set_logged:
            self._no_replica_set_logged = True
            log.warning("--max-replication-lag: the server is not in a replica set "
                        "(replSetGetStatus); replication lag is not checked")
        return lag.seconds


def _capped(rate: float | None, cap: float | None) -> float | None:
    return rate if cap is None else cap if rate is None else min(rate, cap)


def describe_hold(record: dict[str, Any]) -> str:
    """A hold in a line: ``replication lag 12.0 s > 5 s (seen by host:123:0)``."""
    unit = record.get("unit", "")
    return (f"{record.get('bound')} {record.get('value')} {unit} > {record.get('limit')} "
            f"{unit} (seen by {record.get('by')})")
