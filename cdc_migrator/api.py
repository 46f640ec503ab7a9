"""The Python API: one function per command, over a :class:`Settings`, with the command's
options as keyword arguments.

The command line is a thin layer over these (as Alembic's ``command.py`` is); scripts and tests
call them directly. Settings (where the services are, how things are named, TLS, ...) come from
the :class:`~cdc_migrator.base.settings.Settings`; what a single command does differently
comes as keyword arguments.

A command's function has the command's help as its docstring: ``cdc-migrator CMD --help``
prints it, up to a last paragraph that starts with "In Python:" (the keyword arguments, where
the work is done).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from .apply.consumer import ConsumeStats, consume_until_stopped
from .apply.replay import RetryReport
from .apply.replay import retry as retry_dead_letters
from .apply.shortcut import ApplyReport, DryRunLine, apply_migration
from .apply.shortcut import dry_run as _dry_run
from .base import naming, refusals, topics
from .base.checks import OPTIONS, Source
from .base.messages import message_of
from .base.retry import MONGODB, Retrier
from .base.settings import Settings
from .base.topology import LagReader
from .capture.backfill import BackfillReport
from .capture.backfill import backfill as _backfill
from .capture.dependencies import forget as forget_references
from .capture.leases import RangeStore
from .capture.tailer import tail_until_stopped
from .core.deadletters import DeadLetter
from .core.deadletters import read as read_dead_letters
from .core.order import series
from .core.state import Phase
from .core.throttle import Bounds, check_lag_readable
from .errors import CdcMigratorError, Refused, ServiceUnavailable, UsageError
from .migration import Migration, get_migration, load_migrations
from .operations.census import CensusReport
from .operations.census import census as _census
from .operations.cutover import CutoverReport, load_schema
from .operations.cutover import cutover as _cutover
from .operations.history import MigrationHistory, histories
from .operations.preflight import PreflightReport, load_failure, require
from .operations.preflight import preflight as _preflight
from .operations.reversible import ReversibleReport, reverse_of, verify_reversible
from .operations.revert import put_back_expand_schema
from .operations.scaffold import init_migration
from .operations.schema import validator_for
from .operations.status import RangesOf, all_status
from .operations.verify import VerifyReport
from .operations.verify import verify as _verify
from .pipeline import (
    AcceptReport,
    RevertReport,
    RunReport,
    accept_code,
    catch_up,
    revert_pipeline,
    run_pipeline,
)

log = logging.getLogger("cdc_migrator")


def load(settings: Settings, name: str) -> Migration:
    """The migration called ``name`` from the settings' transforms directory; ``NAME-revert``
    (:func:`~cdc_migrator.base.naming.revert`) is the reverse run of a migration NAME that
    declares an inverse, so ``tail``, ``consume``, ``status`` and ``verify`` take it too."""
    try:
        return get_migration(settings.transforms, name)
    except UsageError:
        forward = name.removesuffix(naming.REVERT_SUFFIX)
        found = migrations(settings).get(forward) if forward != name else None
        if found is None or found.inverse is None:
            raise
        return reverse_of(found)


def migrations(settings: Settings) -> dict[str, Migration]:
    return load_migrations(settings.transforms)


def census(settings: Settings, name: str, *, sample: int = 5, batch_size: int | None = None,
           max_shapes: int = 1000,
           on_batch: Callable[[int], None] | None = None) -> CensusReport:
    """Before any write: NAME's documents grouped by shape, and what the transform does to each.

    A shape is the set of top-level fields with their BSON types, plus one nested level. Each
    shape is counted and the transform tried on --per-shape of its documents without writing
    (writes through ctx.db are recorded, as with --dry-run): would change, needs nothing,
    raises (with the error and an _id), invalid patch, breaks the contract schema; and, when
    NAME declares an inverse, whether they come back through it. Exit 1 naming the shapes
    that raise, get an invalid patch or break the contract.

    In Python: the transform is tried on ``sample`` documents of each shape; see
    :func:`cdc_migrator.operations.census.census`.
    """
    migration = load(settings, name)
    require_collection(settings, migration)
    check = validator_for(load_schema(settings, migration.contract_schema)) \
        if migration.contract_schema else None
    return _census(settings, migration, sample=sample, batch_size=batch_size,
                   max_shapes=max_shapes, schema_check=check, on_batch=on_batch)


def preflight(settings: Settings, name: str, *, skip: tuple[str, ...] = ()) -> PreflightReport:
    """Before any write: whether this deployment will carry NAME. Writes nothing.

    One line per check, with what it checked, the result and, on failure, the fix:
    mongo-topology (version; a standalone is refused; replica set; sharded cluster with the
    collection's shard key), privileges (connectionStatus: the change stream, find, insert,
    update, remove on the collection and the tool's own collections, collMod for a contract
    schema, replSetGetStatus for --max-replication-lag, find on depends_on collections),
    pre-images (of depends_on collections, and the fallback where off), runway (the change
    history's window against the backfill's estimated time, from a short sample scan), kafka
    (reachable, credentials, the topic's settings or whether it may be created, its record
    limit against the largest sampled document, ACLs where the broker has an authorizer),
    schema (the contract schema in MongoDB's $jsonSchema dialect), transform (it loads; each
    depends_on field is found in a sampled document). Exit 0 when all pass, 1 naming the
    failures. --skip-check NAME skips one (logged), where you know better.

    In Python: ``skip`` names the checks to skip; see
    :func:`cdc_migrator.operations.preflight.preflight`.
    """
    if Path(settings.transforms).is_dir():
        try:
            migrations(settings)
        except UsageError as exc:  # a file that does not import: the transform check fails
            return PreflightReport(name, [load_failure(exc)])
    migration = load(settings, name)
    require_collection(settings, migration)
    return _preflight(settings, migration, skip=skip)


def verify_reversibility(settings: Settings, name: str, *, per_shape: int = 3,
                         batch_size: int | None = None) -> ReversibleReport:
    """``cdc-migrator verify NAME --reversible``: for ``per_shape`` documents of every shape,
    the migration then its inverse gives the document back (see
    :mod:`cdc_migrator.operations.reversible`)."""
    migration = load(settings, name)
    require_collection(settings, migration)
    return verify_reversible(settings, migration, per_shape=per_shape, batch_size=batch_size)


def revert(settings: Settings, name: str, *, batch_size: int | None = None,
           rate: float | None = None, timeout: float | None = None,
           show_progress: bool = True, stop: threading.Event | None = None) -> RevertReport:
    """After cutover: take NAME back to the old shape with its inverse (@NAME.down).

    Puts back the expand schema first (both shapes valid), then runs the inverse as
    NAME-revert through the same path as `run --cutover`, in this process: capture armed
    first, backfill, guarded consume, fenced cutover. Exit 0 once NAME-revert is cut over;
    `status` then shows NAME as reverted. The application must read both shapes meanwhile.
    Where NAME names an old_schema, the last step installs it as the validator (the server then
    refuses new-shape writes); otherwise it says that nothing enforces the old shape.
    Refuses (exit 1, nothing changed) when NAME has no inverse or was never cut over.

    In Python: see :func:`cdc_migrator.pipeline.revert_pipeline`.
    """
    migration = _loaded(settings, name)
    taken = naming.revert(migration.name) in migrations(settings)
    return revert_pipeline(settings, migration, reverse_name_taken=taken,
                           batch_size=batch_size, rate=rate, timeout=timeout,
                           show_progress=show_progress, stop=stop)


def with_reverse(settings: Settings, name: str) -> list[Migration]:
    """The migration ``name`` and, when it declares an inverse, its reverse run: what a
    ``revert`` of it serves metrics and hooks for."""
    migration = load(settings, name)
    return [migration] + ([reverse_of(migration)] if migration.inverse is not None else [])


def reverted(settings: Settings, name: str) -> bool:
    """Whether ``revert`` took ``name`` back (or is taking it back)."""
    state = settings.store.get(name)
    return state is not None and state.reverted


def require_collection(settings: Settings, migration: Migration, *,
                       retry: bool = False) -> None:
    """Refuse a migration of a collection that does not exist.

    MongoDB creates collections lazily, so a misspelt collection or database would otherwise
    "migrate" zero documents and report success. With ``retry``, an unreachable server is
    waited for as the pipeline's pieces do (see :mod:`cdc_migrator.base.retry`).
    """
    list_names = settings.db.list_collection_names
    names = Retrier(settings).call(MONGODB, list_names) if retry else list_names()
    if migration.collection not in names:
        raise Refused(f"collection {migration.collection!r} does not exist in database "
                      f"{settings.database_name!r} (check the migration's collection= and "
                      "the database in the MongoDB URI or --db)")


def apply(settings: Settings, name: str, *, batch_size: int | None = None,
          rate: float | None = None, reset: bool = False,
          show_progress: bool = True) -> ApplyReport:
    """Migrate NAME's collection in this process, without Kafka (small collections).

    Scans in _id order, writes guarded bulk updates, saves its position after every batch so
    an interrupted run resumes. Documents written by the application after the scan passed them
    are not seen: for busy collections use the pipeline.

    In Python: ``reset`` starts from the first document; see
    :func:`cdc_migrator.apply.shortcut.apply_migration`.
    """
    migration = load(settings, name)
    require_collection(settings, migration)
    return apply_migration(settings, migration, batch_size=batch_size, rate=rate, reset=reset,
                           show_progress=show_progress)


def dry_run(settings: Settings, name: str, *, batch_size: int | None = None
            ) -> list[DryRunLine]:
    """``cdc-migrator apply NAME --dry-run``: each document's patch of the first batch."""
    migration = load(settings, name)
    require_collection(settings, migration)
    return _dry_run(settings, migration, batch_size=batch_size)


def verify(settings: Settings, name: str, *, sample_size: int = 10,
           batch_size: int | None = None) -> VerifyReport:
    """Count the documents NAME would still change; exit 0 only when none remain.

    Runs the transform on every document without writing (streaming, so any size works), and
    checks the migration's contract schema when it names one. The code verified must be NAME's
    code in force: code edited since it was armed (or since its cutover: EDITED AFTER
    CUTOVER) is named, and verify exits 1. With --reversible, checks instead that NAME's
    inverse gives back each shape's documents; exit 1 names those that do not come back.

    In Python: ``sample_size`` ids of each kind are kept; ``--reversible`` is
    :func:`verify_reversibility`.
    """
    migration = load(settings, name)
    check = validator_for(load_schema(settings, migration.contract_schema)) \
        if migration.contract_schema else None
    return _verify(settings, migration, sample_size=sample_size, batch_size=batch_size,
                   schema_check=check)


def cutover(settings: Settings, name: str, *, timeout: float = 60.0, dry_run: bool = False,
            allow_failed: bool = False, skip_checks: tuple[str, ...] = ()) -> CutoverReport:
    """Finish NAME: fence, wait for zero lag, verify, apply the contract schema, mark complete.

    Refuses with exit 1 and every reason (backfill unfinished, events behind, documents
    unmigrated, failed documents) when any check fails; run it again once they clear.

    In Python: cutover catches up itself where no tailer or consumer runs (see
    :func:`cdc_migrator.pipeline.catch_up`); see :func:`cdc_migrator.operations.cutover.cutover`.
    """
    migration = load(settings, name)
    require(settings, migration, "cutover", skip_checks)
    return _cutover(settings, migration, timeout=timeout, dry_run=dry_run,
                    allow_failed=allow_failed, catch_up=catch_up)


def status(settings: Settings, name: str | None = None) -> list[dict[str, Any]]:
    """Phase, backfill progress and ETA, counts, lag and last error of NAME (or all).

    In Python: one status dict per migration (all, or ``name``).
    """
    known = migrations(settings) if Path(settings.transforms).is_dir() else {}
    known.update({naming.revert(m.name): reverse_of(m) for m in list(known.values())
                  if m.inverse is not None})
    if name is not None and name not in known:
        load(settings, name)  # raises the usual one-line error for an unknown name
    found = all_status(settings, known, name, ranges_of=ranges_of(settings))
    if name is not None and not found:
        raise Refused(f"migration {name!r} has not started: no state yet")
    return found


def ranges_of(settings: Settings) -> RangesOf:
    """What ``status`` and the metrics show of a migration's backfill ranges, by its name."""
    return RangeStore(settings.db[settings.state_collection]).summary


def pause(settings: Settings, name: str) -> None:
    """Stop applying NAME: consumers and backfill hold their position until `resume`."""
    migration = load(settings, name)
    store = settings.store
    store.ensure(name, migration.collection)
    store.pause(name)


def resume(settings: Settings, name: str) -> None:
    """Continue NAME after `pause`."""
    load(settings, name)
    settings.store.resume(name)


def cancel(settings: Settings, name: str) -> None:
    """Cancel NAME: nothing more is applied; `reset` to start it again from scratch."""
    migration = load(settings, name)
    store = settings.store
    store.ensure(name, migration.collection)
    store.cancel(name)


def reset(settings: Settings, name: str) -> str | None:
    """Forget NAME's state and consumer offsets, so it starts over (documents are untouched).

    After a revert that installed the old shape's schema as the validator, the expand schema
    is put back first (the migration writes the new shape again), and a note says so. Its
    history stays, with the reset added (`cdc-migrator history`).

    In Python: the state, the reference map and the consumer group's offsets are
    forgotten, and those of its reverse run; returns the note, or None.
    """
    migration = load(settings, name)
    store = settings.store
    state = store.get(name)
    old_shape = (state.old_shape if state is not None and state.reverted else None) or {}
    note = None
    if old_shape.get("schema") and old_shape.get("enforced") is not False:
        note = put_back_expand_schema(settings, migration, old_shape["schema"], doing="reset")
    store.delete(name)
    forget_references(settings.db, name)
    topics.delete_group(settings, settings.group(name))
    if migration.inverse is not None:  # and its reverse run, so a later revert starts anew
        store.delete(naming.revert(name))
        topics.delete_group(settings, settings.group(naming.revert(name)))
    return note


def next_migration(settings: Settings, collection: str) -> Migration | None:
    """Name the migration of COLLECTION to run now: the first not cut over, in their order.

    Migrations of one collection run in series: each after the one it names with after=, or,
    naming none, after the one before it in file order that names none either. A fork (two
    migrations following one), a cycle, or an after= naming no migration of COLLECTION is
    refused in one line (exit 2). Exit 1 when all of them have cut over (or, with --run, when
    one of them could not be cut over).

    In Python: the migration, or None when every one has cut over; ``--run`` is
    :func:`run_series`; the order is :func:`cdc_migrator.core.order.series`.
    """
    store = settings.store
    for migration in series(migrations(settings), collection):
        state = store.get(migration.name)
        if state is None or state.phase is not Phase.CUT_OVER:
            return migration
    return None


@dataclass
class SeriesReport:
    """What ``next --run`` did: each migration's run, in order, and whether all cut over."""

    collection: str
    runs: list[RunReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every migration of the collection has cut over."""
        return all(r.drained and r.cutover is not None and r.cutover.ok for r in self.runs)


def run_series(settings: Settings, collection: str, *, timeout: float = 600.0,
               stop: threading.Event | None = None,
               on_start: Callable[[Migration], None] | None = None) -> SeriesReport:
    """``cdc-migrator next COLLECTION --run``: the migrations of ``collection`` not cut over
    yet, one after another (the pipeline, then cutover), each only once the previous one cut
    over; it stops at the first that does not drain within ``timeout`` or is refused.
    ``on_start`` is called with each migration as it starts."""
    report = SeriesReport(collection)
    while (found := next_migration(settings, collection)) is not None:
        if reverted(settings, found.name):
            raise Refused(f"{found.name} was reverted: `cdc-migrator reset {found.name}` to "
                          "migrate it again, then `next --run`")
        if on_start is not None:
            on_start(found)
        run_report = run(settings, found.name, timeout=timeout, show_progress=False,
                         stop=stop, then_cutover=True)
        report.runs.append(run_report)
        if not report.ok:
            break
    return report


def _loaded(settings: Settings, name: str) -> Migration:
    migration = load(settings, name)
    require_collection(settings, migration, retry=True)
    check_bounds(settings)
    return migration


def check_bounds(settings: Settings) -> None:
    """Before any work: a replication lag bound whose lag cannot be read is refused with the
    reason and the privilege to grant, unless ``on_lag_unknown`` is ``run``."""
    bounds = Bounds(settings.max_replication_lag, settings.max_write_latency,
                    settings.on_lag_unknown)
    reader = LagReader(settings.client, settings.client_for)
    lag = check_lag_readable(bounds, lambda: Retrier(settings).call(MONGODB, reader))
    if lag is not None and lag.unknown is not None:
        log.warning("--max-replication-lag is not enforced: the replication lag cannot be "
                    "read: %s; %s", lag.unknown, lag.fix)


def tail(settings: Settings, migrations: list[Migration], stop: threading.Event, *,
         skip_checks: tuple[str, ...] = ()) -> None:
    """Always-on: follow the change stream of each migration's collection into its topic.

    Arms change capture on first start (fixes the point from which writes are captured), then
    resumes from the saved resume token. Without NAME, tails every migration in --transforms.
    Stops cleanly on SIGTERM.

    In Python: one tailer per migration until ``stop`` is set; the setting
    ``on_history_lost`` says what a tailer does when the change history is gone.
    """
    for migration in migrations:
        require(settings, migration, "tail", skip_checks)
    tail_until_stopped(settings, migrations, stop)


def backfill(settings: Settings, name: str, *, batch_size: int | None = None,
             rate: float | None = None, reset: bool = False, show_progress: bool = True,
             stop: threading.Event | None = None, workers: int = 1,
             skip_checks: tuple[str, ...] = ()) -> BackfillReport:
    """Scan NAME's existing documents into its topic, in _id ranges; resumable.

    Run it as often as you like, on as many machines: every backfill of NAME shares the work
    (each _id range is leased to one worker; a dead worker's range is taken over once its
    lease ran out). Refuses unless change capture is armed (`tail` ran once), so that no
    write falls between the scan and the change stream. --reset starts every range over.

    In Python: ``reset`` starts over, ``workers`` threads scan in this process; see
    :func:`cdc_migrator.capture.backfill.backfill`.
    """
    migration = _loaded(settings, name)
    require(settings, migration, "backfill", skip_checks)
    return _backfill(settings, migration, batch_size=batch_size, rate=rate, reset=reset,
                     show_progress=show_progress, stop=stop, workers=workers)


def throttle(settings: Settings, name: str, *, rate: float | None) -> None:
    """Change the pace of NAME's running backfill and consumers, without a restart.

    They read the throttle every second. `status` shows the one in force. A migration that
    has not started (no state yet) is refused: start it, then throttle it.

    In Python: ``rate`` None is ``--off``; see :mod:`cdc_migrator.core.throttle`.
    """
    if rate is not None:
        rate = OPTIONS["rate"].check(rate, Source("throttle", "--rate"))
    load(settings, name)
    store = settings.store
    if store.get(name) is None:  # a state made here would hold nothing but the throttle
        raise Refused(f"cannot throttle {name}: it has not started (no state yet); start it "
                      "(tail, then backfill, or run), then throttle it; nothing changed")
    store.set_throttle(name, rate)


def consume(settings: Settings, migrations: list[Migration],
            stop: threading.Event) -> list[ConsumeStats]:
    """Always-on: the transform consumer group; run several processes to share partitions.

    Applies each migration to the documents its topic names, with guarded writes, and commits
    offsets only after the writes. SIGTERM finishes the batch, commits, and exits 0.

    In Python: one group member per migration until ``stop`` is set (the setting
    ``instance_id`` gives the members static membership).
    """
    check_bounds(settings)
    return consume_until_stopped(settings, migrations, stop)


def init(settings: Settings, name: str, collection: str, *,
         test_path: Path | None = None) -> list[Path]:
    """Start a migration: write STAMP_NAME.py under --transforms from a template to fill in.

    STAMP is the time of creation (YYYYMMDDHHMMSS, UTC), so the files sort in creation order.
    The file has the @migration decorator, with after= naming the collection's last
    migration (it runs once that one cut over), a docstring for the deploy sequence and a
    transform that changes nothing yet. Also writes the schema stubs it names,
    schemas/NAME.expand.json and schemas/NAME.contract.json, in the schemas/ directory beside
    the transforms directory (where `verify` and `cutover` read the contract schema). Refuses
    with exit 2 when NAME is not a Python identifier, a migration or file of that name exists
    already, or the collection's order is broken. Try it: `apply NAME --dry-run`.

    In Python: see :func:`cdc_migrator.operations.scaffold.init_migration`.
    """
    return init_migration(name, collection, settings.transforms, test_path)


def run(settings: Settings, name: str, *, batch_size: int | None = None,
        rate: float | None = None, timeout: float | None = None, then_cutover: bool = False,
        show_progress: bool = True, stop: threading.Event | None = None,
        skip_checks: tuple[str, ...] = ()) -> RunReport:
    """Tail, backfill and consume NAME in this process until the topic is drained.

    For one machine; the always-on deployment runs `tail` and `consume` as services instead.

    In Python: at most ``timeout`` seconds, then cutover with ``then_cutover``; see
    :func:`cdc_migrator.pipeline.run_pipeline`.
    """
    migration = _loaded(settings, name)
    require(settings, migration, "run", skip_checks)
    return run_pipeline(settings, migration, batch_size=batch_size, rate=rate,
                        timeout=timeout, then_cutover=then_cutover,
                        show_progress=show_progress, stop=stop)


def accept(settings: Settings, name: str, *, batch_size: int | None = None,
           rate: float | None = None, workers: int = 1, show_progress: bool = True,
           stop: threading.Event | None = None) -> AcceptReport:
    """Take the edited code of a running migration: it becomes NAME's code in force, and
    NAME's backfill runs again in this process, so every document meets the new code.

    A migration's code is part of its identity: its fingerprint (a hash of the transform, its
    inverse, filter, depends_on and contract schema; comments and formatting aside) is
    recorded when it is armed. Every tail, consume, backfill and run whose code has another
    fingerprint holds and applies nothing (`status` lists who runs what) until either this
    command takes its code, or it runs the code in force again (a rollback). The new pass of
    the backfill begins once every member still running the old code holds. A migration run
    with `apply` is applied again from the first document instead. Exit 1 when the backfill
    stops before the end (`backfill NAME` finishes it); refused (exit 1, nothing changed) for
    a migration that has not started, was cut over, reverted, cancelled or failed.

    In Python: see :func:`cdc_migrator.pipeline.accept_code`.
    """
    migration = _loaded(settings, name)
    return accept_code(settings, migration, batch_size=batch_size, rate=rate, workers=workers,
                       show_progress=show_progress, stop=stop)


def history(settings: Settings, collection: str | None = None) -> list[MigrationHistory]:
    """Every migration ever armed in the database (of COLLECTION): what became of it.

    Each one's entries, oldest first: armed, backfilled, cut over, reverting, reverted,
    cancelled, reset, accepted (with the code it replaced), re-armed after lost change
    history; each with when, the host and tool version that did it, and the fingerprint of
    the code in force; a cutover with its counts. `reset` keeps them. Exit 1 when no migration
    of COLLECTION was ever armed here.

    In Python: one :class:`~cdc_migrator.operations.history.MigrationHistory` per migration.
    """
    found = histories(settings.store, collection)
    if collection is not None and not found:
        raise Refused(f"no migration of {collection!r} was ever armed in database "
                      f"{settings.database_name!r}")
    return found


def dlq_list(settings: Settings, name: str) -> list[DeadLetter]:
    """Show NAME's dead letters: document id, error, and the traceback's last line.

    In Python: every dead letter of the migration.
    """
    return read_dead_letters(settings, load(settings, name))


def dlq_retry(settings: Settings, name: str) -> RetryReport:
    """Replay NAME's dead letters through the transform (after you fixed it); exit 1 if any
    fail again.
    """
    return retry_dead_letters(settings, load(settings, name))


#: MongoDB's Unauthorized: the command needs a privilege the user lacks (or a login).
UNAUTHORIZED = 13


def translate_service_error(exc: BaseException) -> CdcMigratorError | None:
    """A one-line error for a failure of the services (unreachable, auth); None for bugs."""
    if isinstance(exc, CdcMigratorError):
        return exc
    refused = refusals.explain(exc)
    if refused is not None:
        return refused
    if isinstance(exc, ServerSelectionTimeoutError):
        return ServiceUnavailable(f"cannot reach MongoDB: {_first_line(exc)}")
    if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
        # The login worked (or none was given): the user, not the password, needs fixing.
        hint = ("the MongoDB URI gives no credentials" if "requires authentication" in str(exc)
                else "the MongoDB user lacks a privilege this command needs: grant it a role "
                     "that holds it")
        return Refused(f"MongoDB refused the command: {_first_line(exc)} ({hint})")
    if isinstance(exc, OperationFailure) and (exc.code == 18 or _is_auth_failure(exc)):
        hint = " (this server offers no SCRAM authentication)" if "saslStart" in str(exc) \
            else ""
        return ServiceUnavailable(f"MongoDB authentication failed: {_first_line(exc)}{hint}")
    if isinstance(exc, ConfigurationError):
        return UsageError(f"MongoDB configuration: {_first_line(exc)}")
    if isinstance(exc, ConnectionFailure):
        return ServiceUnavailable(f"lost the connection to MongoDB: {_first_line(exc)}")
    from kafka.errors import KafkaError

    if isinstance(exc, KafkaError):
        what = "cannot reach Kafka" if getattr(exc, "retriable", False) else "Kafka"
        return ServiceUnavailable(f"{what}: {type(exc).__name__}: {_first_line(exc)}")
    return None


def _is_auth_failure(exc: OperationFailure) -> bool:
    # A server without SCRAM (such as the local test server) answers the driver's
    # authentication with "no such command: 'saslStart'" (59) rather than 18.
    return "saslStart" in str(exc) or "Authentication failed" in str(exc)


def _first_line(exc: BaseException) -> str:
    return message_of(exc) or type(exc).__name__
