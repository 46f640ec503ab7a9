"""Riding out lost connections: retries with backoff, one log line per outage, a deadline.

The long-running pieces (tailer, backfill, consumer, and ``run`` around them) pass each step
that talks to MongoDB or Kafka through a :class:`Retrier`. A transient failure (a lost or
refused connection, a timeout, no primary or broker available) starts an *outage* of that
service: one warning names the service and the error, and the step is tried again with
exponential backoff (0.25 s doubling to 4 s, with jitter). The first success ends the outage
with one info line giving its duration. An outage longer than the deadline
(``--retry-deadline``, 300 s by default) stops the piece with :class:`ServiceUnavailable`: one
line naming the service, exit 1.

The deadline is kept within one attempt: an outage starts when the first failed attempt
started (not when it gave up), no backoff reaches past the deadline, and one attempt waits for
a server at most as long as the deadline (MongoDB's server selection, ``--mongo-timeout-ms``,
Kafka's bootstrap, 10 s, and the request for an OAUTHBEARER token, 30 s, are all capped by it;
see ``Settings.client``, ``topics.client_options`` and ``Settings.token_request_seconds``). So
a piece gives up at most one attempt after the deadline, and with a deadline of 10 s or less
at most twice the deadline after the outage began.

Repeating a step is safe because every piece saves its position (resume token, backfill cursor,
consumer offsets) only after the work before it was acknowledged: a retried step at worst does
again what was done already, which the guarded, idempotent apply makes harmless.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka.errors import KafkaError, KafkaTimeoutError
from pymongo.errors import ConnectionFailure, OperationFailure, ServerSelectionTimeoutError

from ..errors import ServiceUnavailable, StopRequested
from . import refusals
from .messages import first_line
from .settings import Settings

T = TypeVar("T")

MONGODB = "MongoDB"
KAFKA = "Kafka"
BACKOFF_START = 0.25
BACKOFF_CAP = 4.0
# Server errors that mean "not now" (shutdown, election, network), not "never".
_MONGO_TRANSIENT_CODES = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}


def service_of(exc: BaseException) -> str | None:
    """``"MongoDB"`` or ``"Kafka"`` when ``exc`` is a transient failure worth retrying."""
    if refusals.explain(exc) is not None:  # a wrong password is not an outage
        return None
    if isinstance(exc, ConnectionFailure):  # includes AutoReconnect, server selection timeout
        return MONGODB
    if isinstance(exc, OperationFailure) and exc.code in _MONGO_TRANSIENT_CODES:
        return MONGODB
    if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        return KAFKA
    return None


def waited_for_server(exc: BaseException) -> bool:
    """Whether ``exc`` says its call waited the whole time a client waits for a server:
    pymongo's server selection timed out, or kafka-python's bootstrap did."""
    return isinstance(exc, ServerSelectionTimeoutError) or (
        isinstance(exc, KafkaTimeoutError) and "Unable to bootstrap" in str(exc))


@dataclass
class _Outage:
    started: float
    attempts: int = 0
    error: str = ""


class Retrier:
    """Retries the steps of one piece (one thread) and logs each outage once."""

    def __init__(self, settings: Settings, logger: logging.Logger | None = None,
                 stop: threading.Event | None = None) -> None:
        self.deadline = settings.retry_deadline
        self.log = logger or logging.getLogger("cdc_migrator.retry")
        self.stop = stop
        self.where = {MONGODB: _hosts(settings.mongodb_uri),
                      KAFKA: settings.kafka_bootstrap_servers}
        # How long a failure that waited for a server waited: MongoDB's server selection,
        # Kafka's bootstrap. The service was unreachable that long before the failure.
        self.waits = {MONGODB: settings.server_selection_ms / 1000,
                      KAFKA: settings.kafka_bootstrap_ms / 1000}
        self._outages: dict[str, _Outage] = {}

    def call(self, service: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, tried again while it fails transiently.

        ``service`` is what a success proves reachable. Raises a non-transient error at once,
        :class:`ServiceUnavailable` after the deadline, :class:`StopRequested` when stopped.
        """
        while True:
            started = time.monotonic()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self.failed(exc, started)
                continue
            self.recovered(service)
            if service == KAFKA:
                refusals.forget()
            return result

    def failed(self, exc: Exception, started: float | None = None) -> None:
        """One failed attempt: re-raise ``exc`` unless it is transient, else wait the backoff.

        ``started`` is when the attempt began (``time.monotonic()``): an outage begins there,
        since the service did not answer from then on. Without it (a long-running loop that
        failed), it begins when the failure began waiting for a server, if it did (see
        :func:`waited_for_server`), else now. The first failure of an outage is logged as a
        warning; later ones are not.
        """
        service = service_of(exc)
        if service is None:
            refused = refusals.explain(exc)
            if refused is not None:
                raise refused from None
            raise exc
        now = time.monotonic()
        if started is None:
            started = now - self.waits[service] if waited_for_server(exc) else now
        outage = self._outages.get(service)
        if outage is None:
            outage = self._outages[service] = _Outage(started)
            self.log.warning("%s at %s unavailable (%s); retrying with backoff for up to %gs "
                             "(--retry-deadline)", service, self.where[service],
                             first_line(exc), self.deadline)
        outage.error = first_line(exc)
        elapsed = now - outage.started
        if elapsed >= self.deadline:
            raise ServiceUnavailable(
                f"{service} at {self.where[service]} unavailable for {elapsed:.0f}s, longer "
                f"than the retry deadline ({self.deadline:g}s, --retry-deadline): "
                f"{outage.error}", service) from None
        delay = min(BACKOFF_CAP, BACKOFF_START * 2 ** outage.attempts)
        delay = min(delay * random.uniform(0.5, 1.0), self.deadline - elapsed)
        outage.attempts += 1
        if self.stop is not None:
            if self.stop.wait(delay):
                raise StopRequested(f"stopped while waiting for {service} at "
                                    f"{self.where[service]}; nothing unacknowledged was "
                                    "recorded as done")
        else:
            time.sleep(delay)

    def recovered(self, *services: str) -> None:
        """End the outage of ``services`` (all when none is named), logging its duration."""
        for service in services or list(self._outages):
            outage = self._outages.pop(service, None)
            if outage is not None:
                self.log.info("%s at %s reachable again after %.1fs (%d retries)", service,
                              self.where[service], time.monotonic() - outage.started,
                              outage.attempts)



def _hosts(uri: str) -> str:
    """The host list of a MongoDB URI, without credentials (up to the last "@", whatever the
    password holds) or options."""
    rest = uri.split("://", 1)[-1].rpartition("@")[2]
    return rest.split("/", 1)[0].split("?", 1)[0]
