"""Real Kafka behaviour: the settings of the topics (retention, compaction, record size), records
deleted before they were consumed, and a consumer that stops making progress."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource

from cdc_migrator import api
from cdc_migrator.apply.consumer import TransformConsumer
from cdc_migrator.base import topics
from cdc_migrator.capture.tailer import arm
from cdc_migrator.operations import observability
from cdc_migrator.operations.status import render

from .harness import (
    KAFKA,
    KAFKA_CA,
    KAFKA_SASL_SSL,
    SCRAM_PASSWORD,
    SCRAM_USER,
    run_cli,
    wait_for,
)

NAME = "add_default_role"
KEYS = ["retention.ms", "retention.bytes", "cleanup.policy", "max.message.bytes"]


@pytest.fixture
def kafka_admin():
    client = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=15_000)
    yield client
    client.close()


def configs_of(client: KafkaAdminClient, topic: str) -> dict[str, str]:
    described = client.describe_configs([ConfigResource("TOPIC", topic, KEYS)],
                                        config_filter="all")
    return {k: v["value"] for k, v in described["topic"][topic].items()}


def seed_users(db, n: int = 40) -> None:
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(n)])


def test_the_topics_the_tool_creates_delete_nothing_and_take_the_largest_record(
        db, settings, kafka_admin):
    seed_users(db)

    ran = run_cli("run", NAME, "--timeout", "60", "-q", settings=settings)

    assert ran.returncode == 0, ran.stderr
    for topic in (settings.topic("users"), settings.dlq_topic("users")):
        assert configs_of(kafka_admin, topic) == {
            "retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete",
            "max.message.bytes": str(17 << 20)}, topic


def test_a_topic_created_by_someone_else_that_can_delete_events_is_refused_naming_each_setting(
        db, settings, kafka_admin):
    seed_users(db)
    topic = settings.topic("users")
    kafka_admin.create_topics({topic: {"num_partitions": 2, "replication_factor": -1, "configs": {
        "cleanup.policy": "compact", "retention.ms": "86400000", "retention.bytes": "1000000"}}})

    refused = [run_cli(command, NAME, "--retry-deadline", "5", settings=settings, timeout=60)
               for command in ("tail", "consume")]

    for result in refused:
        assert result.returncode == 1, result.stderr
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("cdc-migrator:")]
        assert f"topic {topic} can delete events before they are consumed" in line
        for setting in ("cleanup.policy=compact", "retention.ms=86400000 (records older than "
                        "1 days are deleted)", "retention.bytes=1000000"):
            assert setting in line
        assert (f"Fix: kafka-configs.sh --bootstrap-server {KAFKA} --alter --entity-type topics "
                f"--entity-name {topic} --add-config retention.ms=-1,retention.bytes=-1,"
                "cleanup.policy=delete") in line
        assert "Traceback" not in result.stderr


def test_a_topic_with_small_records_is_used_with_one_warning_naming_the_limit(db, settings,
                                                                             kafka_admin):
    seed_users(db)
    topic = settings.topic("users")
    kafka_admin.create_topics({topic: {"num_partitions": 2, "replication_factor": -1, "configs": {
        "retention.ms": "-1", "max.message.bytes": "1048588"}}})

    ran = run_cli("run", NAME, "--timeout", "60", "-q", settings=settings)

    assert ran.returncode == 0, ran.stderr
    warnings = [line for line in ran.stderr.splitlines() if "max.message.bytes=1048588" in line]
    assert len(warnings) == 1, ran.stderr
    assert f"topic {topic} takes records of at most max.message.bytes=1048588" in warnings[0]
    assert "key-only events or become dead letters" in warnings[0]
    assert db.users.count_documents({"role": "user"}) == 40


def test_the_topics_the_tool_creates_get_the_replication_asked_for(db, settings, kafka_admin):
    seed_users(db)

    ran = run_cli("run", NAME, "--timeout", "60", "-q", "--topic-replication-factor", "1",
                  "--topic-min-insync-replicas", "1", settings=settings)

    assert ran.returncode == 0, ran.stderr
    for topic in (settings.topic("users"), settings.dlq_topic("users")):
        (described,) = kafka_admin.describe_topics([topic])
        assert [len(p["replica_nodes"]) for p in described["partitions"]] == \
            [1] * len(described["partitions"])
        entry = kafka_admin.describe_configs([ConfigResource(
            "TOPIC", topic, ["min.insync.replicas"])])["topic"][topic]["min.insync.replicas"]
        assert (entry["value"], entry["config_source"]) == ("1", "DYNAMIC_TOPIC_CONFIG"), topic


@pytest.mark.parametrize(("flags", "code", "message"), [
    (["--topic-replication-factor", "3"], 1,
     "cdc-migrator: --topic-replication-factor 3 is more than the 1 broker(s) of the Kafka "
     "cluster: give at most 1"),
    (["--topic-min-insync-replicas", "2"], 1,
     "cdc-migrator: --topic-min-insync-replicas 2 is more than the 1 broker(s) of the Kafka "
     "cluster: no record could be acknowledged; give at most 1"),
    (["--topic-replication-factor", "1", "--topic-min-insync-replicas", "2"], 2,
     "cdc-migrator: --topic-min-insync-replicas 2 is more than --topic-replication-factor 1: "
     "no record could be acknowledged; give at most the replication factor"),
], ids=["factor-above-brokers", "insync-above-brokers", "insync-above-factor"])
def test_replication_the_cluster_cannot_give_is_one_line_and_creates_nothing(
        db, settings, kafka_admin, flags, code, message):
    seed_users(db)

    for command in ("tail", "run"):
        result = run_cli(command, NAME, *flags, settings=settings, timeout=60)

        assert result.returncode == code, result.stderr
        lines = [x for x in result.stderr.splitlines() if x.startswith("cdc-migrator:")]
        assert lines == [message], result.stderr
        assert "Traceback" not in result.stderr
        assert settings.topic("users") not in kafka_admin.list_topics()


def test_a_topic_whose_min_insync_replicas_exceeds_its_replicas_is_refused_not_waited_on(
        db, settings, kafka_admin):
    """The tool produces with acks=all: the broker would answer NOT_ENOUGH_REPLICAS, a
    retriable error, to every record, for ever."""
    seed_users(db)
    topic = settings.topic("users")
    kafka_admin.create_topics({topic: {"num_partitions": 2, "replication_factor": -1, "configs": {
        "retention.ms": "-1", "min.insync.replicas": "2"}}})

    result = run_cli("tail", NAME, "--retry-deadline", "30", settings=settings, timeout=60)

    assert result.returncode == 1, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("cdc-migrator:")]
    assert lines == [
        f"cdc-migrator: topic {topic} has min.insync.replicas=2 but 1 replica(s) per partition: "
        "no record could be acknowledged (the tool produces with acks=all). Fix: kafka-configs.sh "
        f"--bootstrap-server {KAFKA} --alter --entity-type topics --entity-name {topic} "
        "--add-config min.insync.replicas=1"], result.stderr


def test_the_printed_fix_of_a_tls_and_sasl_connection_names_its_command_config(
        db, settings, kafka_admin, tls_listeners):
    seed_users(db)
    topic = settings.topic("users")
    kafka_admin.create_topics({topic: {"num_partitions": 2, "replication_factor": -1, "configs": {
        "retention.ms": "86400000"}}})
    env = {"KAFKA_BOOTSTRAP_SERVERS": KAFKA_SASL_SSL,
           "CDC_MIGRATOR_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
           "CDC_MIGRATOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
           "CDC_MIGRATOR_KAFKA_SASL_USERNAME": SCRAM_USER,
           "CDC_MIGRATOR_KAFKA_SASL_PASSWORD": SCRAM_PASSWORD,
           "CDC_MIGRATOR_KAFKA_SSL_CAFILE": str(KAFKA_CA)}

    result = run_cli("tail", NAME, settings=settings, env=env, timeout=60)

    assert result.returncode == 1, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("cdc-migrator:")]
    assert line.endswith(
        f"Fix: kafka-configs.sh --bootstrap-server {KAFKA_SASL_SSL} --command-config "
        f"client.properties --alter --entity-type topics --entity-name {topic} --add-config "
        "retention.ms=-1,retention.bytes=-1,cleanup.policy=delete (client.properties: this "
        "connection for Kafka's tools: security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-256, "
        "sasl.jaas.config (the mechanism's login module with the credentials), "
        f"ssl.truststore.type=PEM, ssl.truststore.location={KAFKA_CA}; see "
        "docs/deploy.md)"), line
    assert SCRAM_PASSWORD not in result.stderr


def test_records_deleted_before_they_were_consumed_stop_the_consumer_with_the_fix(
        db, settings, kafka_admin):
    seed_users(db)
    first = api.run(settings, NAME, show_progress=False, timeout=60)
    assert first.drained and first.lag == 0
    migration = api.load(settings, NAME)
    committed = topics.group_lag(settings, settings.topic("users"), settings.group(migration.name))
    # A second backfill puts records behind the committed offsets; retention (here: the admin
    # API's delete-records) removes them before the consumer got to them.
    api.backfill(settings, NAME, reset=True, show_progress=False)
    after = topics.group_lag(settings, settings.topic("users"), settings.group(migration.name))
    kafka_admin.delete_records({TopicPartition(settings.topic("users"), p.partition): p.end
                                for p in after.partitions})

    consume = run_cli("consume", NAME, settings=settings, timeout=60)
    status = run_cli("status", NAME, "--json", settings=settings)

    assert consume.returncode == 1, consume.stderr
    (line,) = [x for x in consume.stderr.splitlines() if x.startswith("cdc-migrator:")]
    gone = [p for p in committed.partitions if after.partitions[p.partition].end > p.end]
    assert gone
    for p in committed.partitions:  # each partition that lost events, and only those
        named = (f"partition {p.partition} of {settings.topic('users')}: the group's next "
                 f"event (offset {p.committed}) was deleted before it was consumed")
        assert (named in line) == (p in gone), line
    assert f"`cdc-migrator reset {NAME}`" in line and "backfill" in line
    assert "Traceback" not in consume.stderr
    assert "was deleted before it was consumed" in status.stdout
    # Nothing was skipped: the group's offsets are where they were.
    assert topics.group_lag(settings, settings.topic("users"),
                            settings.group(migration.name)).partitions == [
        topics.PartitionLag(p.partition, after.partitions[p.partition].end, p.committed)
        for p in committed.partitions]


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _watched_member(db, settings, monkeypatch, caplog):
    """300 users to migrate, capture armed, and a group member (not started) whose watchdog
    calls it stalled after 3 s, looking every 0.5 s; its session lasts 10 s (a stuck
    client's membership ends with it: until then the stall shows)."""
    monkeypatch.setattr(TransformConsumer, "STALL_AFTER", 3.0)
    monkeypatch.setattr(TransformConsumer, "WATCH_INTERVAL", 0.5)
    monkeypatch.setattr(TransformConsumer, "SESSION_TIMEOUT_MS", 10_000)
    seed_users(db, 300)
    migration = api.load(settings, NAME)
    arm(settings, migration)
    member = TransformConsumer(settings, migration)
    caplog.set_level(logging.WARNING, logger="cdc_migrator.consumer")
    return migration, member, threading.Thread(target=member.run, daemon=True)


def test_a_consumer_whose_polls_return_nothing_while_it_has_lag_recovers_with_a_new_client(
        db, settings, monkeypatch, caplog):
    """Seen under load: a consumer restarted under its --instance-id got its three partitions
    and then its polls returned nothing for minutes, 12,000 events behind, without a word.
    Here its client's partitions are paused behind its back: its polls return, empty."""
    migration, member, thread = _watched_member(db, settings, monkeypatch, caplog)
    thread.start()
    try:
        client = wait_for(lambda: member._consumer is not None and member._assigned
                          and member._consumer, what="the member with its partitions")
        client.pause(*client.assignment())
        api.backfill(settings, NAME, show_progress=False)  # work its polls never bring
        wait_for(lambda: db.users.count_documents({"role": "user"}) == 300, timeout=90,
                 what="every document migrated by a new client")
    finally:
        member.stop()
        thread.join(timeout=60)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "cdc_migrator.consumer" and "seems stuck" in r.getMessage()]
    assert len(warnings) == 1 and "events behind" in warnings[0], warnings
    assert member._consumer is not client
    assert not thread.is_alive()
    assert topics.group_lag(settings, settings.topic("users"),
                            settings.group(migration.name)).total == 0


def test_a_consumer_stuck_in_poll_reports_not_ready_and_recovers_with_a_new_client(
        db, settings, monkeypatch, caplog):
    migration, member, thread = _watched_member(db, settings, monkeypatch, caplog)
    thaw = threading.Event()
    settings.metrics_port = 0
    with observability.serving(settings, [migration], ("consumer",)) as port:
        thread.start()
        try:
            wait_for(lambda: topics.group_members(settings, settings.group(migration.name)),
                     what="the member in its group")
            # Freeze the client: its network loop runs this and waits, as in the hang seen
            # under load (poll() waiting on the client's network loop for ever).
            member._consumer._net.call_soon_threadsafe(thaw.wait)
            api.backfill(settings, NAME, show_progress=False)  # work it cannot get to

            status = wait_for(lambda: "STALLED" in (text := render(api.status(settings, NAME)[0]))
                              and text, what="status reporting the stall")
            stalled = wait_for(lambda: (r := readyz(port))[0] == 503 and "stalled" in r[1]
                               and r[1], what="/readyz reporting the stall")
            wait_for(lambda: db.users.count_documents({"role": "user"}) == 300, timeout=90,
                     what="every document migrated by the new client")
            recovered = wait_for(lambda: (r := readyz(port))[0] == 200 and r[1],
                                 what="ready again")
        finally:
            member.stop()
            thaw.set()
            thread.join(timeout=60)

    assert f"migration {NAME}: consumer stalled: no progress for" in stalled
    assert "the Kafka client seems stuck; recreating it" in stalled
    assert "consumer STALLED: no progress for" in status
    assert recovered.strip() == "ready"
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "cdc_migrator.consumer" and "seems stuck" in r.getMessage()]
    assert len(warnings) == 1 and "events behind" in warnings[0], warnings
    assert not thread.is_alive()
    assert topics.group_lag(settings, settings.topic("users"),
                            settings.group(migration.name)).total == 0
