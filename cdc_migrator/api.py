"""The Python API: one function per command, over a :class:`Settings`, with the command's
options as keyword arguments.

The command line is a thin layer over these (as Alembic's ``command.py`` is); scripts and tests
call them directly. Settings (where the services are, how things are named, TLS, ...) come from
the :class:`~cdc_migrator.base.settings.Settings`; what a single command does differently
comes as keyword arguments.
"""

from __future__ import annotations

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
from .base import logs, naming, refusals, topics
from .base.deadletters import DeadLetter
from .base.deadletters import read as read_dead_letters
from .base.retry import MONGODB, Retrier, message_of
from .base.settings import OPTIONS, Settings, Source
from .base.state import Phase, StateStore
from .capture.backfill import BackfillReport
from .capture.backfill import backfill as _backfill
from .capture.dependencies import forget as forget_references
from .capture.tailer import tail_until_stopped
from .errors import CdcMigratorError, Refused, ServiceUnavailable, UsageError
from .migration import Migration, get_migration, load_migrations
from .operations.census import CensusReport
from .operations.census import census as _census
from .operations.cutover import CutoverReport, load_schema
from .operations.cutover import cutover as _cutover
from .operations.reversible import ReversibleReport, reverse_of, verify_reversible
from .operations.revert import put_back_expand_schema
from .operations.scaffold import init_migration
from .operations.schema import validator_for
from .operations.status import all_status
from .operations.verify import VerifyReport
from .operations.verify import verify as _verify
from .pipeline import RevertReport, RunReport, catch_up, revert_pipeline, run_pipeline


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
    """``cdc-migrator census NAME``: before any write, the documents grouped by shape and
    counted, the transform (and the inverse, when declared) tried on ``sample`` documents of
    each shape without writing. See :func:`cdc_migrator.operations.census.census`."""
    migration = load(settings, name)
    require_collection(settings, migration)
    check = validator_for(load_schema(settings, migration.contract_schema)) \
        if migration.contract_schema else None
    return _census(settings, migration, sample=sample, batch_size=batch_size,
                   max_shapes=max_shapes, schema_check=check, on_batch=on_batch)


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
    """``cdc-migrator revert NAME``: after cutover, the inverse through the same pipeline as
    ``run --cutover``, under its own name. See :func:`cdc_migrator.pipeline.revert_pipeline`."""
    migration = load(settings, name)
    require_collection(settings, migration, retry=True)
    taken = naming.revert(migration.name) in migrations(settings)
    return revert_pipeline(settings, migration, reverse_name_taken=taken,
                           batch_size=batch_size, rate=rate, timeout=timeout,
                           show_progress=show_progress, stop=stop)


def reverted(settings: Settings, name: str) -> bool:
    """Whether ``revert`` took ``name`` back (or is taking it back)."""
    state = _store(settings).get(name)
    return state is not None and state.reverted


def require_collection(settings: Settings, migration: Migration, *,
                       retry: bool = False) -> None:
    """Refuse a migration of a collection that does not exist.

    MongoDB creates collections lazily, so a misspelt collection or database would otherwise
    "migrate" zero documents and report success. With ``retry``, an unreachable server is
    waited for as the pipeline's pieces do (see :mod:`cdc_migrator.retry`).
    """
    list_names = settings.db.list_collection_names
    names = Retrier(settings).call(MONGODB, list_names) if retry else list_names()
    if migration.collection not in names:
        raise Refused(f"collection {migration.collection!r} does not exist in database "
                      f"{settings.database_name!r} (check the migration's collection= and "
                      "the database in MONGODB_URI or --db)")


def apply(settings: Settings, name: str, *, batch_size: int | None = None,
          rate: float | None = None, reset: bool = False,
          show_progress: bool = True) -> ApplyReport:
    """``cdc-migrator apply NAME``: the small-collection shortcut, in this process; resumable
    (``reset`` starts from the first document). See
    :func:`cdc_migrator.apply.shortcut.apply_migration`."""
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
    """``cdc-migrator verify NAME``: documents the transform would still change (and, when
    the migration names a contract schema, documents breaking it); ``sample_size`` ids of each
    kind are kept."""
    migration = load(settings, name)
    check = validator_for(load_schema(settings, migration.contract_schema)) \
        if migration.contract_schema else None
    return _verify(settings, migration, sample_size=sample_size, batch_size=batch_size,
                   schema_check=check)


def cutover(settings: Settings, name: str, *, timeout: float = 60.0, dry_run: bool = False,
            allow_failed: bool = False) -> CutoverReport:
    """``cdc-migrator cutover NAME``: fence, wait for zero lag (catching up itself where no
    tailer or consumer runs), verify, apply the contract schema, mark complete. See
    :func:`cdc_migrator.operations.cutover.cutover`."""
    return _cutover(settings, load(settings, name), timeout=timeout, dry_run=dry_run,
                    allow_failed=allow_failed, catch_up=catch_up)


def status(settings: Settings, name: str | None = None) -> list[dict[str, Any]]:
    """``cdc-migrator status``: one status dict per migration (all, or ``name``)."""
    known = migrations(settings) if Path(settings.transforms).is_dir() else {}
    known.update({naming.revert(m.name): reverse_of(m) for m in list(known.values())
                  if m.inverse is not None})
    if name is not None and name not in known:
        load(settings, name)  # raises the usual one-line error for an unknown name
    found = all_status(settings, known, name)
    if name is not None and not found:
        raise Refused(f"migration {name!r} has not started: no state yet")
    return found


def _store(settings: Settings) -> StateStore:
    return StateStore(settings.db, settings.state_collection)


def pause(settings: Settings, name: str) -> None:
    """Consumers and backfill stop applying and hold their position until :func:`resume`."""
    migration = load(settings, name)
    store = _store(settings)
    store.ensure(name, migration.collection)
    store.pause(name)


def resume(settings: Settings, name: str) -> None:
    load(settings, name)
    _store(settings).resume(name)


def cancel(settings: Settings, name: str) -> None:
    """Stop a migration for good: tail, backfill and consume refuse it until :func:`reset`."""
    migration = load(settings, name)
    store = _store(settings)
    store.ensure(name, migration.collection)
    store.cancel(name)


def reset(settings: Settings, name: str) -> str | None:
    """Forget a migration's state, topic position and group offsets: it starts over. After a
    revert that installed the old shape's schema as the validator, the expand schema is put
    back first (the migration writes the new shape again); a note says so."""
    migration = load(settings, name)
    store = _store(settings)
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
    """The first migration of ``collection`` (in file order) not cut over yet.

    Migrations of one collection run in series: this one may start only when every earlier
    one has cut over, which the order guarantees.
    """
    store = _store(settings)
    for migration in migrations(settings).values():
        if migration.collection != collection:
            continue
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
    return migration


def tail(settings: Settings, migrations: list[Migration], stop: threading.Event) -> None:
    """``cdc-migrator tail``: one tailer per migration until ``stop`` is set. The setting
    ``on_history_lost`` says what a tailer does when the change history is gone."""
    tail_until_stopped(settings, migrations, stop)


def backfill(settings: Settings, name: str, *, batch_size: int | None = None,
             rate: float | None = None, reset: bool = False, show_progress: bool = True,
             stop: threading.Event | None = None, workers: int = 1) -> BackfillReport:
    """``cdc-migrator backfill NAME``: the existing documents into the topic, resumable
    (``reset`` starts over), shared by every backfill of NAME running (``workers`` threads in
    this process). See :func:`cdc_migrator.capture.backfill.backfill`."""
    migration = _loaded(settings, name)
    return _backfill(settings, migration, batch_size=batch_size, rate=rate, reset=reset,
                     show_progress=show_progress, stop=stop, workers=workers)


def throttle(settings: Settings, name: str, *, rate: float | None) -> None:
    """``cdc-migrator throttle NAME --rate R`` (``rate`` None: ``--off``): the pace of every
    backfill worker and consumer of NAME together, picked up live. See
    :mod:`cdc_migrator.base.throttle`."""
    if rate is not None:
        rate = OPTIONS["rate"].check(rate, Source("throttle", "--rate"))
    load(settings, name)
    store = _store(settings)
    if store.get(name) is None:  # a state made here would hold nothing but the throttle
        raise Refused(f"cannot throttle {name}: it has not started (no state yet); start it "
                      "(tail, then backfill, or run), then throttle it; nothing changed")
    store.set_throttle(name, rate)


def consume(settings: Settings, migrations: list[Migration],
            stop: threading.Event) -> list[ConsumeStats]:
    """``cdc-migrator consume``: one group member per migration until ``stop`` is set (the
    setting ``instance_id`` gives the members static membership)."""
    return consume_until_stopped(settings, migrations, stop)


def init(settings: Settings, name: str, collection: str, *,
         test_path: Path | None = None) -> list[Path]:
    """``cdc-migrator init NAME``: see :func:`cdc_migrator.operations.scaffold.init_migration`."""
    return init_migration(name, collection, settings.transforms, test_path)


def run(settings: Settings, name: str, *, batch_size: int | None = None,
        rate: float | None = None, timeout: float | None = None, then_cutover: bool = False,
        show_progress: bool = True, stop: threading.Event | None = None) -> RunReport:
    """``cdc-migrator run NAME``: tail, backfill and consume in this process until drained
    (at most ``timeout`` seconds), then cutover with ``then_cutover``."""
    return run_pipeline(settings, _loaded(settings, name), batch_size=batch_size, rate=rate,
                        timeout=timeout, then_cutover=then_cutover,
                        show_progress=show_progress, stop=stop)


def dlq_list(settings: Settings, name: str) -> list[DeadLetter]:
    """``cdc-migrator dlq list NAME``: every dead letter of the migration."""
    return read_dead_letters(settings, load(settings, name))


def dlq_retry(settings: Settings, name: str) -> RetryReport:
    """``cdc-migrator dlq retry NAME``: replay dead letters through the fixed transform."""
    return retry_dead_letters(settings, load(settings, name))


def translate_service_error(exc: BaseException) -> CdcMigratorError | None:
    """A one-line error for a failure of the services (unreachable, auth); None for bugs."""
    if isinstance(exc, CdcMigratorError):
        return exc
    refused = refusals.explain(exc)
    if refused is not None:
        return refused
    if isinstance(exc, ServerSelectionTimeoutError):
        return ServiceUnavailable(f"cannot reach MongoDB: {_first_line(exc)}")
    if isinstance(exc, OperationFailure) and (exc.code in (13, 18) or _is_auth_failure(exc)):
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
    return logs.mask(message_of(exc) or type(exc).__name__)
