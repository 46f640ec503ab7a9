"""Logging: plain lines or one JSON object per line, each naming its migration and component.

Every record, from this package or a library (kafka-python, pymongo, warnings), goes through
one handler on stderr whose filters add the ``migration`` and ``component`` fields and mask
secrets: the credentials of connection strings, any value quoted after a key naming a password
or a secret (kafka-python logs its whole configuration at debug), and the secrets
:func:`add_secrets` registered (the settings' passwords), in every form text gives them: raw,
``repr``- and JSON-escaped, percent-encoded (:func:`~cdc_migrator.base.masking.secret_forms`).
A long-running piece calls :func:`bind` at its start to name what its thread logs about.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

from .masking import MIN_SECRET_LENGTH, mask_forms, secret_forms

FORMATS = ("text", "json")

_migration: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cdc_migrator_log_migration", default=None)
_component: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cdc_migrator_log_component", default=None)

# Records of these modules belong to one component, whichever thread logs them.
_COMPONENT_OF_LOGGER = {
    "cdc_migrator.tailer": "tailer",
    "cdc_migrator.consumer": "consumer",
    "cdc_migrator.backfill": "backfill",
    "cdc_migrator.apply": "apply",
}

_secrets: set[str] = set()
_forms: list[str] = []  # every form of every secret, longest first
_handler: logging.Handler | None = None
_format = "text"


def bind(*, migration: str | None = None, component: str | None = None) -> None:
    """Name the migration and component of what the calling thread logs from now on.

    Each thread has its own values (a new thread starts with none).
    """
    if migration is not None:
        _migration.set(migration)
    if component is not None:
        _component.set(component)


def add_secrets(*secrets: str | None) -> None:
    """Mask these strings (e.g. a SASL password), in every form, in every log line and error
    message. Strings shorter than ``MIN_SECRET_LENGTH`` are masked only where a key names
    them: they would blank out ordinary words."""
    global _forms
    _secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)
    _forms = sorted({f for s in _secrets for f in secret_forms(s)}, key=len, reverse=True)


def mask(text: str) -> str:
    """``text`` without URI credentials, keyed secrets or registered secrets."""
    return mask_forms(text, _forms)


def is_json() -> bool:
    """True when log lines are JSON objects (progress is then logged, not drawn)."""
    return _format == "json"


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "migration", None) is None:
            record.migration = _migration.get()
        if getattr(record, "component", None) is None:
            record.component = _COMPONENT_OF_LOGGER.get(record.name) or _component.get()
        return True


class _Masking(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when formatting
            return True
        record.msg, record.args = mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


class _LibraryLevel(logging.Filter):
    """Drops the drivers' records below their level: the Kafka client's warnings are created
    (:mod:`cdc_migrator.base.refusals` reads the causes of refused connections in them) but not
    shown unless asked for."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in ("kafka", "pymongo"):
            return record.levelno >= self.level
        return True


class TextFormatter(logging.Formatter):
    """``2025-01-31 12:00:00 INFO    consumer add_default_role: message``

    A library's record also names its logger (``… consumer add_default_role kafka.conn: …``).
    """

    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        library = None if record.name.startswith("cdc_migrator") else record.name
        where = " ".join(w for w in (record.component, record.migration, library) if w)  # type: ignore[attr-defined]
        line = (f"{self.formatTime(record, self.datefmt)} {record.levelname:<7} "
                f"{where or record.name}: {record.getMessage()}")
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    """One object per line: ts, level, logger, message, migration, component (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "migration": record.migration,  # type: ignore[attr-defined]
            "component": record.component,  # type: ignore[attr-defined]
        }
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(log_format: str = "text", verbosity: int = 0) -> None:
    """Send every log record to stderr in ``log_format`` ("text" or "json").

    ``verbosity``: -1 warnings and errors only, 0 informational, 1 debug and the Kafka and
    MongoDB drivers' informational records, 2 debug including the drivers'. Calling it again
    replaces the previous set-up and forgets the secrets registered.

    The drivers are silent by default: during an outage they log every reconnect attempt, and
    the tool logs each outage once itself (see :mod:`cdc_migrator.base.retry`).
    """
    global _handler, _format, _forms
    _secrets.clear()
    _forms = []
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = _StderrHandler()
    handler.addFilter(_Context())
    handler.addFilter(_Masking())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    own = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.getLogger("cdc_migrator").setLevel(own)
    libraries = logging.DEBUG if verbosity >= 2 else (
        logging.INFO if verbosity == 1 else logging.CRITICAL)
    handler.addFilter(_LibraryLevel(libraries))
    logging.getLogger("pymongo").setLevel(libraries)
    logging.getLogger("kafka").setLevel(min(libraries, logging.WARNING))
    logging.captureWarnings(True)  # warnings become records, so JSON output stays JSON
    _handler, _format = handler, log_format
