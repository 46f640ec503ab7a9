"""Metrics and health over HTTP for the always-on commands (``tail``, ``consume``, ``run``).

``/metrics`` serves the Prometheus metrics of :mod:`cdc_migrator.base.metrics`, ``/healthz``
answers 200 while the process runs (liveness), ``/readyz`` answers 200 when the process is able
to work: MongoDB and Kafka answer and no piece of a migration it serves is stopped or stalled;
else 503 with the reasons (readiness). A paused or cancelled migration leaves the process
ready (a pause must not block a rollout): the 200 answer names it, as ``status`` does.

Lag and readiness are measured by a background thread every few seconds, through one MongoDB
client and one Kafka client kept for the process's life, so a scrape or a probe never waits for
the broker and a check opens no connection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pymongo
from kafka import KafkaAdminClient
from prometheus_client.exposition import choose_encoder

from ..base import codec, logs, refusals, topics
from ..base.messages import first_line
from ..base.metrics import (
    CONSUMER_LAG,
    DOCUMENTS_FAILED,
    DOCUMENTS_UNCHANGED,
    EVENTS_APPLIED,
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    PIPELINE_STOPPED,
    REGISTRY,
    TAILER_DELAY,
)
from ..base.settings import Settings
from ..core.state import StateStore
from ..errors import UsageError
from ..migration import Migration

log = logging.getLogger("cdc_migrator.observability")

REFRESH_INTERVAL = 3.0

class Health:
    """Readiness, measured every ``interval`` seconds in a thread; also refreshes the lag."""

    def __init__(self, settings: Settings, migrations: Sequence[Migration], *,
                 track_lag: bool, interval: float = REFRESH_INTERVAL) -> None:
        self.settings = settings
        self.migrations = list(migrations)
        self.track_lag = track_lag
        self.interval = interval
        self._ready: tuple[bool, str] = (False, "starting: first check not done yet")
        self._checked_at = 0.0
        self._stop = threading.Event()
        # Short timeouts of its own, so a check answers well within a probe's timeout.
        self._mongo = pymongo.MongoClient(settings.mongodb_uri, **{
            **settings.mongo_client_options, "serverSelectionTimeoutMS": 2000,
            **codec.client_options()})
        self._kafka: KafkaAdminClient | None = None  # made by the first check that reaches Kafka
        self._thread = threading.Thread(target=self._loop, daemon=True, name="health")
        self._stopped_labels: set[tuple[str, ...]] = set()  # PIPELINE_STOPPED samples set

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)
        self._mongo.close()
        if self._kafka is not None:
            self._kafka.close()

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) from the last check; a check overdue is itself a reason."""
        ready, reason = self._ready
        if ready and time.monotonic() - self._checked_at > 5 * self.interval + 10:
            return False, "health checks stalled"
        return ready, reason

    def _loop(self) -> None:
        if len(self.migrations) == 1:
            logs.bind(migration=self.migrations[0].name)
        while not self._stop.is_set():
            ready, reason = self.check()
            if (ready, reason) != self._ready:
                log.log(logging.INFO if ready else logging.WARNING, "%s",
                        reason if ready else f"not ready: {reason}")
            self._ready = ready, reason
            self._checked_at = time.monotonic()
            self._stop.wait(self.interval)

    def check(self) -> tuple[bool, str]:
        """(ready, reason): not ready names the problems; ready names the migrations held."""
        held: list[str] = []
        problems = self._check_mongo(held) + self._check_kafka()
        if problems:
            return False, "; ".join(problems)
        return True, "; ".join(["ready", *held])

    def _check_mongo(self, held: list[str]) -> list[str]:
        try:
            db = self._mongo[self.settings.database_name]
            db.command("ping")
            store = StateStore(db, self.settings.state_collection)
            problems = []
            stopped: set[tuple[str, ...]] = set()
            for m in self.migrations:
                state = store.get(m.name)
                if state is None:
                    continue
                # Held on purpose, not broken: the process can work, so it stays ready.
                if state.cancelled:
                    held.append(f"migration {m.name} is cancelled")
                elif state.paused:
                    held.append(f"migration {m.name} is paused")
                for component, record in state.stopped.items():
                    error = logs.mask(str(record.get("error") or ""))
                    document = "" if record.get("id") is None else repr(record["id"])
                    problems.append(f"migration {m.name}: {component} stopped"
                                    + (f" on document {document}" if document else "")
                                    + f": {error}")
                    stopped.add((m.name, component, document, error[:200]))
                for component, record in state.stalled.items():
                    problems.append(f"migration {m.name}: {component} stalled: "
                                    f"{logs.mask(str(record.get('error') or ''))}")
            self._export_stopped(stopped)
            return problems
        except Exception as exc:  # any failure means: not ready, with its reason
            return [f"MongoDB: {first_line(exc)}"]

    def _export_stopped(self, stopped: set[tuple[str, ...]]) -> None:
        for labels in self._stopped_labels - stopped:
            PIPELINE_STOPPED.remove(*labels)
        for labels in stopped:
            PIPELINE_STOPPED.labels(*labels).set(1)
        self._stopped_labels = stopped

    def _check_kafka(self) -> list[str]:
        # Reading the group's offsets proves the broker answers; the lag comes with it.
        try:
            if self._kafka is None:
                self._kafka = topics.admin(self.settings)
            for m in self.migrations:
                lag = topics.admin_lag(self._kafka, self.settings.topic(m.collection),
                                       self.settings.group(m.name))
                if self.track_lag:
                    for p in lag.partitions:
                        CONSUMER_LAG.labels(m.name, str(p.partition)).set(p.lag)
            return []
        except Exception as exc:  # any failure means: not ready, with its reason
            refused = refusals.explain(exc)
            return [f"Kafka: {refused}" if refused else f"Kafka: {first_line(exc)}"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(REGISTRY), content_type)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            ready, reason = self.server.health.readiness()
            self._reply(200 if ready else 503, f"{reason}\n".encode())
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _reply(self, code: int, body: bytes,
               content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    health: Health


@contextlib.contextmanager
def serving(settings: Settings, migrations: Sequence[Migration], components: Sequence[str],
            host: str = "") -> Iterator[int | None]:
    """Serve /metrics, /healthz and /readyz on the settings' ``metrics_port`` (0: any free
    port) while in the block.

    ``components`` are the pieces this process runs ("tailer", "backfill", "consumer"): their
    metrics are exported from the start, at zero. Yields the port, or None when no port is set
    (no server).
    """
    port = settings.metrics_port
    if port is None:
        yield None
        return
    for m in migrations:
        if "tailer" in components or "backfill" in components:
            EVENTS_PRODUCED.labels(m.name)
        if "tailer" in components:
            TAILER_DELAY.labels(m.name)
        if "consumer" in components:
            for counter in (EVENTS_CONSUMED, EVENTS_APPLIED, DOCUMENTS_UNCHANGED,
                            DOCUMENTS_FAILED):
                counter.labels(m.name)
    try:
        server = _Server((host, port), _Handler)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from None
    health = Health(settings, migrations, track_lag="consumer" in components)
    server.health = health
    actual = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="metrics")
    health.start()
    thread.start()
    log.info("serving /metrics, /healthz and /readyz on port %d", actual)
    try:
        yield actual
    finally:
        server.shutdown()
        server.server_close()
        health.stop()
