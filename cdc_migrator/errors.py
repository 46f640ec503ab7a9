"""Errors a user can cause, each mapped to an exit code by the command line."""

from __future__ import annotations


class CdcMigratorError(Exception):
    """An expected failure with a one-line message for the user."""

    exit_code = 1


class UsageError(CdcMigratorError):
    """Bad input or configuration: a migration file, a name, an option. Exit code 2."""

    exit_code = 2


class PatchError(UsageError):
    """A transform returned something that is not a patch, None or DELETE."""

    document_id: object = None  # the document it was given, when known


class Refused(CdcMigratorError):
    """An operation declined with a reason (cutover not ready, verify found documents)."""


class ServiceUnavailable(CdcMigratorError):
    """MongoDB or Kafka could not be reached before the deadline."""

    def __init__(self, message: str, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service  # "MongoDB" or "Kafka", when known


class HistoryLost(CdcMigratorError):
    """The change stream can no longer resume from the saved point: a new backfill is needed."""


class CaptureStopped(CdcMigratorError):
    """The change stream cannot go on: the migrated collection was dropped or renamed, or the
    stream was invalidated (its database was dropped)."""


class EventsLost(CdcMigratorError):
    """Events were deleted from the topic before the group consumed them: a new backfill is
    needed."""


class ConnectionRefused(CdcMigratorError):
    """A service refused the connection for good (a wrong password, an untrusted certificate):
    retrying cannot help."""
