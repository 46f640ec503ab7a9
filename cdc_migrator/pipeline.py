"""The pieces wired together in one process: ``run``, ``revert``, ``accept``, and cutover's
catch-up.

The orchestrator above the actors (capture, apply, operations), which know nothing of each
other. ``run``: the tailer is armed before the backfill reads its first document; the run ends
when the backfill finished, the tailer has caught up, and the group's lag is zero. Each piece
rides out lost connections on its own (see :mod:`cdc_migrator.base.retry`); the run fails when
one of them gives up.

Catching up for ``cutover``: after ``run`` finished (or the always-on services were stopped),
nothing forwards the cutover's fence or applies the events before it. Cutover then runs, in its
own process and only while it waits, the pieces that are missing: a tailer from the saved
resume token and a member of the consumer group from the committed offsets. Beside running
services it starts nothing. Either way the fence travels the whole path, so it still proves
that everything before it was applied.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .apply.consumer import TransformConsumer
from .apply.shortcut import ApplyReport, apply_migration
from .base import history, topics
from .base.retry import KAFKA, MONGODB, Retrier
from .base.settings import Settings
from .base.threads import Threads
from .capture.backfill import BackfillReport, backfill
from .capture.tailer import Tailer, arm, stream_pipeline
from .core.fingerprint import fingerprint, short
from .core.state import MigrationState, Phase
from .errors import Refused, StopRequested
from .migration import Migration
from .operations.accept import check_acceptable
from .operations.cutover import CutoverReport, cutover
from .operations.reversible import reverse_of
from .operations.revert import check_revertible, old_shape_note, put_back_expand_schema

log = logging.getLogger("cdc_migrator.pipeline")


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
                 settle: float = 1.0, then_cutover: bool = False) -> RunReport:
    """Run the three pieces in threads of this process until the topic is drained.

    With ``then_cutover`` the cutover runs once drained, while the tailer and consumer still
    run: its fence must travel through them. With the setting ``on_history_lost`` at
    ``"rebackfill"``, a tailer whose change history is gone re-arms capture and backfills
    again (its :class:`~cdc_migrator.capture.recovery.Recovery`); the run is drained only
    once that backfill finished too.
    """
    stop = stop or threading.Event()
    retry = Retrier(settings, stop=stop)
    try:
        retry.call(MONGODB, arm, settings, migration)
    except StopRequested:
        return RunReport(migration.name, None, {}, -1, False)
    tailer = Tailer(settings, migration)
    consumer = TransformConsumer(settings, migration)
    threads = Threads(stop)  # a piece that fails stops the run; its error is raised below
    threads.start("tail", tailer.run)
    threads.start("consume", consumer.run)
    report = None
    outcome = None
    drained = False
    deadline = time.monotonic() + timeout if timeout else None
    try:
        report = backfill(settings, migration, batch_size=batch_size, rate=rate,
                          show_progress=show_progress, stop=stop)
        drained = wait_drained(settings, migration, tailer, stop, deadline, settle, retry)
        if drained and then_cutover:
            # The command's watch tells the hooks of the cutover, after the phases before it.
            outcome = cutover(settings, migration, announce=False)
    except StopRequested:
        drained = False
    finally:
        tailer.stop()
        consumer.stop()
        threads.join(timeout=60)
    threads.raise_first()
    lag = retry.call(KAFKA, topics.group_lag, settings, settings.topic(migration.collection),
                     settings.group(migration.name)).total
    store = settings.store
    if drained and lag == 0 and outcome is None:
        retry.call(MONGODB, store.mark_ready, migration.name)
    state = retry.call(MONGODB, store.get, migration.name)
    return RunReport(migration.name, report, state.counts.as_dict() if state else {}, lag,
                     drained, outcome, unresolved=state.dlq_pending if state else 0)


@dataclass
class RevertReport:
    """What ``revert`` did: the schema note, and the run of the reverse (None when NAME was
    reverted already)."""

    migration: str
    reverse: str
    run: RunReport | None
    schema_note: str | None = None
    #: What enforces the old shape now (``{schema, enforced}``, see ``old_shape_note``).
    old_shape: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.run is None or (self.run.drained and self.run.cutover is not None
                                    and self.run.cutover.ok)

    def summary(self) -> str:
        if self.run is None:
            return (f"{self.migration}: already reverted ({self.reverse} cut over); "
                    f"{old_shape_note(self.old_shape)}")
        if self.ok:
            return (f"{self.migration}: reverted; {self.reverse} cut over, every document is "
                    f"in the old shape; {old_shape_note(self.old_shape)}")
        why = self.run.cutover.summary() if self.run.cutover is not None else \
            f"{self.reverse} did not drain (lag {self.run.lag})"
        return f"{self.migration}: revert not finished: {why}; run `revert` again"


def revert_pipeline(settings: Settings, migration: Migration, *,
                    reverse_name_taken: bool = False, batch_size: int | None = None,
                    rate: float | None = None, timeout: float | None = None,
                    show_progress: bool = True,
                    stop: threading.Event | None = None) -> RevertReport:
    """Take a cut-over migration back: put back the expand schema, then run its inverse as a
    migration of its own (:func:`~cdc_migrator.operations.reversible.reverse_of`) through the
    same path as ``run --cutover``: capture armed first, backfill, guarded consume, fenced
    cutover. The forward migration is ``reverting`` meanwhile (its own consumers hold), and
    ``reverted`` once the reverse is cut over. Run again, it resumes an interrupted revert."""
    store = settings.store
    state = store.get(migration.name)
    check_revertible(migration, state, reverse_name_taken)
    reverse = reverse_of(migration)
    assert state is not None  # check_revertible refuses a migration without state
    if state.phase is Phase.REVERTED:
        return RevertReport(migration.name, reverse.name, None, old_shape=state.old_shape)
    if state.phase is Phase.CUT_OVER and store.get(reverse.name) is not None:
        # A reverse run left from an earlier cycle (migrated again since): a new one starts.
        store.delete(reverse.name)
        topics.delete_group(settings, settings.group(reverse.name))
    note = put_back_expand_schema(settings, migration, migration.contract_schema)
    store.mark_reverting(migration.name)
    log.info("reverting %s through %s", migration.name, reverse.name)
    report = run_pipeline(settings, reverse, batch_size=batch_size, rate=rate,
                          show_progress=show_progress, stop=stop, timeout=timeout,
                          then_cutover=True)
    outcome = RevertReport(migration.name, reverse.name, report, note)
    if outcome.ok:
        assert report.cutover is not None  # ok: the reverse was cut over
        outcome.old_shape = {"schema": migration.old_schema,
                             "enforced": report.cutover.enforced}
        store.mark_reverted(migration.name, outcome.old_shape)
    return outcome


@dataclass
class AcceptReport:
    """What ``accept`` did: the code it made the code in force (``previous``: the code it
    replaced, None when there was nothing to accept), and the run that followed."""

    migration: str
    fingerprint: str
    previous: str | None = None
    backfill: BackfillReport | None = None
    applied: ApplyReport | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        """Everything that had to run again finished."""
        if self.backfill is not None:
            return self.backfill.done
        return self.applied is None or not self.applied.result.failed

    def summary(self) -> str:
        name, code = self.migration, short(self.fingerprint)
        if self.previous is None:
            return f"{name}: {self.note}"
        head = f"{name}: accepted the code of fingerprint {code} (was {short(self.previous)})"
        if self.applied is not None:
            return f"{head}; applied again from the first document: {self.applied.summary()}"
        assert self.backfill is not None
        if not self.backfill.done:
            return (f"{head}; the backfill stopped before the end ({self.backfill.scanned:,} "
                    f"documents produced): `cdc-migrator backfill {name}` finishes it")
        return (f"{head}; backfill finished again ({self.backfill.scanned:,} documents "
                "produced here): every document meets this code once the consumers drained. "
                f"Members still running {short(self.previous)} hold: give them this code")


def accept_code(settings: Settings, migration: Migration, *, batch_size: int | None = None,
                rate: float | None = None, workers: int = 1, show_progress: bool = True,
                stop: threading.Event | None = None) -> AcceptReport:
    """Make ``migration``'s code (as loaded here) its code in force, and run again what ran,
    so that every document meets it: a new backfill pass (which begins once every live member
    still applying the old code holds), or ``apply`` from the first document."""
    store = settings.store
    state = store.get(migration.name)
    check_acceptable(migration, state)
    assert state is not None  # check_acceptable refuses a migration without state
    code = fingerprint(migration, settings.schemas)
    previous = state.code.fingerprint
    report = AcceptReport(migration.name, code)
    if previous is None:
        store.adopt_code(migration.name, code)
        report.note = f"no code was in force; fingerprint {short(code)} recorded"
        return report
    if previous == code:
        unfinished = state.armed and not (state.backfill and state.backfill.done)
        report.note = (f"the code in force is this code already (fingerprint {short(code)}): "
                       "nothing to accept" + (f"; its backfill is unfinished: `cdc-migrator "
                                              f"backfill {migration.name}` finishes it"
                                              if unfinished else ""))
        return report
    if not store.accept(migration.name, code, previous=previous, armed=state.armed):
        raise Refused(f"cannot accept {migration.name}: its code in force changed meanwhile "
                      "(another accept?); see `cdc-migrator status`, then accept again")
    report.previous = previous
    log.info("%s: the code of fingerprint %s is in force (was %s); %s again", migration.name,
             short(code), short(previous), "backfilling" if state.armed else "applying")
    if state.armed:
        report.backfill = backfill(settings, migration, batch_size=batch_size, rate=rate,
                                   show_progress=show_progress, stop=stop, workers=workers)
    else:
        report.applied = apply_migration(settings, migration, batch_size=batch_size, rate=rate,
                                         show_progress=show_progress)
    return report


def wait_drained(settings: Settings, migration: Migration, tailer: Tailer,
                 stop: threading.Event, deadline: float | None, settle: float,
                 retry: Retrier | None = None) -> bool:
    """Wait until the tailer has caught up with the present (a majority-committed point: where
    a change stream opened now starts), no recovery backfills, and the group's lag stays zero
    for ``settle`` s."""
    retry = retry or Retrier(settings, stop=stop)
    topic = settings.topic(migration.collection)
    group = settings.group(migration.name)
    present = stream_pipeline(migration)
    zero_since = None
    while not stop.is_set():
        if deadline and time.monotonic() > deadline:
            return False
        # Caught up with the present: where a change stream opened now starts. The tailer
        # reaches it only once every write before it is committed and read.
        target = retry.call(MONGODB, history.stream_start, settings.db, present)[1]
        tailer.catch_up_to(target)
        if not tailer.caught_up.wait(timeout=2):
            log.debug("catching up: the tailer has read up to %s, the stream's present is %s",
                      tailer.position, target)
        lag = retry.call(KAFKA, topics.group_lag, settings, topic, group).total
        if lag == 0 and tailer.caught_up.is_set() and not tailer.recovery.running:
            zero_since = zero_since or time.monotonic()
            if time.monotonic() - zero_since >= settle:
                return True
        else:
            zero_since = None
        time.sleep(0.2)
    return False


@dataclass
class CatchUp:
    """What cutover started itself, and how those pieces ended."""

    started: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def note(self) -> str | None:
        if not self.started:
            return None
        return (f"No {' or '.join(self.started)} was running: cutover caught up itself from "
                "the saved positions.")


def consumers_running(settings: Settings, migration: Migration) -> bool:
    return topics.group_members(settings, settings.group(migration.name)) > 0


@contextlib.contextmanager
def catch_up(settings: Settings, migration: Migration,
             state: MigrationState) -> Iterator[CatchUp]:
    """Run a tailer and a consumer in threads while in the block, each only if none runs (a
    tailer counts as running as ``status`` counts it: a fresh heartbeat, no stop after it)."""
    outcome = CatchUp()
    pieces: list[tuple[str, Any]] = []
    if not state.tail.running:
        pieces.append(("tailer", Tailer(settings, migration)))
    if not consumers_running(settings, migration):
        pieces.append(("consumer", TransformConsumer(settings, migration)))
    threads = Threads()
    for name, piece in pieces:
        log.info("no %s is running: cutover runs one until its fence has passed", name)
        outcome.started.append(name)
        threads.start(f"cutover-{name}", piece.run, on_error=_reported(name, outcome))
    try:
        yield outcome
    finally:
        for _, piece in pieces:
            piece.stop()  # each saves its position: the tailer its token, the consumer offsets
        threads.join(timeout=60)


def _reported(name: str, outcome: CatchUp) -> Callable[[BaseException], None]:
    """A piece cutover started failed: a reason the cutover is refused."""
    return lambda exc: outcome.errors.append(f"the {name} cutover started failed: {exc}")
