"""Logging: plain or JSON lines naming their migration and component, and no secret in any of
them."""

from __future__ import annotations

import json
import subprocess
import sys

from ..harness import (
    ROOT,
    cli_env,
    run_cli,
)

NAME = "add_default_role"
SECRET = "s3cretpw"
KAFKA_SECRET = "k4fkapw"


def seed_users(db) -> None:
    """40 users without a role (to migrate) and 10 admins (already migrated)."""
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(40)]
                         + [{"_id": 100 + i, "role": "admin"} for i in range(10)])


def test_json_logs_are_one_object_per_line_naming_migration_and_component(db, settings):
    seed_users(db)

    result = run_cli("run", NAME, "--log-format", "json", "-v", "--timeout", "90s",
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
    with_secret = {"CDC_MIGRATOR_MONGODB_URI": secret_uri}
    clean_uri = {"CDC_MIGRATOR_CONFIG": str(config),
                 "CDC_MIGRATOR_MONGODB_URI": settings.mongodb_uri}

    # The local test server has no SCRAM (saslStart), so commands connecting with the
    # password fail at authentication here; a real MongoDB would accept them. The run with
    # the SASL password in the Kafka options is a full, successful pipeline run.
    results = {
        "config show": run_cli("config", "show", "--config", str(config), "--mongodb-uri",
                               secret_uri),
        "config show --json": run_cli("config", "show", "--json", env=with_secret),
        "status": run_cli("status", "-vv", settings=settings, env=with_secret),
        "run": run_cli("run", NAME, "-vv", "--timeout", "60s", settings=settings,
                       env=with_secret),
        "unreachable": run_cli("apply", NAME, "--dry-run", "--log-format", "json",
                               settings=settings, env={"CDC_MIGRATOR_MONGODB_URI": unreachable}),
        # A real run with the SASL password in the Kafka options (unused over PLAINTEXT).
        "run with kafka options": run_cli("run", NAME, "-vv", "--log-format", "json",
                                          "--timeout", "60s", settings=settings, env=clean_uri),
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
