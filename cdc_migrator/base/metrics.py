"""The tool's Prometheus metrics, and what the pieces call to record what they did.

Every metric is named ``cdc_migrator_*`` in base units (seconds, documents, records); a counter
counts what its name says; labels come from a bounded set only: ``migration``, ``component``
(``tailer``, ``backfill``, ``consumer``), ``partition``, ``reason`` (a code from a closed
list) and the phase of the ``cdc_migrator_phase`` state set. Free text (an error, a document's
``_id``) never becomes a label: it stays in ``status`` and the logs.

Two kinds: what this process did (the counters and histograms, recorded by the pieces as they
work), and what the state of a migration says now (the gauges, measured by the process's
watch, :mod:`cdc_migrator.operations.observability`, and set together with
:class:`Published`). The process and platform collectors (``process_*``, ``python_*``) come
with the registry. Without a metrics server (``--metrics-port``) they only count in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics import MetricWrapperBase, disable_created_metrics

# A counter's `_created` sample would be one more series per counter in Prometheus, of no use
# on the dashboard or in an alert.
disable_created_metrics()

PREFIX = "cdc_migrator_"
#: The phases of the ``cdc_migrator_phase`` state set: the stored ones, and ``ready`` measured
#: as ``status`` measures it (core.state.Phase's values).
PHASES = ("armed", "backfilling", "catching_up", "ready", "cut_over", "failed", "cancelled",
          "applying", "applied", "reverting", "reverted")
#: The codes of an automatic throttle hold (the ``reason`` of ``cdc_migrator_throttle_hold_*``).
HOLD_REASONS = ("replication_lag", "write_latency")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

BUILD = Info(f"{PREFIX}build", "The cdc-migrator release this process runs", registry=REGISTRY)
try:
    BUILD.info({"version": version("cdc-migrator")})
except PackageNotFoundError:  # run from a source tree that was never installed
    BUILD.info({"version": "unknown"})

# ------------------------------------------------------------------ what this process did

EVENTS_PRODUCED = Counter(
    f"{PREFIX}events_produced", "Events this process's tailer or backfill wrote to the topic, "
    "acknowledged by the broker: one per document (a backfill record names several)",
    ["migration", "component"], registry=REGISTRY)
EVENTS_CONSUMED = Counter(
    f"{PREFIX}events_consumed", "Events this process's consumer applied and committed: one per "
    "document named on the topic (a backfill record names several)",
    ["migration"], registry=REGISTRY)
DOCUMENTS_CHANGED = Counter(
    f"{PREFIX}documents_changed", "Documents this process's consumer changed (updated or "
    "deleted)", ["migration"], registry=REGISTRY)
DOCUMENTS_UNCHANGED = Counter(
    f"{PREFIX}documents_unchanged", "Documents this process's consumer found already migrated "
    "(the transform returned no patch)", ["migration"], registry=REGISTRY)
DOCUMENTS_FAILED = Counter(
    f"{PREFIX}documents_failed", "Documents whose transform raised in this process's consumer "
    "(dead-lettered)", ["migration"], registry=REGISTRY)
CODE_INFO = Info(
    f"{PREFIX}code", "The code of each migration this process serves: the fingerprint of the "
    "code it loaded (loaded) and of the migration's code in force (in_force; none before it "
    "was armed); first 12 hex digits", ["migration"], registry=REGISTRY)
CODE_HOLDING = Gauge(
    "cdc_migrator_code_holding", "1 while this process holds a migration: the code it loaded "
    "is not the code in force, so it applies nothing (`cdc-migrator accept` or running the "
    "code in force ends it)", ["migration"], registry=REGISTRY)
BATCH_DURATION = Histogram(
    f"{PREFIX}batch_duration_seconds", "Wall time of one batch: produced and acknowledged "
    "(tailer, backfill) or applied and committed (consumer)", ["migration", "component"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY)
CHANGE_LATENCY = Histogram(
    f"{PREFIX}change_applied_latency_seconds", "From a change in MongoDB (its cluster time, "
    "whole seconds) to its event applied and committed by this process's consumer",
    ["migration"], buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY)
TAILER_DELAY = Gauge(
    f"{PREFIX}tailer_delay_seconds", "Age of the newest change event at this process's tailer's "
    "last checkpoint (0 when it has caught up with the change stream)", ["migration"],
    registry=REGISTRY)
RUNNING = Gauge(
    f"{PREFIX}running", "1 for each piece this process runs for the migration (tailer, "
    "backfill, consumer): summed, the processes up", ["migration", "component"],
    registry=REGISTRY)

# ------------------------------------------------------------------ what the state says now

PHASE = Enum(
    f"{PREFIX}phase", "The migration's phase, as `status` shows it (ready: measured)",
    ["migration"], states=list(PHASES), registry=REGISTRY)
PAUSED = Gauge(f"{PREFIX}paused", "1 while the migration is paused (`cdc-migrator pause`)",
               ["migration"], registry=REGISTRY)
BACKFILL_SCANNED = Gauge(
    f"{PREFIX}backfill_scanned_documents", "Documents the backfill pass has scanned, every "
    "worker of every process together", ["migration"], registry=REGISTRY)
BACKFILL_DOCUMENTS = Gauge(
    f"{PREFIX}backfill_documents", "Documents the backfill pass scans in all (counted when it "
    "started)", ["migration"], registry=REGISTRY)
BACKFILL_ETA = Gauge(
    f"{PREFIX}backfill_eta_seconds", "How long the backfill still needs at its pace so far "
    "(while it runs)", ["migration"], registry=REGISTRY)
RANGES_DONE = Gauge(f"{PREFIX}backfill_ranges_done", "_id ranges of the backfill scanned "
                    "to their end", ["migration"], registry=REGISTRY)
RANGES_IN_PROGRESS = Gauge(f"{PREFIX}backfill_ranges_in_progress", "_id ranges of the "
                           "backfill held by a live lease now", ["migration"], registry=REGISTRY)
RANGES_LEFT = Gauge(f"{PREFIX}backfill_ranges_left", "_id ranges of the backfill not started, "
                    "or whose worker's lease ran out", ["migration"], registry=REGISTRY)
CONSUMER_LAG = Gauge(
    f"{PREFIX}consumer_lag_records", "Records on the topic the group has not applied and "
    "committed yet (a backfill record carries several documents)",
    ["migration", "partition"], registry=REGISTRY)
GROUP_MEMBERS = Gauge(
    f"{PREFIX}consumer_group_members", "Members of the migration's consumer group now",
    ["migration"], registry=REGISTRY)
DEAD_LETTERS = Gauge(
    f"{PREFIX}dead_letters_pending", "Dead letters not resolved yet (`dlq retry`)",
    ["migration"], registry=REGISTRY)
THROTTLE_RATE = Gauge(
    f"{PREFIX}throttle_rate_documents_per_second", "The pace `cdc-migrator throttle` set, for "
    "every worker together (absent: none)", ["migration"], registry=REGISTRY)
THROTTLE_HOLD = Gauge(
    f"{PREFIX}throttle_hold_seconds", "How long an automatic hold (a bound exceeded) has held "
    "every worker of the migration, without a break; 0 when none holds", ["migration", "reason"],
    registry=REGISTRY)
HISTORY_WINDOW = Gauge(
    f"{PREFIX}history_window_seconds", "How much change history the server keeps (the oplog "
    "window)", ["migration"], registry=REGISTRY)
HISTORY_RUNWAY = Gauge(
    f"{PREFIX}history_runway_seconds", "How much longer the tailer's resume point stays in the "
    "server's change history (negative: it is gone)", ["migration"], registry=REGISTRY)
TAILER_CHECKPOINT_AGE = Gauge(
    f"{PREFIX}tailer_checkpoint_age_seconds", "Since the tailer's last checkpoint (an idle "
    "tailer checkpoints every 10 s): grows once no tailer runs", ["migration"],
    registry=REGISTRY)
PIPELINE_STOPPED = Gauge(
    f"{PREFIX}pipeline_stopped", "1 while a piece of the migration (consumer, tailer) is stopped "
    "on an error, until it runs again; the reason is a code, the message is in `status`",
    ["migration", "component", "reason"], registry=REGISTRY)


def record_produced(migration: str, events: int, component: str, seconds: float) -> None:
    """A batch of ``events`` acknowledged by the broker, from the tailer or the backfill."""
    EVENTS_PRODUCED.labels(migration, component).inc(events)
    BATCH_DURATION.labels(migration, component).observe(seconds)


def record_consumed(migration: str, records: int, result: Any, seconds: float,
                    change_times: Sequence[float] = ()) -> None:
    """A consumed batch: ``result`` is its :class:`~cdc_migrator.apply.applier.BatchResult`,
    ``change_times`` the cluster times (epoch seconds) of the changes it applied."""
    EVENTS_CONSUMED.labels(migration).inc(records)
    DOCUMENTS_CHANGED.labels(migration).inc(result.applied)
    DOCUMENTS_UNCHANGED.labels(migration).inc(result.unchanged)
    DOCUMENTS_FAILED.labels(migration).inc(result.failed)
    BATCH_DURATION.labels(migration, "consumer").observe(seconds)
    now = time.time()
    latency = CHANGE_LATENCY.labels(migration)
    for at in change_times:
        latency.observe(max(0.0, now - at))


def record_tailer_position(migration: str, last_event_time: Any) -> None:
    """The tailer's checkpoint: the cluster time of its newest event, None when caught up."""
    seconds = getattr(last_event_time, "time", None)
    TAILER_DELAY.labels(migration).set(max(0.0, time.time() - seconds) if seconds else 0.0)


def start_pieces(migrations: Iterable[str], components: Iterable[str]) -> None:
    """This process runs ``components`` for ``migrations``: their series exist from now, at
    zero, so a rate over them is defined before the first batch."""
    components = list(components)
    for m in migrations:
        for component in components:
            RUNNING.labels(m, component).set(1)
            if component in ("tailer", "backfill"):
                EVENTS_PRODUCED.labels(m, component)
        if "tailer" in components:
            TAILER_DELAY.labels(m)
        if "consumer" in components:
            for counter in (EVENTS_CONSUMED, DOCUMENTS_CHANGED, DOCUMENTS_UNCHANGED,
                            DOCUMENTS_FAILED):
                counter.labels(m)
            CHANGE_LATENCY.labels(m)


def stop_pieces(migrations: Iterable[str], components: Iterable[str]) -> None:
    """The pieces ended: they no longer count among the processes up."""
    for m in migrations:
        for component in components:
            try:
                RUNNING.remove(m, component)
            except KeyError:
                pass


#: One measured sample: the metric, its label values, and its value (a phase, for the state
#: set).
Sample = tuple[MetricWrapperBase, tuple[str, ...], "float | str"]


class Published:
    """The gauges a watch sets from the state: each refresh sets every sample it measured and
    removes those it set before and did not measure now (a migration gone, a throttle off, a
    stop cleared), so no series outlives what it describes."""

    def __init__(self) -> None:
        self._set: set[tuple[MetricWrapperBase, tuple[str, ...]]] = set()

    def update(self, samples: Iterable[Sample]) -> None:
        now = set()
        for metric, labels, value in samples:
            child: Any = metric.labels(*labels)  # a gauge's child, or the state set's
            if isinstance(value, str):
                child.state(value)
            else:
                child.set(value)
            now.add((metric, labels))
        for metric, labels in self._set - now:
            try:
                metric.remove(*labels)
            except KeyError:
                pass
        self._set = now

    def clear(self) -> None:
        self.update(())
