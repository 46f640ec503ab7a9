"""Running it in production: metrics and health, logs, secrets, configuration, `init`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdc_migrator import api
from cdc_migrator.capture.tailer import arm
from cdc_migrator.operations.observability import Health

from .harness import KAFKA, ROOT, Service, cli_env, run_cli, wait_for

NAME = "add_default_role"
SECRET = "s3cretpw"
KAFKA_SECRET = "k4fkapw"


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


def test_json_logs_are_one_object_per_line_naming_migration_and_component(db, settings):
    seed_users(db)

    result = run_cli("run", NAME, "--log-format", "json", "-v", "--timeout", "90",
                     settings=settings)

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert all({"ts", "level", "logger", "message", "migration", "component"} <= r.keys()
               for r in records)
    ours = [r for r in records if r["logger"].startswith("cdc_migrator")]
    assert {r["migration"] for r in ours} == {NAME}
    assert {"tailer", "backfill", "consumer"} <= {r["component"] for r in ours}
    assert any(r["component"] == "tailer" and "armed point" in r["message"] for r in ours)
    assert any(r["component"] == "backfill" and r["level"] == "INFO"
               and f"backfill {NAME}: 50/50" in r["message"] for r in ours), "progress"
    assert any(r["component"] == "consumer" and r["level"] == "DEBUG"
               and r["message"].startswith("batch of") for r in ours)


def test_a_mistake_is_a_json_line_too_with_json_logs(db, settings):
    seed_users(db)  # the collection exists: the mistake is only the missing `tail`
    result = run_cli("backfill", NAME, "--log-format", "json", settings=settings)

    assert result.returncode == 1
    (record,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert record["level"] == "ERROR" and "not armed" in record["message"]
    assert record["migration"] == NAME and record["component"] == "backfill"


def test_passwords_never_appear_in_any_output_or_log_line(db, settings, tmp_path):
    secret_uri = settings.mongodb_uri.replace("mongodb://", f"mongodb://user:{SECRET}@")
    unreachable = (f"mongodb://user:{SECRET}@127.0.0.1:1/x?serverSelectionTimeoutMS=300"
                   "&connectTimeoutMS=300")
    config = tmp_path / "cdc-migrator.toml"
    config.write_text(f'mongodb_uri = "{secret_uri}"\n[kafka]\nsecurity_protocol = "PLAINTEXT"\n'
                      f'sasl_plain_username = "user"\nsasl_plain_password = "{KAFKA_SECRET}"\n')
    seed_users(db)
    with_secret = {"MONGODB_URI": secret_uri}
    clean_uri = {"CDC_MIGRATOR_CONFIG": str(config), "MONGODB_URI": settings.mongodb_uri}

    # The local test server has no SCRAM (saslStart), so commands connecting with the
    # password fail at authentication here; a real MongoDB would accept them. The run with
    # the SASL password in the Kafka options is a full, successful pipeline run.
    results = {
        "config show": run_cli("config", "show", "--config", str(config), "--mongodb-uri",
                               secret_uri),
        "config show --json": run_cli("config", "show", "--json", env=with_secret),
        "status": run_cli("status", "-vv", settings=settings, env=with_secret),
        "run": run_cli("run", NAME, "-vv", "--timeout", "60", settings=settings,
                       env=with_secret),
        "unreachable": run_cli("apply", NAME, "--dry-run", "--log-format", "json",
                               settings=settings, env={"MONGODB_URI": unreachable}),
        # A real run with the SASL password in the Kafka options (unused over PLAINTEXT).
        "run with kafka options": run_cli("run", NAME, "-vv", "--log-format", "json",
                                          "--timeout", "60", settings=settings, env=clean_uri),
        "logged by hand": subprocess.run([sys.executable, "-c", LOG_SECRETS], text=True,
                                         capture_output=True, cwd=ROOT, env=cli_env()),
    }

    assert results["config show"].returncode == 0
    assert "mongodb://***@" in results["config show"].stdout
    assert 'sasl_plain_password = "***"' in results["config show"].stdout
    assert results["unreachable"].returncode == 1
    assert results["run with kafka options"].returncode == 0, \
        results["run with kafka options"].stderr
    assert "mongodb://***@db.example" in results["logged by hand"].stderr
    for what, result in results.items():
        for stream in (result.stdout, result.stderr):
            assert SECRET not in stream, f"{what} leaked the MongoDB password"
            assert KAFKA_SECRET not in stream, f"{what} leaked the SASL password"


LOG_SECRETS = f"""
import logging
from cdc_migrator.base import logs
logs.configure("json")
logs.add_secrets("{KAFKA_SECRET}")
log = logging.getLogger("cdc_migrator.test")
log.warning("connecting to %s", "mongodb://user:{SECRET}@db.example:27017/app")
log.warning("sasl password {KAFKA_SECRET}")
try:
    raise ValueError("bad uri mongodb://user:{SECRET}@db.example/app")
except ValueError:
    log.exception("failed")
"""


# Configuration: flag > environment > file > default, one level each.

def run_in(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``cdc-migrator ARGS`` in ``cwd`` with none of the tool's variables but ``env``."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("CDC_MIGRATOR_")
             and k not in ("MONGODB_URI", "KAFKA_BOOTSTRAP_SERVERS")}
    return subprocess.run([sys.executable, "-m", "cdc_migrator", *args], capture_output=True,
                          text=True, cwd=cwd, env={**clean, **(env or {})}, timeout=60)


def show_config(cwd: Path, *args: str, env: dict | None = None) -> dict[str, Any]:
    result = run_in(cwd, "config", "show", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_configuration_default_applies_without_flag_variable_or_file(tmp_path):
    shown = show_config(tmp_path)

    assert shown["config_file"] is None
    assert shown["topic_prefix"] == {"value": "cdc-migrator", "source": "default"}
    assert shown["partitions"] == {"value": 6, "source": "default"}
    assert shown["metrics_port"] == {"value": None, "source": "default"}


def test_configuration_file_overrides_defaults_and_reaches_the_commands(db, settings, tmp_path):
    (tmp_path / "cdc-migrator.toml").write_text(
        f'mongodb_uri = "{settings.mongodb_uri}"\ntopic_prefix = "from-file"\n'
        f'partitions = 2\nmetrics_port = 9123\ntransforms = "{ROOT / "transforms"}"\n')

    shown = show_config(tmp_path)
    paused = run_in(tmp_path, "pause", NAME)

    assert shown["config_file"] == "cdc-migrator.toml"
    assert shown["topic_prefix"] == {"value": "from-file", "source": "file"}
    assert shown["partitions"] == {"value": 2, "source": "file"}
    assert shown["metrics_port"] == {"value": 9123, "source": "file"}
    assert shown["group"]["source"] == "default"
    assert paused.returncode == 0, paused.stderr
    assert db.cdc_migrator_state.find_one({"_id": NAME})["paused"] is True


def test_configuration_environment_overrides_the_file(tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text('topic_prefix = "from-file"\nlog_format = "json"\n')

    shown = show_config(tmp_path, env={"CDC_MIGRATOR_CONFIG": str(config),
                                       "CDC_MIGRATOR_TOPIC_PREFIX": "from-env"})

    assert shown["config_file"] == str(config)
    assert shown["topic_prefix"] == {"value": "from-env", "source": "env"}
    assert shown["log_format"] == {"value": "json", "source": "file"}


def test_configuration_flag_overrides_environment_and_file(tmp_path):
    (tmp_path / "cdc-migrator.toml").write_text('topic_prefix = "from-file"\n')

    shown = show_config(tmp_path, "--topic-prefix", "from-flag",
                        env={"CDC_MIGRATOR_TOPIC_PREFIX": "from-env"})

    assert shown["topic_prefix"] == {"value": "from-flag", "source": "flag"}


def test_an_unknown_key_in_the_configuration_file_is_exit_2_naming_it(tmp_path):
    (tmp_path / "cdc-migrator.toml").write_text('topic_prefix = "x"\ntopic_prefx = "y"\n')

    result = run_in(tmp_path, "status")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'topic_prefx'" in lines[0], result.stderr


# init

def test_init_writes_a_migration_that_apply_dry_run_accepts(db, settings, tmp_path):
    transforms = tmp_path / "transforms"
    test_file = tmp_path / "tests" / "test_add_status.py"
    db.widgets.insert_many([{"_id": i} for i in range(3)])
    settings.transforms = transforms

    created = run_cli("init", "add_status", "--collection", "widgets", "--with-test",
                      str(test_file), settings=settings)
    dry_run = run_cli("apply", "add_status", "--dry-run", settings=settings)
    stub = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(test_file)], capture_output=True, text=True, cwd=tmp_path)

    assert created.returncode == 0, created.stderr
    source = (transforms / "add_status.py").read_text()
    assert '@migration(\n    collection="widgets"' in source
    assert 'contract_schema="add_status.contract.json"' in source
    contract = json.loads((tmp_path / "schemas" / "add_status.contract.json").read_text())
    assert contract["bsonType"] == "object"
    assert dry_run.returncode == 0, dry_run.stderr
    assert dry_run.stdout.splitlines() == [f"{i}: no change" for i in range(3)]
    assert stub.returncode == 0, stub.stdout + stub.stderr
    assert run_cli("verify", "add_status", settings=settings).returncode == 0


@pytest.mark.parametrize("name", ["add_status", "9lives", "class", "add-status"])
def test_init_refuses_an_existing_file_or_a_name_that_is_no_identifier(settings, tmp_path,
                                                                        name):
    settings.transforms = tmp_path / "transforms"
    settings.transforms.mkdir()
    (settings.transforms / "add_status.py").write_text("# someone's migration\n")

    result = run_cli("init", name, "--collection", "widgets", settings=settings)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (settings.transforms / "add_status.py").read_text() == "# someone's migration\n"
    assert sorted(p.name for p in settings.transforms.iterdir()) == ["add_status.py"]
