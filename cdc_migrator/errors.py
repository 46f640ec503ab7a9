"""Every exception class of the tool: the errors a user can cause, each mapped to an exit code
by the command line, and the signals the pieces raise to one another."""

from __future__ import annotations


class CdcMigratorError(Exception):
    """An expected failure with a one-line message for the user.

    ``reason`` is its code where a piece stopped on it (``status``, the
    ``cdc_migrator_pipeline_stopped`` metric): one word from a closed list, unlike the message.
    """

    exit_code = 1
    reason = "refused"


class UsageError(CdcMigratorError):
    """Bad input or configuration: a migration file, a name, an option. Exit code 2."""

    exit_code = 2
    reason = "usage"


class SettingError(UsageError):
    """A value a setting or a command's option does not take: one line naming the value,
    where it came from and what is allowed (exit 2)."""


class NotAllowed(Exception):
    """Inside the check of a value (``base/checks.py``): the value is not taken; the message,
    when any, says what is allowed. The check turns it into a :class:`SettingError`."""


class PatchError(CdcMigratorError):
    """A transform returned something that is not a patch, None or DELETE: the run fails
    (exit 1). Unlike a migration file that does not load (exit 2), it shows only on a
    document, at any point of the run."""

    document_id: object = None  # the document it was given, when known
    reason = "invalid_patch"


class Refused(CdcMigratorError):
    """An operation declined with a reason (cutover not ready, verify found documents)."""


class ServiceUnavailable(CdcMigratorError):
    """MongoDB or Kafka could not be reached before the deadline."""

    reason = "service_unavailable"

    def __init__(self, message: str, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service  # "MongoDB" or "Kafka", when known


class HistoryLost(CdcMigratorError):
    """The change stream can no longer resume from the saved point: a new backfill is needed."""

    reason = "history_lost"


class CaptureStopped(CdcMigratorError):
    """The change stream cannot go on: the migrated collection was dropped or renamed, or the
    stream was invalidated (its database was dropped)."""

    reason = "capture_stopped"


class EventsLost(CdcMigratorError):
    """Events were deleted from the topic before the group consumed them: a new backfill is
    needed."""

    reason = "events_lost"


class ConnectionRefused(CdcMigratorError):
    """A service refused the connection for good (a wrong password, an untrusted certificate):
    retrying cannot help."""

    reason = "connection_refused"


class StopRequested(CdcMigratorError):
    """The process was asked to stop (SIGTERM) while it waited for a service to come back.

    Nothing unacknowledged was recorded as done, so the next start repeats it. The pieces
    catch it and return; should it reach the command line, it is one line and exit 0.
    """

    exit_code = 0
    reason = "stop_requested"


class RecordTooLarge(CdcMigratorError):
    """A record the producer or the topic refused as too large, with nothing smaller to send."""

    reason = "record_too_large"


class ClientAbandoned(BaseException):
    """Raised in a consumer's worker thread whose Kafka client was replaced while it was stuck:
    it touches nothing any more (not an Exception, so no retry catches it)."""


class PoisonRecord(ValueError):
    """A record value (or key) that is not a valid ``cdc_migrator.Envelope``.

    ``str(exc)`` is a one-line reason, suitable for a dead-letter header or a log line.
    """


class TokenRefused(Exception):
    """The OAUTHBEARER token endpoint or command refused to give a token: retrying cannot
    help."""


#: The reason code of a piece stopped by an error that is not one of the tool's (a bug).
UNEXPECTED = "unexpected"


def reason_of(exc: BaseException) -> str:
    """The reason code of ``exc``: its class's ``reason``, or :data:`UNEXPECTED`."""
    return exc.reason if isinstance(exc, CdcMigratorError) else UNEXPECTED
