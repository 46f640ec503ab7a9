"""The benchmark's own arithmetic: fixed costs and the steady rate from a timeline, ratios
paired per round, percentiles, and the reading of py-spy profiles. Pure, no services."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run = _load("run")
profile_summary = _load("profile_summary")


def test_phases_separate_start_up_and_drain_from_the_steady_rate():
    # Nothing for 2 s (start-up), then 1,000 documents a second in steps of 100, then 1 s of
    # drain after the last one.
    points = [(0.0, 0)] + [(2.0 + i / 10, 100 * (i + 1)) for i in range(100)]
    out = run.phases(points, 10_000, seconds=2.0 + 9.9 + 1.0)
    assert out["first_applied_s"] == 2.0
    assert out["last_applied_s"] == pytest.approx(11.9)
    assert out["drain_s"] == pytest.approx(1.0)
    assert out["steady_docs_per_s"] == pytest.approx(1000.0)
    assert out["first_to_last_docs_per_s"] == pytest.approx(1000.0)


def test_the_steady_rate_ignores_a_slow_start_and_a_slow_end():
    # 10% in the first 5 s, 80% in the next 8 s, the last 10% in 5 s more.
    points = [(5.0, 1000), (13.0, 9000), (18.0, 10_000)]
    out = run.phases(points, 10_000, seconds=18.0)
    assert out["steady_docs_per_s"] == pytest.approx(1000.0)
    assert out["first_to_last_docs_per_s"] == pytest.approx(9000 / 13.0, rel=1e-3)


def test_no_steady_rate_from_one_step():
    out = run.phases([(0.0, 0), (3.0, 500)], 500, seconds=3.0)
    assert out["first_applied_s"] == 3.0
    assert out["steady_docs_per_s"] is None
    assert run.phases([(0.0, 0)], 500, seconds=1.0) == {}


def _run(round_no: int, rate: float, steady: float, us: float) -> dict:
    return {"round": round_no, "docs": 1000, "docs_per_s": rate, "steady_docs_per_s": steady,
            "us_per_doc": {"tool": us, "mongo": 1.0, "kafka": 0.0}}


def test_ratios_are_paired_per_round_against_the_careful_loop():
    runs = {"loop": [_run(1, 100, 100, 10), _run(2, 200, 200, 10)],
            "apply": [_run(1, 90, 95, 20), _run(2, 190, 190, 10)]}
    summary = run.summarize(runs, {})["apply"]
    # Per round, not the ratio of the medians: steady 0.95 and 0.95, end to end 0.9 and 0.95,
    # CPU 2.0 and 1.0.
    assert summary["x_loop_steady"]["median"] == pytest.approx(0.95)
    assert summary["x_loop_end_to_end"] == {"median": 0.925, "min": 0.9, "max": 0.95}
    assert summary["x_loop_cpu"]["median"] == pytest.approx(1.5)
    assert summary["target_met_steady"] is True
    assert summary["target_met_end_to_end"] is False
    assert summary["target_met_cpu"] is True


def test_the_servers_cpu_is_paired_per_round_and_judged_for_the_pipeline():
    def server(round_no: int, mongo: float) -> dict:
        made = _run(round_no, 100, 100, 10)
        made["us_per_doc"]["mongo"] = mongo
        return made

    runs = {"loop": [server(1, 40.0), server(2, 80.0)],
            "apply": [server(1, 80.0), server(2, 80.0)],
            "pipeline_procs": [server(1, 48.0), server(2, 120.0)]}
    summary = run.summarize(runs, {})
    # Round by round: apply 2.0 and 1.0; the processes 1.2 and 1.5, median 1.35 > 1.3.
    assert summary["apply"]["x_loop_server"]["median"] == pytest.approx(1.5)
    assert "target_server" not in summary["apply"]  # issue 27 judges the pipeline's
    assert summary["pipeline_procs"]["x_loop_server"] == {"median": 1.35, "min": 1.2,
                                                          "max": 1.5}
    assert summary["pipeline_procs"]["target_met_server"] is False


def test_percentile_is_the_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))
    assert run.percentile(values, 50) == 50.0
    assert run.percentile(values, 99) == 99.0
    assert run.percentile(values, 100) == 100.0
    assert run.percentile([7.0], 99) == 7.0


def test_uri_for_replaces_only_the_database():
    assert run.uri_for("mongodb://h:1/app?directConnection=true", "x") == \
        "mongodb://h:1/x?directConnection=true"
    assert run.uri_for("mongodb://u:p@h:1/app", "x") == "mongodb://u:p@h:1/x"


PROFILE = "\n".join([
    "thread (0x1): consume;run (cdc_migrator/consumer.py:10);_write (cdc_migrator/applier.py:5)"
    ";recv_into (pymongo/network_layer.py:3) 30",
    "thread (0x1): consume;run (cdc_migrator/consumer.py:10);decide (cdc_migrator/patch.py:7)"
    ";guard_filter (cdc_migrator/patch.py:9) 10",
    "thread (0x1): consume;run (cdc_migrator/consumer.py:12);decide (cdc_migrator/patch.py:8) 10",
    "thread (0x2): MainThread;main (x.py:1) 50",
])


def test_a_profile_is_read_per_thread_category_and_function(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(PROFILE)
    categories = [("guard", re.compile(r"^guard_filter ")), ("decide", re.compile(r"^decide ")),
                  ("write", re.compile(r"_write "))]
    text = profile_summary.summarize([path], docs=1000, rate=100.0, thread_filter="consume",
                                     top=5, categories=categories,
                                     waiting=re.compile("recv_into"))
    lines = text.splitlines()
    assert lines[0].startswith("p.txt: 50 samples at 100/s = 0.50 s")
    assert any("consume" in line and "500.00 us/doc" in line for line in lines)
    assert not any("MainThread" in line for line in lines)

    def row(label: str) -> str:
        return next(line for line in lines if line.rstrip().endswith(label)
                    or f" {label}  (" in line)
    assert "0.30 s" in row("write") and "(waiting: 100%)" in row("write")
    assert "0.10 s" in row("guard") and "0.10 s" in row("decide")
    # Inclusive: decide counts its own samples and guard_filter's, once per stack.
    assert any(re.search(r"\b20\b.*decide \(cdc_migrator/patch\.py\)$", line) for line in lines)


def _latency_run(target, achieved, busy, p99):
    return {"rate_target": target, "rate_achieved": achieved, "machine_busy_cores": busy,
            "p50_ms": p99 / 2, "p99_ms": p99,
            "cpu_us_per_write": {"self": 300.0, "mongo": 400.0, "kafka": 100.0, "tail": 90.0,
                                 "consume": 120.0}}


def test_the_latency_curve_has_a_line_a_rate_and_marks_the_saturated_ones():
    assert run.latency_curve([_latency_run(500.0, 500.0, 0.6, 40.0)]) == []  # one rate: no curve
    lines = run.latency_curve([_latency_run(500.0, 499.0, 0.6, 40.0),
                               _latency_run(2000.0, 1700.0, 1.2, 900.0),
                               _latency_run(1500.0, 1500.0, 1.99, 300.0)])
    rows = [line for line in lines[2:] if line]
    assert len(rows) == 3
    assert "saturated" not in rows[0] and "40.0" in rows[0] and "90.0" in rows[0]
    assert rows[1].endswith("saturated")  # the writers reached 85% of the rate
    cpus = os.cpu_count() or 1
    assert rows[2].endswith("saturated") == (1.99 >= 0.95 * cpus)  # every core busy
