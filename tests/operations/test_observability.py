"""/metrics, /healthz and /readyz of the always-on commands."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from cdc_migrator import api
from cdc_migrator.capture.tailer import arm
from cdc_migrator.operations.observability import Watch

from ..harness import (
    KAFKA,
    Service,
    run_cli,
    wait_for,
    write_transforms,
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
        assert metric(consumer.metrics(), "cdc_migrator_documents_changed_total",
                      migration=NAME) == 0
        api.backfill(settings, NAME, show_progress=False)
        done = wait_for(lambda: (m := consumer.metrics()) and metric(
            m, "cdc_migrator_events_consumed_total", migration=NAME) == 50 and m,
            what="50 events consumed")
        lag = wait_for(lambda: (m := consumer.metrics()) and [
            v for (n, labels), v in m.items()
            if n == "cdc_migrator_consumer_lag_records" and ("migration", NAME) in labels],
            what="a lag gauge")
        assert consumer.stop() == 0

    assert metric(done, "cdc_migrator_documents_changed_total", migration=NAME) == 40
    assert metric(done, "cdc_migrator_documents_unchanged_total", migration=NAME) == 10
    assert metric(done, "cdc_migrator_documents_failed_total", migration=NAME) == 0
    assert metric(done, "cdc_migrator_batch_duration_seconds_count", migration=NAME,
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
    watch = Watch(settings, migrations)
    try:
        seen = []
        for _ in range(4):
            assert watch.check() == (True, "ready")
            seen.append(_broker_connections())
    finally:
        watch.stop()

    assert seen[0], "the checks keep no connection to the broker"
    assert all(ports == seen[0] for ports in seen), seen
    assert not _broker_connections(), "stop() closes the checks' client"


# ------------------------------------------------------------------------ the state's gauges

PICKY = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="users")
    def picky_role(doc, ctx):
        if doc["_id"] % 10 == 7:
            raise ValueError("no role for a seven")
        if doc.get("role") is None:
            return {"role": "user"}
''')


def labelled(samples: dict, name: str, **labels: str) -> dict[frozenset, float]:
    """The samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {found: v for (n, found), v in samples.items() if n == name and wanted <= found}


def test_backfill_serves_its_progress_its_eta_and_the_throttle_on_metrics(db, settings):
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(1500)])
    arm(settings, api.load(settings, NAME))
    api.throttle(settings, NAME, rate=250)  # about 6 s: the watch measures it on the way

    with Service(settings, "backfill", NAME, "--batch-size", "50") as backfill:
        during = wait_for(lambda: (m := backfill.metrics()) and metric(
            m, "cdc_migrator_backfill_eta_seconds", migration=NAME) and m,
            what="the backfill's ETA on /metrics")
        code = backfill.wait(timeout=120)

    assert code == 0, backfill.log
    assert metric(during, "cdc_migrator_backfill_documents", migration=NAME) == 1500
    assert 0 < metric(during, "cdc_migrator_backfill_scanned_documents", migration=NAME) < 1500
    assert metric(during, "cdc_migrator_backfill_eta_seconds", migration=NAME) > 0
    assert metric(during, "cdc_migrator_events_produced_total", migration=NAME,
                  component="backfill") > 0
    assert metric(during, "cdc_migrator_running", migration=NAME, component="backfill") == 1
    assert metric(during, "cdc_migrator_backfill_ranges_in_progress", migration=NAME) == 1
    assert metric(during, "cdc_migrator_throttle_rate_documents_per_second",
                  migration=NAME) == 250
    assert metric(during, "cdc_migrator_phase", migration=NAME,
                  cdc_migrator_phase="backfilling") == 1
    assert metric(during, "process_resident_memory_bytes") > 0


def test_a_consumer_gauges_dead_letters_and_a_tailers_checkpoint_growing_stale(db, settings,
                                                                             tmp_path):
    write_transforms(tmp_path, settings, {"users.py": PICKY})
    db.users.insert_many([{"_id": i} for i in range(100)])
    arm(settings, api.load(settings, "picky_role"))
    api.backfill(settings, "picky_role", show_progress=False)

    with Service(settings, "tail", "picky_role") as tail, \
            Service(settings, "consume", "picky_role") as consumer:
        seen = wait_for(lambda: (m := consumer.metrics()) and metric(
            m, "cdc_migrator_dead_letters_pending", migration="picky_role") == 10 and metric(
            m, "cdc_migrator_tailer_checkpoint_age_seconds", migration="picky_role") is not None
            and m, what="the dead letters and the tailer's checkpoint on /metrics")
        assert tail.stop() == 0
        stale = wait_for(lambda: (m := consumer.metrics()) and (metric(
            m, "cdc_migrator_tailer_checkpoint_age_seconds", migration="picky_role") or 0) > 5
            and m, what="the checkpoint's age growing once the tailer stopped")

    assert metric(seen, "cdc_migrator_tailer_checkpoint_age_seconds",
                  migration="picky_role") < 30
    assert metric(seen, "cdc_migrator_documents_failed_total", migration="picky_role") == 10
    assert metric(seen, "cdc_migrator_consumer_group_members", migration="picky_role") == 1
    assert len(labelled(seen, "cdc_migrator_consumer_lag_records",
                        migration="picky_role")) == settings.partitions
    assert metric(seen, "cdc_migrator_history_runway_seconds", migration="picky_role") > 0
    assert metric(seen, "cdc_migrator_history_window_seconds", migration="picky_role") > 0
    assert metric(seen, "cdc_migrator_phase", migration="picky_role",
                  cdc_migrator_phase="catching_up") == 1 or metric(
        seen, "cdc_migrator_phase", migration="picky_role", cdc_migrator_phase="ready") == 1
    assert metric(stale, "cdc_migrator_running", migration="picky_role",
                  component="consumer") == 1
    # What the tailer ran is not the consumer's: no tailer series in its page.
    assert not labelled(stale, "cdc_migrator_running", component="tailer")
