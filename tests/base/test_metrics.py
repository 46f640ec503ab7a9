"""The metrics by Prometheus's conventions: names, units, bounded labels, and what each of the
gauges of the state says (pure logic; the served page is tested in
tests/operations/test_observability.py)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from cdc_migrator.apply.applier import BatchResult
from cdc_migrator.base import metrics
from cdc_migrator.core.state import MigrationState, Phase, ThrottleState, stop_record
from cdc_migrator.errors import EventsLost, PatchError, reason_of
from cdc_migrator.operations import gauges

#: The labels a metric of the tool may carry: the bounded set, the state set's own label,
#: a histogram's bucket, and the values of the info metrics (one series per migration or
#: process, replaced when they change): the build's version, the code's fingerprints.
LABELS = {"migration", "component", "partition", "reason", "cdc_migrator_phase", "le",
          "version", "loaded", "in_force"}
#: How a name of the tool's says its unit: base units, or a count of things.
UNITS = ("_seconds", "_documents", "_records", "_documents_per_second", "_members",
         "_pending", "_done", "_in_progress", "_left")
#: Series that are a state, an info or a flag: no unit.
UNITLESS = {"cdc_migrator_phase", "cdc_migrator_paused", "cdc_migrator_running",
            "cdc_migrator_pipeline_stopped", "cdc_migrator_build", "cdc_migrator_code",
            "cdc_migrator_code_holding"}


def families() -> list:
    return [f for f in metrics.REGISTRY.collect()]


def test_every_metric_of_the_tool_is_prefixed_in_base_units_with_bounded_labels():
    ours = [f for f in families() if not f.name.startswith(("process_", "python_"))]

    assert ours, "no metric of the tool registered"
    for family in ours:
        assert family.name.startswith("cdc_migrator_"), family.name
        assert family.name in UNITLESS or family.type == "counter" \
            or family.name.endswith(UNITS), f"{family.name}: no unit"
        assert not any(u in family.name for u in ("millis", "minutes", "_ms", "bytes")), \
            family.name
        for sample in family.samples:
            assert set(sample.labels) <= LABELS, (family.name, sample.labels)


def test_counters_count_what_their_names_say():
    counters = {f.name for f in families() if f.type == "counter"
                and f.name.startswith("cdc_migrator_")}

    # events are what the topic carries (one per document named); documents what the
    # consumer did to them: `events_applied` counted documents, and is gone.
    assert counters == {"cdc_migrator_events_produced", "cdc_migrator_events_consumed",
                        "cdc_migrator_documents_changed", "cdc_migrator_documents_unchanged",
                        "cdc_migrator_documents_failed"}
    metrics.record_consumed("count_me", 7, BatchResult(updated=3, deleted=1, unchanged=2), 0.1)
    assert _value("cdc_migrator_documents_changed_total", migration="count_me") == 4
    assert _value("cdc_migrator_documents_unchanged_total", migration="count_me") == 2
    assert _value("cdc_migrator_events_consumed_total", migration="count_me") == 7


def test_the_process_and_platform_collectors_are_served():
    names = {f.name for f in families()}

    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info",
            "python_gc_collections"} <= names


def test_the_phase_is_a_state_set_of_every_phase_of_the_state():
    metrics.PHASE.labels("phased").state("ready")
    text = openmetrics(metrics.REGISTRY).decode()

    assert metrics.PHASES == tuple(p.value for p in Phase)
    assert "# TYPE cdc_migrator_phase stateset" in text
    assert 'cdc_migrator_phase{cdc_migrator_phase="ready",migration="phased"} 1.0' in text
    assert 'cdc_migrator_phase{cdc_migrator_phase="armed",migration="phased"} 0.0' in text
    assert "_created" not in text  # no second series per counter


def test_the_change_to_applied_latency_counts_from_the_changes_cluster_time():
    now = time.time()
    metrics.record_consumed("latent", 2, BatchResult(), 0.1, change_times=[now - 3, now - 40])

    assert _value("cdc_migrator_change_applied_latency_seconds_count", migration="latent") == 2
    assert _value("cdc_migrator_change_applied_latency_seconds_bucket", migration="latent",
                  le="5.0") == 1
    assert _value("cdc_migrator_change_applied_latency_seconds_bucket", migration="latent",
                  le="60.0") == 2


def test_published_gauges_lose_the_series_no_longer_measured():
    published = metrics.Published()
    published.update([(metrics.DEAD_LETTERS, ("a",), 3.0), (metrics.DEAD_LETTERS, ("b",), 1.0),
                      (metrics.PHASE, ("a",), "backfilling")])
    published.update([(metrics.DEAD_LETTERS, ("a",), 0.0)])

    assert _value("cdc_migrator_dead_letters_pending", migration="a") == 0
    assert _value("cdc_migrator_dead_letters_pending", migration="b") is None
    assert _value("cdc_migrator_phase", migration="a", cdc_migrator_phase="backfilling") is None
    published.clear()


def test_a_stopped_piece_is_labelled_by_a_reason_code_never_by_its_message():
    error = PatchError("migration 'x' returned str ('free'); return a dict patch (document 137)")
    state = MigrationState(name="stops", phase=Phase.FAILED, stopped={
        "consumer": stop_record("consumer", str(error), 137, reason_of(error)),
        "tailer": {"component": "tailer", "error": "written by an older version", "id": None}})

    found = {(m._name, labels): v for m, labels, v in gauges.samples(_status(state), state)}

    assert found[("cdc_migrator_pipeline_stopped", ("stops", "consumer", "invalid_patch"))] == 1
    assert found[("cdc_migrator_pipeline_stopped", ("stops", "tailer", "unexpected"))] == 1
    assert reason_of(EventsLost("gone")) == "events_lost"
    assert reason_of(KeyError("x")) == "unexpected"


def test_a_hold_is_measured_from_when_it_began_and_every_reason_has_a_series():
    since = time.time() - 125
    state = MigrationState(name="held", phase=Phase.BACKFILLING, throttle=ThrottleState(
        rate=500.0, auto={"bound": "replication lag", "value": 12.0, "limit": 5, "unit": "s",
                          "by": "host:1:0", "at": time.time(), "until": time.time() + 2,
                          "since": since}))

    found = {(m._name, labels): v for m, labels, v in gauges.samples(_status(state), state)}

    assert found[("cdc_migrator_throttle_hold_seconds", ("held", "replication_lag"))] \
        == pytest.approx(125, abs=2)
    assert found[("cdc_migrator_throttle_hold_seconds", ("held", "write_latency"))] == 0
    assert found[("cdc_migrator_throttle_rate_documents_per_second", ("held",))] == 500


def test_the_tailers_checkpoint_and_runway_are_gauged_only_while_a_tailer_is_needed():
    def gauged(phase: Phase) -> set[str]:
        state = MigrationState(name="flight", phase=phase)
        status = {**_status(state), "tail": {"seconds_since_heartbeat": 12.5},
                  "history": {"window_seconds": 3600.0, "runway_seconds": 3500.0}}
        return {m._name for m, _, _ in gauges.samples(status, state)}

    needed = gauged(Phase.CATCHING_UP)
    after = gauged(Phase.CUT_OVER)

    assert {"cdc_migrator_tailer_checkpoint_age_seconds", "cdc_migrator_history_runway_seconds",
            "cdc_migrator_history_window_seconds", "cdc_migrator_throttle_hold_seconds"} <= needed
    assert not {"cdc_migrator_tailer_checkpoint_age_seconds",
                "cdc_migrator_history_runway_seconds"} & after


def _status(state: MigrationState) -> dict:
    from cdc_migrator.operations.sharing import throttle_status

    return {"phase": state.phase.label if state.phase else None,
            "throttle": throttle_status(state), "completed_at": None,
            "backfill": {"scanned": 10, "total": 40, "done": False, "eta_seconds": 30.0,
                         "ranges": {"total": 4, "done": 1, "in_progress": [{"range": 1}],
                                    "left": 2}},
            "updated_at": dt.datetime.now(dt.UTC)}


def _value(name: str, **labels: str) -> float | None:
    text = metrics_text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def metrics_text() -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.REGISTRY).decode()
