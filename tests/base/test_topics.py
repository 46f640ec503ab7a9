"""Kafka plumbing against the real broker: the settings of the topics (retention, compaction,
record size), the group's lag, the producer's compression."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource

from cdc_migrator.base import topics

from ..harness import KAFKA, run_cli

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


def test_kafka_group_lag_is_end_minus_committed_per_partition(settings):
    topic = f"{settings.topic_prefix}.lag"
    assert topics.ensure_topic(settings, topic, partitions=3) == 3
    producer = topics.producer(settings)
    for i in range(30):
        producer.send(topic, key=f"k{i}".encode(), value=b"v")
    producer.flush()

    group = f"{settings.group_prefix}-lag"
    before = topics.group_lag(settings, topic, group)
    assert before.total == 30 and len(before.partitions) == 3

    consumer = KafkaConsumer(topic, group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest",
                             bootstrap_servers=settings.kafka_bootstrap_servers)
    seen = []
    while len(seen) < 30:
        for records in consumer.poll(timeout_ms=1000).values():
            seen.extend(records)
    consumer.commit()
    # Same key, same partition: keyed records keep per-document order.
    by_key = {}
    for r in seen:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())

    assert topics.group_lag(settings, topic, group).total == 0
    for i in range(7):
        producer.send(topic, key=f"k{i}".encode(), value=b"more")
    producer.flush()
    lag = topics.group_lag(settings, topic, group)
    assert lag.total == 7
    ends = consumer.end_offsets([TopicPartition(topic, p.partition) for p in lag.partitions])
    for p in lag.partitions:
        assert p.lag == ends[TopicPartition(topic, p.partition)] - p.committed
    consumer.close()
    producer.close()


def test_producer_uses_lz4_and_the_c_checksum_unless_configured_otherwise(settings):
    from kafka.record import util

    assert util.crc32c_c is not None, "the crc32c package (a dependency) is what kafka-python uses"
    producer = topics.producer(settings)
    try:
        assert producer.config["compression_type"] == "lz4"
        assert producer.config["acks"] in ("all", -1)
    finally:
        producer.close()
    settings.kafka_options = {"compression_type": "gzip", "linger_ms": 20}
    producer = topics.producer(settings, linger_ms=1)
    try:
        assert producer.config["compression_type"] == "gzip"  # the settings win over defaults
        assert producer.config["linger_ms"] == 1  # the caller's overrides win over both
    finally:
        producer.close()
