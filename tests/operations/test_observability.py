"""/metrics, /healthz and /readyz of the always-on commands."""

from __future__ import annotations

from cdc_migrator import api
from cdc_migrator.capture.tailer import arm

from ..harness import (
    Service,
    run_cli,
    wait_for,
)

NAME = "add_default_role"


def metric(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def seed_users(db) -> None:
    """40 users without a role (to migrate) and 10 admins (already migrated)."""
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(40)]
                         + [{"_id": 100 + i, "role": "admin"} for i in range(10)])


def test_metrics_count_the_events_the_consumer_applies(db, settings):
    seed_users(db)
    arm(settings, api.load(settings, NAME))

    with Service(settings, "consume", NAME) as consumer:
        assert metric(consumer.metrics(), "events_applied_total", migration=NAME) == 0
        api.backfill(settings, NAME, show_progress=False)
        done = wait_for(lambda: (m := consumer.metrics()) and metric(
            m, "events_consumed_total", migration=NAME) == 50 and m, what="50 events consumed")
        lag = wait_for(lambda: (m := consumer.metrics()) and [
            v for (n, labels), v in m.items()
            if n == "consumer_lag" and ("migration", NAME) in labels], what="a lag gauge")
        assert consumer.stop() == 0

    assert metric(done, "events_applied_total", migration=NAME) == 40
    assert metric(done, "documents_unchanged_total", migration=NAME) == 10
    assert metric(done, "documents_failed_total", migration=NAME) == 0
    assert metric(done, "batch_duration_seconds_count", migration=NAME,
                  component="consumer") >= 1
    assert len(lag) == settings.partitions
    assert db.users.count_documents({"role": "user"}) == 40


def test_readiness_follows_pause_and_resume_while_liveness_stays(db, settings):
    with Service(settings, "consume", NAME) as consumer:
        assert consumer.get("/healthz") == (200, "ok\n")
        wait_for(lambda: consumer.get("/readyz")[0] == 200, what="ready")

        assert run_cli("pause", NAME, settings=settings).returncode == 0
        status, reason = wait_for(lambda: (r := consumer.get("/readyz"))[0] == 503 and r,
                                  what="not ready while paused")
        assert f"migration {NAME} is paused" in reason
        assert consumer.get("/healthz")[0] == 200

        assert run_cli("resume", NAME, settings=settings).returncode == 0
        wait_for(lambda: consumer.get("/readyz")[0] == 200, what="ready after resume")

    assert any(f"WARNING {NAME}: not ready: migration {NAME} is paused" in line
               for line in consumer.lines), consumer.lines
