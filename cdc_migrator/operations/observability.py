"""Metrics, health and hooks of the long-running commands (``tail``, ``consume``, ``backfill``,
``run``, ``revert``, ``next --run``).

``/metrics`` serves the Prometheus metrics of :mod:`cdc_migrator.base.metrics`, ``/healthz``
answers 200 while the process runs (liveness), ``/readyz`` answers 200 when the process is able
to work: MongoDB and Kafka answer and no piece of a migration it serves is stopped or stalled;
else 503 with the reasons (readiness). A paused or cancelled migration leaves the process
ready (a pause must not block a rollout): the 200 answer names it, as ``status`` does. A
migration held because this process's code is not its code in force makes it unready, so
that a rollout of edited code stops at the first new instance until ``accept``.

A :class:`Watch` looks at the process's migrations every few seconds in a thread, through one
MongoDB client and one Kafka client kept for the process's life, so a scrape or a probe never
waits for the broker and a check opens no connection. Each look measures readiness, sets the
gauges of what ``status`` shows (:mod:`.gauges`), and tells the hooks (:mod:`.hooks`) of the
phase changes since the last one. It runs with a metrics port, or with hooks (then without
the HTTP server).
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

from ..base import codec, logs, metrics, refusals, topics
from ..base.messages import first_line
from ..base.metrics import CODE_HOLDING, CODE_INFO, REGISTRY
from ..base.settings import Settings
from ..core.fingerprint import fingerprint, short
from ..core.state import MigrationState, StateStore
from ..errors import UsageError
from ..migration import Migration
from . import gauges
from .hooks import Hooks
from .status import RangesOf, migration_status

log = logging.getLogger("cdc_migrator.observability")

REFRESH_INTERVAL = 3.0


class Watch:
    """What a process sees of its migrations, every ``interval`` seconds, in a thread:
    readiness, the gauges of their status, and their phase changes for the ``hooks``.

    ``ranges_of`` gives the backfill's ranges (the backfill's own, handed in by the caller).
    """

    def __init__(self, settings: Settings, migrations: Sequence[Migration], *,
                 ranges_of: RangesOf | None = None, hooks: Hooks | None = None,
                 interval: float = REFRESH_INTERVAL) -> None:
        self.settings = settings
        self.migrations = list(migrations)
        self.ranges_of, self.hooks = ranges_of, hooks
        self.interval = interval
        self._ready: tuple[bool, str] = (False, "starting: first check not done yet")
        self._checked_at = 0.0
        self._stop = threading.Event()
        # Short timeouts of its own, so a check answers well within a probe's timeout.
        self._mongo: pymongo.MongoClient = pymongo.MongoClient(settings.mongodb_uri, **{
            **settings.mongo_client_options, "serverSelectionTimeoutMS": 2000,
            **codec.client_options()})
        self._kafka: KafkaAdminClient | None = None  # made by the first check that reaches Kafka
        self._thread = threading.Thread(target=self._loop, daemon=True, name="watch")
        self._published = metrics.Published()
        self.fingerprints = {m.name: fingerprint(m, settings.schemas) for m in self.migrations}

    @property
    def store(self) -> StateStore:
        return StateStore(self._mongo[self.settings.database_name],
                          self.settings.state_collection)

    def start(self) -> None:
        """Read where the migrations stand now (the hooks announce only what changes after),
        then look every ``interval`` seconds."""
        if self.hooks is not None:
            try:
                store = self.store
                for m in self.migrations:
                    self.hooks.baseline(m.name, store.get(m.name))
            except Exception as exc:  # the first look sets the baseline instead
                log.debug("no baseline for the hooks: %s", exc)
        self._thread.start()

    def stop(self) -> None:
        """Stop looking, after a last look for the hooks: what changed since the one before
        is announced."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)
            # Not while a check hangs (its clients are busy); without hooks, no one to tell.
            if self.hooks is not None and not self._thread.is_alive():
                self.check()
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
        """One look: (ready, reason); not ready names the problems, ready the migrations
        held."""
        held: list[str] = []
        kafka_problems: list[str] = []
        lags, members = self._measure_kafka(kafka_problems)
        problems = self._look(held, lags, members) + kafka_problems
        if problems:
            return False, "; ".join(problems)
        return True, "; ".join(["ready", *held])

    def _look(self, held: list[str], lags: dict[str, topics.Lag],
              members: dict[str, int]) -> list[str]:
        """Each migration's state: its readiness problems, its gauges, its phase changes."""
        try:
            self._mongo[self.settings.database_name].command("ping")
            store = self.store
            problems: list[str] = []
            found: list[metrics.Sample] = []
            for m in self.migrations:
                state = store.get(m.name)
                problems += self._export_code(m.name, state)
                if state is None:
                    continue
                problems += _problems(state, held)
                status = migration_status(self.settings, m, state, ranges_of=self.ranges_of,
                                          lag_of=lambda m: lags.get(m.name), client=self._mongo)
                found += gauges.samples(status, state, members.get(m.name))
                if self.hooks is not None:
                    self.hooks.watch(store, state, status)
            self._published.update(found)
            return problems
        except Exception as exc:  # any failure means: not ready, with its reason
            return [f"MongoDB: {first_line(exc)}"]

    def _export_code(self, name: str, state: MigrationState | None) -> list[str]:
        """The code this process runs for ``name`` against the code in force, as metrics;
        a hold as the reason it is not ready."""
        loaded = self.fingerprints[name]
        in_force = state.code.fingerprint if state is not None else None
        CODE_INFO.labels(name).info({"loaded": short(loaded), "in_force": short(in_force)})
        holding = in_force is not None and in_force != loaded
        CODE_HOLDING.labels(name).set(1 if holding else 0)
        if not holding:
            return []
        return [f"migration {name} holds: this process runs its code with fingerprint "
                f"{short(loaded)}, the code in force is {short(in_force)} (`cdc-migrator "
                f"accept {name}` takes this code; or run the code in force)"]

    def _measure_kafka(self, problems: list[str]) -> tuple[dict[str, topics.Lag],
                                                            dict[str, int]]:
        """The group's lag and members of each migration. Reading the group's offsets proves
        the broker answers."""
        lags: dict[str, topics.Lag] = {}
        members: dict[str, int] = {}
        try:
            if self._kafka is None:
                self._kafka = topics.admin(self.settings)
            for m in self.migrations:
                group = self.settings.group(m.name)
                lags[m.name] = topics.admin_lag(self._kafka, self.settings.topic(m.collection),
                                                group)
                described = self._kafka.describe_groups([group]).get(group) or {}
                members[m.name] = len(described.get("members") or [])
        except Exception as exc:  # any failure means: not ready, with its reason
            refused = refusals.explain(exc)
            problems.append(f"Kafka: {refused}" if refused else f"Kafka: {first_line(exc)}")
        return lags, members


def _problems(state: MigrationState, held: list[str]) -> list[str]:
    """Why a migration keeps the process from being ready (``held``: the migrations held on
    purpose, which do not)."""
    if state.cancelled:
        held.append(f"migration {state.name} is cancelled")
    elif state.paused:
        held.append(f"migration {state.name} is paused")
    problems = []
    for component, record in state.stopped.items():
        error = logs.mask(str(record.get("error") or ""))
        document = "" if record.get("id") is None else repr(record["id"])
        problems.append(f"migration {state.name}: {component} stopped"
                        + (f" on document {document}" if document else "") + f": {error}")
    for component, record in state.stalled.items():
        problems.append(f"migration {state.name}: {component} stalled: "
                        f"{logs.mask(str(record.get('error') or ''))}")
    return problems


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
            ready, reason = self.server.watch.readiness()
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
    watch: Watch


@contextlib.contextmanager
def serving(settings: Settings, migrations: Sequence[Migration], components: Sequence[str], *,
            ranges_of: RangesOf | None = None, host: str = "") -> Iterator[int | None]:
    """While in the block: watch ``migrations`` (see :class:`Watch`) and serve /metrics,
    /healthz and /readyz on the settings' ``metrics_port`` (0: any free port).

    ``components`` are the pieces this process runs ("tailer", "backfill", "consumer"): their
    metrics are exported from the start, at zero. Yields the port, or None when no port is set
    (no server; the watch runs for the hooks, if any). A hook setting the user got wrong is a
    UsageError before anything starts.
    """
    port = settings.metrics_port
    hooks = Hooks(settings)
    if port is None and not hooks.configured:
        yield None
        return
    names = [m.name for m in migrations]
    server = None
    if port is not None:
        try:
            server = _Server((host, port), _Handler)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on port {port}: "
                             f"{exc.strerror or exc}") from None
    metrics.start_pieces(names, components)
    watch = Watch(settings, migrations, ranges_of=ranges_of,
                  hooks=hooks if hooks.configured else None)
    watch.start()
    thread = None
    if server is not None:
        server.watch = watch
        thread = threading.Thread(target=server.serve_forever, daemon=True, name="metrics")
        thread.start()
        log.info("serving /metrics, /healthz and /readyz on port %d", server.server_address[1])
    try:
        yield None if server is None else server.server_address[1]
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        metrics.stop_pieces(names, components)
        watch.stop()
        hooks.close()
