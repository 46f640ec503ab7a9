"""The Python API: one function per command, over a :class:`Settings`.

The command line is a thin layer over these; scripts and tests call them directly.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from .apply import ApplyReport, DryRunLine, apply_migration
from .apply import dry_run as _dry_run
from .config import Settings, mask_uri
from .errors import CdcMigratorError, ServiceUnavailable, UsageError
from .migration import Migration, get_migration, load_migrations
from .verify import VerifyReport
from .verify import verify as _verify


def load(settings: Settings, name: str) -> Migration:
    """The migration called ``name`` from the settings' transforms directory."""
    return get_migration(settings.transforms, name)


def migrations(settings: Settings) -> dict[str, Migration]:
    return load_migrations(settings.transforms)


def apply(settings: Settings, name: str, **options: Any) -> ApplyReport:
    """``cdc-migrator apply NAME``: see :func:`cdc_migrator.apply.apply_migration`."""
    return apply_migration(settings, load(settings, name), **options)


def dry_run(settings: Settings, name: str, **options: Any) -> list[DryRunLine]:
    """``cdc-migrator apply NAME --dry-run``: each document's patch of the first batch."""
    return _dry_run(settings, load(settings, name), **options)


def verify(settings: Settings, name: str, **options: Any) -> VerifyReport:
    """``cdc-migrator verify NAME``: documents the transform would still change."""
    return _verify(settings, load(settings, name), **options)


def translate_service_error(exc: BaseException) -> CdcMigratorError | None:
    """A one-line error for a failure of the services (unreachable, auth); None for bugs."""
    if isinstance(exc, CdcMigratorError):
        return exc
    if isinstance(exc, ServerSelectionTimeoutError):
        return ServiceUnavailable(f"cannot reach MongoDB: {_first_line(exc)}")
    if isinstance(exc, OperationFailure) and exc.code in (13, 18):
        return ServiceUnavailable(f"MongoDB refused the credentials: {_first_line(exc)}")
    if isinstance(exc, ConfigurationError):
        return UsageError(f"MongoDB configuration: {_first_line(exc)}")
    if isinstance(exc, ConnectionFailure):
        return ServiceUnavailable(f"lost the connection to MongoDB: {_first_line(exc)}")
    try:
        from kafka.errors import KafkaError, NoBrokersAvailable
    except ImportError:  # pragma: no cover - kafka-python is a dependency
        return None
    if isinstance(exc, NoBrokersAvailable):
        return ServiceUnavailable("cannot reach Kafka: no broker answered at the bootstrap servers")
    if isinstance(exc, KafkaError):
        return ServiceUnavailable(f"Kafka: {type(exc).__name__}: {_first_line(exc)}")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return mask_uri(text)[:300]
