"""The Python API: one function per command, over a :class:`Settings`.

The command line is a thin layer over these; scripts and tests call them directly.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from .apply.consumer import consume_until_stopped, group_id
from .apply.shortcut import ApplyReport, DryRunLine, apply_migration
from .apply.shortcut import dry_run as _dry_run
from .base import deadletters as deadletter
from .base import logs, refusals, topics
from .base.retry import MONGODB, Retrier, message_of
from .base.settings import Settings
from .base.state import CANCELLED, CUT_OVER, StateStore
from .capture.backfill import BackfillReport
from .capture.backfill import backfill as _backfill
from .capture.tailer import tail_until_stopped
from .errors import CdcMigratorError, Refused, ServiceUnavailable, UsageError
from .migration import Migration, get_migration, load_migrations
from .operations.cutover import CutoverReport, load_schema
from .operations.cutover import cutover as _cutover
from .operations.scaffold import init_migration
from .operations.schema import validator_for
from .operations.status import all_status
from .operations.verify import VerifyReport
from .operations.verify import verify as _verify
from .pipeline import RunReport, run_pipeline


def load(settings: Settings, name: str) -> Migration:
    """The migration called ``name`` from the settings' transforms directory."""
    return get_migration(settings.transforms, name)


def migrations(settings: Settings) -> dict[str, Migration]:
    return load_migrations(settings.transforms)


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


def apply(settings: Settings, name: str, **options: Any) -> ApplyReport:
    """``cdc-migrator apply NAME``: see :func:`cdc_migrator.apply.shortcut.apply_migration`."""
    migration = load(settings, name)
    require_collection(settings, migration)
    return apply_migration(settings, migration, **options)


def dry_run(settings: Settings, name: str, **options: Any) -> list[DryRunLine]:
    """``cdc-migrator apply NAME --dry-run``: each document's patch of the first batch."""
    migration = load(settings, name)
    require_collection(settings, migration)
    return _dry_run(settings, migration, **options)


def verify(settings: Settings, name: str, **options: Any) -> VerifyReport:
    """``cdc-migrator verify NAME``: documents the transform would still change.

    When the migration names a contract schema, documents breaking it are reported too.
    """
    migration = load(settings, name)
    if migration.contract_schema:
        options.setdefault("schema_check",
                           validator_for(load_schema(settings, migration.contract_schema)))
    return _verify(settings, migration, **options)


def cutover(settings: Settings, name: str, **options: Any) -> CutoverReport:
    """``cdc-migrator cutover NAME``: see :func:`cdc_migrator.operations.cutover.cutover`."""
    return _cutover(settings, load(settings, name), **options)


def status(settings: Settings, name: str | None = None) -> list[dict[str, Any]]:
    """``cdc-migrator status``: one status dict per migration (all, or ``name``)."""
    known = migrations(settings) if Path(settings.transforms).is_dir() else {}
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
    _store(settings).ensure(name, migration.collection)
    _store(settings).set(name, paused=True)


def resume(settings: Settings, name: str) -> None:
    load(settings, name)
    _store(settings).set(name, paused=False)


def cancel(settings: Settings, name: str) -> None:
    """Stop a migration for good: tail, backfill and consume refuse it until :func:`reset`."""
    migration = load(settings, name)
    _store(settings).ensure(name, migration.collection)
    _store(settings).set(name, cancelled=True, phase=CANCELLED)


def reset(settings: Settings, name: str) -> None:
    """Forget a migration's state, topic position and group offsets: it starts over."""
    migration = load(settings, name)
    _store(settings).delete(name)
    topics.delete_group(settings, group_id(settings, migration))


def next_migration(settings: Settings, collection: str) -> Migration | None:
    """The first migration of ``collection`` (in file order) not cut over yet.

    Migrations of one collection run in series: this one may start only when every earlier
    one has cut over, which the order guarantees.
    """
    store = _store(settings)
    for migration in migrations(settings).values():
        if migration.collection != collection:
            continue
        state = store.get(migration.name) or {}
        if state.get("phase") != CUT_OVER:
            return migration
    return None


def tail(settings: Settings, migrations: list[Migration], stop: threading.Event, *,
         on_history_lost: str = "fail") -> None:
    """``cdc-migrator tail``: one tailer per migration until ``stop`` is set.

    ``on_history_lost``: ``"fail"`` (stop, exit 1) or ``"rebackfill"`` (re-arm and backfill
    again), see :class:`cdc_migrator.capture.tailer.Tailer`.
    """
    tail_until_stopped(settings, migrations, stop, on_history_lost=on_history_lost)


def backfill(settings: Settings, name: str, **options: Any) -> BackfillReport:
    """``cdc-migrator backfill NAME``: see :func:`cdc_migrator.capture.backfill.backfill`."""
    migration = load(settings, name)
    require_collection(settings, migration, retry=True)
    return _backfill(settings, migration, **options)


def consume(settings: Settings, migrations: list[Migration], stop: threading.Event, *,
            instance_id: str | None = None) -> None:
    """``cdc-migrator consume``: one group member per migration until ``stop`` is set."""
    consume_until_stopped(settings, migrations, stop, instance_id=instance_id)


def init(settings: Settings, name: str, collection: str, *,
         test_path: Path | None = None) -> list[Path]:
    """``cdc-migrator init NAME``: see :func:`cdc_migrator.operations.scaffold.init_migration`."""
    return init_migration(name, collection, settings.transforms, test_path)


def run(settings: Settings, name: str, **options: Any) -> RunReport:
    """``cdc-migrator run NAME``: the pipeline in one process until drained."""
    migration = load(settings, name)
    require_collection(settings, migration, retry=True)
    return run_pipeline(settings, migration, **options)


def dlq_list(settings: Settings, name: str) -> list[deadletter.DeadLetter]:
    """``cdc-migrator dlq list NAME``: every dead letter of the migration."""
    return deadletter.read(settings, load(settings, name))


def dlq_retry(settings: Settings, name: str) -> deadletter.RetryReport:
    """``cdc-migrator dlq retry NAME``: replay dead letters through the fixed transform."""
    return deadletter.retry(settings, load(settings, name))


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
