"""The tool's Prometheus metrics, and what the pieces call to record what they did.

Without a metrics server (``--metrics-port``, see :mod:`cdc_migrator.operations.observability`)
they only count in memory.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
EVENTS_PRODUCED = Counter(
    "events_produced", "Events the tailer and backfill wrote to the topic, acknowledged",
    ["migration"], registry=REGISTRY)
EVENTS_CONSUMED = Counter(
    "events_consumed", "Events the consumer applied and committed: one per document named on "
    "the topic (a backfill record names several)",
    ["migration"], registry=REGISTRY)
EVENTS_APPLIED = Counter(
    "events_applied", "Documents the consumer changed (updated or deleted)",
    ["migration"], registry=REGISTRY)
DOCUMENTS_UNCHANGED = Counter(
    "documents_unchanged", "Documents the consumer found already migrated (no-op)",
    ["migration"], registry=REGISTRY)
DOCUMENTS_FAILED = Counter(
    "documents_failed", "Documents whose transform raised (dead-lettered)",
    ["migration"], registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "consumer_lag", "Events on the topic the group has not applied and committed yet",
    ["migration", "partition"], registry=REGISTRY)
TAILER_DELAY = Gauge(
    "tailer_delay_seconds", "Age of the newest change event at the tailer's last checkpoint "
    "(0 when it has caught up with the change stream)", ["migration"], registry=REGISTRY)
PIPELINE_STOPPED = Gauge(
    "pipeline_stopped", "1 while a piece of the migration (consumer, tailer) is stopped on an "
    "error, until it runs again; the labels name the document (when one caused it) and the "
    "error", ["migration", "component", "document", "error"], registry=REGISTRY)
CODE_INFO = Gauge(
    "cdc_migrator_code_info", "1 for each migration this process serves: the fingerprint of "
    "the code it loaded (loaded) and of the migration's code in force (in_force; none before "
    "it was armed); first 12 hex digits", ["migration", "loaded", "in_force"],
    registry=REGISTRY)
CODE_HOLDING = Gauge(
    "cdc_migrator_code_holding", "1 while this process holds a migration: the code it loaded "
    "is not the code in force, so it applies nothing (`cdc-migrator accept` or running the "
    "code in force ends it)", ["migration"], registry=REGISTRY)
BATCH_DURATION = Histogram(
    "batch_duration_seconds", "Wall time of one batch: produced and acknowledged (tailer, "
    "backfill) or applied and committed (consumer)", ["migration", "component"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY)


def record_produced(migration: str, events: int, component: str, seconds: float) -> None:
    """A batch of ``events`` acknowledged by the broker, from the tailer or the backfill."""
    EVENTS_PRODUCED.labels(migration).inc(events)
    BATCH_DURATION.labels(migration, component).observe(seconds)


def record_consumed(migration: str, records: int, result: Any, seconds: float) -> None:
    """A consumed batch: ``result`` is its :class:`~cdc_migrator.apply.applier.BatchResult`."""
    EVENTS_CONSUMED.labels(migration).inc(records)
    EVENTS_APPLIED.labels(migration).inc(result.applied)
    DOCUMENTS_UNCHANGED.labels(migration).inc(result.unchanged)
    DOCUMENTS_FAILED.labels(migration).inc(result.failed)
    BATCH_DURATION.labels(migration, "consumer").observe(seconds)


def record_tailer_position(migration: str, last_event_time: Any) -> None:
    """The tailer's checkpoint: the cluster time of its newest event, None when caught up."""
    seconds = getattr(last_event_time, "time", None)
    TAILER_DELAY.labels(migration).set(max(0.0, time.time() - seconds) if seconds else 0.0)
