"""/metrics, /healthz and /readyz of the always-on commands."""

from __future__ import annotations

import os
from pathlib import Path

from cdc_migrator import api
from cdc_migrator.capture.tailer import arm
from cdc_migrator.operations.observability import Health

from ..harness import (
    KAFKA,
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


def test_a_paused_migration_leaves_the_process_ready_and_readyz_and_status_name_it(db, settings):
    # Readiness means "able to work": a pause is on purpose and must not block a rollout.
    with Service(settings, "consume", NAME) as consumer:
        assert consumer.get("/healthz") == (200, "ok\n")
        wait_for(lambda: consumer.get("/readyz") == (200, "ready\n"), what="ready")

        assert run_cli("pause", NAME, settings=settings).returncode == 0
        paused = wait_for(lambda: (r := consumer.get("/readyz")) != (200, "ready\n") and r,
                          what="/readyz naming the pause")
        status = run_cli("status", NAME, settings=settings)

        assert run_cli("resume", NAME, settings=settings).returncode == 0
        wait_for(lambda: consumer.get("/readyz") == (200, "ready\n"), what="ready after resume")

    assert paused == (200, f"ready; migration {NAME} is paused\n")
    assert status.returncode == 0 and "[paused]" in status.stdout, status.stdout
    assert any(f"{NAME}: ready; migration {NAME} is paused" in line
               for line in consumer.lines), consumer.lines
    assert not any("not ready" in line for line in consumer.lines), consumer.lines


def _broker_connections() -> set[int]:
    """The local ports of this process's TCP connections to the Kafka broker, from /proc."""
    port = int(KAFKA.split(",")[0].rsplit(":", 1)[1])
    ours = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.islink(f"/proc/self/fd/{fd}")}
    found = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(remote.rsplit(":", 1)[1], 16) == port and f"socket:[{inode}]" in ours:
                found.add(int(local.rsplit(":", 1)[1], 16))
    return found


def test_health_checks_reuse_one_kafka_connection(db, settings):
    # A probe every few seconds must not cost a new connection (a TLS and SASL handshake on a
    # managed broker) per migration: the checks keep one client for the process's life.
    migrations = [api.load(settings, name) for name in (NAME, "convert_is_pro_to_plan")]
    for migration in migrations:
        arm(settings, migration)
    health = Health(settings, migrations, track_lag=True)
    try:
        seen = []
        for _ in range(4):
            assert health.check() == (True, "ready")
            seen.append(_broker_connections())
    finally:
        health.stop()

    assert seen[0], "the checks keep no connection to the broker"
    assert all(ports == seen[0] for ports in seen), seen
    assert not _broker_connections(), "stop() closes the checks' client"
