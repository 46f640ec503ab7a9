"""``preflight``: each check passing on the local services, and failing where the deployment
would stop the migration; nothing written; the same lines at the start of run, backfill, tail
and cutover. The privileges against a server with access control are in
tests/operations/test_preflight_role.py."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import bson
import pytest
from kafka.admin import NewTopic

from cdc_migrator import api
from cdc_migrator.base import topics
from cdc_migrator.base.settings import Settings
from cdc_migrator.operations.preflight import (
    CHECKS,
    Check,
    missing_acls,
    runway_verdict,
    version_supported,
)

from ..harness import KAFKA_CA, KAFKA_SASL_SSL, SCRAM_USER, private_settings, run_cli

ITEMS = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="items")
    def add_total(doc, ctx):
        if "total" not in doc:
            return {"total": doc.get("qty", 0) * 2}
''')


def transforms(tmp_path: Path, settings: Settings, source: str = ITEMS,
               schema: dict | None = None) -> None:
    (tmp_path / "transforms").mkdir(exist_ok=True)
    (tmp_path / "transforms" / "items.py").write_text(source)
    if schema is not None:
        (tmp_path / "schemas").mkdir(exist_ok=True)
        (tmp_path / "schemas" / "items.contract.json").write_text(json.dumps(schema))
    settings.transforms = tmp_path / "transforms"


def lines(output: str) -> dict[str, str]:
    """Each check's line by its name."""
    found = {}
    for line in output.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("ok", "FAIL"):
            found[rest.strip().split(":")[0]] = line
    return found


@pytest.fixture
def items(db, settings, tmp_path):
    db.items.insert_many([{"_id": i, "qty": i} for i in range(50)])
    transforms(tmp_path, settings)
    return db.items


def everything(settings: Settings, mongo_client: Any) -> tuple[Any, ...]:
    """What a write would change: databases, collections, topics."""
    databases = {name: sorted(mongo_client[name].list_collection_names())
                 for name in mongo_client.list_database_names()}
    client = topics.admin(settings)
    try:
        return databases, sorted(client.list_topics())
    finally:
        client.close()


@pytest.mark.local_server("the local services' replies: 6.0.0, no access control, no authorizer")
def test_preflight_passes_every_check_on_the_local_services_and_writes_nothing(
        items, settings, mongo_client):
    before = everything(settings, mongo_client)

    ran = run_cli("preflight", "add_total", settings=settings)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    found = lines(ran.stdout)
    assert list(found) == list(CHECKS), ran.stdout
    assert "MongoDB 6.0.0, change streams open" in found["mongo-topology"]
    assert "access control off" in found["privileges"]
    assert f"topic {settings.topic('items')} may be created" in found["kafka"]
    assert "the broker has no authorizer" in found["kafka"]
    assert "backfill of 50 documents" in found["runway"]
    assert "add_total: preflight passed (7 checks)" in ran.stdout
    assert everything(settings, mongo_client) == before  # no database, collection or topic
    assert items.database[settings.state_collection].count_documents({}) == 0


def test_json_gives_each_check_with_what_it_checked_its_result_and_fix(items, settings):
    ran = run_cli("preflight", "add_total", "--json", settings=settings)

    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["ok"] is True and report["migration"] == "add_total"
    assert [c["name"] for c in report["checks"]] == list(CHECKS)
    assert set(report["checks"][0]) == {"name", "ok", "checked", "result", "fix"}


def test_a_standalone_server_is_refused_naming_the_replica_set_it_needs(private_mongo, tmp_path):
    settings = private_settings(private_mongo, tmp_path)
    private_mongo[settings.database_name].items.insert_one({"_id": 1, "price": 1, "qty": 1})
    private_mongo.admin.command({"setStandaloneMode": True})
    try:
        ran = run_cli("preflight", "price_total", "--skip-check", "runway", settings=settings)
        tailed = run_cli("tail", "price_total", settings=settings, timeout=60)
    finally:
        settings.close()

    assert ran.returncode == 1, ran.stdout + ran.stderr
    line = lines(ran.stdout)["mongo-topology"]
    assert line.startswith("FAIL mongo-topology: MongoDB version and deployment: MongoDB 6.0.0, "
                           "standalone: change streams refused (The $changeStream stage is only "
                           "supported on replica sets)"), line
    assert "fix: run mongod as a replica set" in line
    assert "price_total: preflight failed: mongo-topology" in ran.stdout
    # tail depends on it: refused at its start with the same line, before anything is armed
    assert tailed.returncode == 1, tailed.stdout + tailed.stderr
    assert f"tail refused by preflight: {line}" in tailed.stderr
    assert private_mongo[settings.database_name][settings.state_collection].count_documents(
        {}) == 0


def test_a_version_before_6_0_is_refused():
    # The local server reports 6.0 at least (pymongo needs its wire version): the rule alone.
    assert version_supported((6, 0, 0)) and version_supported((8, 2, 1))
    assert not version_supported((5, 0, 14)) and not version_supported((4, 4))


def test_through_mongos_the_topology_names_the_shard_key_and_an_unreadable_oplog_fails_runway(
        mongos_mongo, tmp_path):
    from ..harness import seed_sharded_collection

    settings = private_settings(mongos_mongo, tmp_path)
    db = mongos_mongo[settings.database_name]
    db.items.insert_many([{"_id": i, "price": i, "qty": 1, "region": "eu"} for i in range(5)])
    seed_sharded_collection(mongos_mongo, f"{db.name}.items", {"region": 1, "_id": 1}, ["m"])
    try:
        report = api.preflight(settings, "price_total")
    finally:
        settings.close()

    checks = {c.name: c for c in report.checks}
    assert checks["mongo-topology"].ok
    assert checks["mongo-topology"].result.endswith(
        f"sharded cluster (mongos); {db.name}.items sharded on {{'region': 1, '_id': 1}}: "
        "guarded writes pin it")
    assert not checks["runway"].ok  # local is not readable through mongos; each shard's is
    assert "the window cannot be read: shard shard00" in checks["runway"].result


def test_a_short_history_against_a_long_backfill_fails_the_runway_with_the_margin():
    assert runway_verdict(window=99.0, count=10_000, rate=200.0) is False  # 50 s x 2 > 99 s
    assert runway_verdict(window=100.0, count=10_000, rate=200.0) is True
    assert runway_verdict(window=0.0, count=0, rate=0.0) is True  # nothing to backfill


def test_a_backfill_shorter_than_the_oplogs_second_passes_a_window_read_as_0s():
    # A new deployment's history began this second: its window reads 0 s (whole-second
    # timestamps). A 30-document backfill of 3 ms was refused by preflight (seen in CI).
    assert runway_verdict(window=0.0, count=30, rate=9_838.0) is True
    assert runway_verdict(window=0.0, count=1_000, rate=1_000.0) is False  # 2 s needed


def test_a_pre_created_topic_with_retention_fails_naming_the_setting_and_the_fix(
        items, settings):
    client = topics.admin(settings)
    topic = settings.topic("items")
    try:
        client.create_topics([NewTopic(topic, 1, 1, topic_configs={"retention.ms": "86400000"})])
    finally:
        client.close()

    ran = run_cli("preflight", "add_total", settings=settings)

    assert ran.returncode == 1, ran.stdout
    line = lines(ran.stdout)["kafka"]
    assert line.startswith(f"FAIL kafka: broker, topic, record limit and ACLs: reached "
                           f"{settings.kafka_bootstrap_servers}; topic {topic} exists;")
    assert f"topic {topic} can delete events before they are consumed: retention.ms=86400000 " \
           "(records older than 1 days are deleted)" in line
    assert "fix: kafka-configs.sh" in line and "--add-config retention.ms=-1" in line
    assert items.database[settings.state_collection].count_documents({}) == 0


def test_a_document_larger_than_the_topic_takes_fails_the_record_limit(items, settings):
    big = {"_id": "big", "blob": "x" * 200_000}
    items.insert_one(big)
    client = topics.admin(settings)
    topic = settings.topic("items")
    try:
        client.create_topics([NewTopic(topic, 1, 1, topic_configs={
            "retention.ms": "-1", "retention.bytes": "-1", "max.message.bytes": "100000"})])
    finally:
        client.close()

    report = api.preflight(settings, "add_total")

    (kafka,) = [c for c in report.checks if c.name == "kafka"]
    assert not kafka.ok
    assert f"the largest sampled document ({len(bson.encode(big)):,} bytes" in kafka.result
    assert "is more than max.message.bytes=100,000: it would travel by key only" in kafka.result
    assert "--add-config max.message.bytes=" in kafka.fix


def test_an_unreachable_broker_fails_the_kafka_check_in_one_line(items, settings):
    settings.kafka_bootstrap_servers = "127.0.0.1:9"  # nothing listens there
    settings.retry_deadline = 1

    ran = run_cli("preflight", "add_total", "--skip-check", "runway", settings=settings)

    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert lines(ran.stdout)["kafka"].startswith("FAIL kafka: Kafka: ")
    assert "Traceback" not in ran.stderr


def test_wrong_kafka_credentials_fail_the_kafka_check(items, settings, tls_listeners):
    ran = run_cli("preflight", "add_total", settings=settings, timeout=90, env={
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA_SASL_SSL,
        "CDC_MIGRATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CDC_MIGRATOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CDC_MIGRATOR_KAFKA_SASL_USERNAME": SCRAM_USER,
        "CDC_MIGRATOR_KAFKA_SASL_PASSWORD": "not-the-password",
        "CDC_MIGRATOR_KAFKA_SSL_CAFILE": str(KAFKA_CA)})

    assert ran.returncode == 1, ran.stdout + ran.stderr
    line = lines(ran.stdout)["kafka"]
    assert line.startswith("FAIL kafka: Kafka: "), line
    assert "not-the-password" not in ran.stdout + ran.stderr


class _Binding:
    """An ACL binding as kafka-python's describe_acls gives it (the fields read)."""

    def __init__(self, kind: str, operation: str, permission: str, principal: str) -> None:
        from kafka.admin import ACLOperation, ACLPermissionType, ResourceType

        self.resource_pattern = type("Pattern", (), {"resource_type": ResourceType[kind]})()
        self.operation = ACLOperation[operation]
        self.permission_type = ACLPermissionType[permission]
        self.principal = principal


def test_acls_name_each_operation_no_allow_binding_grants_and_a_deny_wins():
    bindings = [_Binding("TOPIC", "WRITE", "ALLOW", "User:app"),
                _Binding("TOPIC", "READ", "ALLOW", "User:*"),
                _Binding("GROUP", "ALL", "ALLOW", "User:app"),
                _Binding("GROUP", "DESCRIBE", "DENY", "User:app"),
                _Binding("TOPIC", "WRITE", "ALLOW", "User:other")]

    assert missing_acls(bindings, "User:app", "t", "g") == ["--operation Describe --group g"]
    assert missing_acls(bindings[4:], "User:app", "t", "g") == [
        "--operation Write --topic t", "--operation Read --topic t",
        "--operation Read --group g", "--operation Describe --group g"]


def test_a_contract_schema_mongodb_refuses_fails_naming_its_keywords(db, settings, tmp_path):
    db.items.insert_one({"_id": 1})
    transforms(tmp_path, settings, ITEMS.replace(
        '"items")', '"items", contract_schema="items.contract.json")'),
        schema={"bsonType": "object", "properties": {
            "total": {"type": "integer", "format": "int32", "default": 0}}})

    ran = run_cli("preflight", "add_total", "--skip-check", "runway", settings=settings)

    assert ran.returncode == 1, ran.stdout + ran.stderr
    line = lines(ran.stdout)["schema"]
    assert line.startswith("FAIL schema: the contract schema against MongoDB's $jsonSchema "
                           "dialect: contract schema ")
    assert "format" in line and "default" in line and "'integer'" in line, line
    assert "add_total: preflight failed: schema" in ran.stdout


def test_a_transform_that_does_not_load_fails_the_transform_check(db, settings, tmp_path):
    db.items.insert_one({"_id": 1})
    transforms(tmp_path, settings, ITEMS + "\ndef (:\n")

    ran = run_cli("preflight", "add_total", settings=settings)

    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert lines(ran.stdout)["transform"].startswith(
        "FAIL transform: the transform's file: does not load: ")
    assert "items.py does not import: SyntaxError" in ran.stdout


DEPENDS = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="items", depends_on={"prices": "item_id"})
    def add_total(doc, ctx):
        price = ctx.db.prices.find_one({"item_id": doc["_id"]}) or {}
        return {"total": price.get("amount", 0) * doc["qty"]}
''')


def test_a_depends_on_field_no_sampled_document_has_fails_the_transform_check(
        db, settings, tmp_path):
    db.items.insert_one({"_id": 1, "qty": 2})
    db.prices.insert_many([{"_id": i, "itemId": 1, "amount": 3} for i in range(5)])  # itemId
    transforms(tmp_path, settings, DEPENDS)

    report = api.preflight(settings, "add_total", skip=("runway",))

    checks = {c.name: c for c in report.checks}
    assert not checks["transform"].ok
    assert checks["transform"].result == "loaded; no sampled document has prices.item_id"
    assert "off for prices: a change there is traced through the reference map instead" \
        in checks["pre-images"].result
    assert checks["pre-images"].ok


def test_pre_images_on_are_reported_and_a_missing_depends_on_collection_fails(
        db, settings, tmp_path):
    db.items.insert_one({"_id": 1, "qty": 2})
    transforms(tmp_path, settings, DEPENDS)
    assert not api.preflight(settings, "add_total", skip=("runway",)).ok
    (missing,) = [c for c in api.preflight(settings, "add_total").checks
                  if c.name == "pre-images"]
    assert not missing.ok and missing.result == "depends_on collections missing: prices"

    db.create_collection("prices", changeStreamPreAndPostImages={"enabled": True})
    db.prices.insert_one({"_id": 1, "item_id": 1, "amount": 3})
    report = api.preflight(settings, "add_total", skip=("runway",))

    assert report.ok, [c.line() for c in report.failures]
    (pre,) = [c for c in report.checks if c.name == "pre-images"]
    assert pre.result == "on for prices"


def test_a_skipped_check_is_logged_and_an_unknown_one_is_a_usage_error(items, settings):
    skipped = run_cli("preflight", "add_total", "--skip-check", "runway", "--skip-check",
                      "kafka", settings=settings)
    unknown = run_cli("preflight", "add_total", "--skip-check", "oplog", settings=settings)
    at_start = run_cli("backfill", "add_total", "--skip-check", "oplog", settings=settings)

    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "runway" not in lines(skipped.stdout) and "kafka" not in lines(skipped.stdout)
    assert "preflight: check runway skipped (--skip-check)" in skipped.stderr
    assert "(5 checks, skipped: runway, kafka)" in skipped.stdout
    assert unknown.returncode == 2 and at_start.returncode == 2
    assert "cdc-migrator: --skip-check 'oplog' is no check: one of mongo-topology, " \
           "privileges" in unknown.stderr
    assert "--skip-check 'oplog' is no check" in at_start.stderr


def test_checks_report_what_they_checked_in_one_line():
    check = Check("kafka", False, "broker", "unreachable", "start it")
    assert check.line() == "FAIL kafka: broker: unreachable; fix: start it"
    assert Check("kafka", True, "broker", "reached", "start it").line() == \
        "ok   kafka: broker: reached"
