"""Kafka plumbing against the real broker: the settings of the topics (retention, compaction,
record size), the group's lag, the producer's compression."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource

from cdc_migrator.base import topics
from cdc_migrator.base.settings import Settings

from ..harness import KAFKA, KAFKA_CA, KAFKA_SASL_SSL, SCRAM_PASSWORD, SCRAM_USER, run_cli

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

    ran = run_cli("run", NAME, "--timeout", "60s", "-q", settings=settings)

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

    refused = [run_cli(command, NAME, "--retry-deadline", "5s", settings=settings, timeout=60)
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

    ran = run_cli("run", NAME, "--timeout", "60s", "-q", settings=settings)

    assert ran.returncode == 0, ran.stderr
    warnings = [line for line in ran.stderr.splitlines() if "max.message.bytes=1048588" in line]
    assert len(warnings) == 1, ran.stderr
    assert f"topic {topic} takes records of at most max.message.bytes=1048588" in warnings[0]
    assert "key-only events or become dead letters" in warnings[0]
    assert db.users.count_documents({"role": "user"}) == 40


def test_the_topics_the_tool_creates_get_the_replication_asked_for(db, settings, kafka_admin):
    seed_users(db)

    ran = run_cli("run", NAME, "--timeout", "60s", "-q", "--topic-replication-factor", "1",
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

    result = run_cli("tail", NAME, "--retry-deadline", "30s", settings=settings, timeout=60)

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
    env = {"CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS": KAFKA_SASL_SSL,
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


def _consume_and_commit(topic: str, group: str, count: int) -> None:
    """A member of ``group`` that applies ``count`` records and commits them (then leaves)."""
    member = KafkaConsumer(topic, bootstrap_servers=KAFKA, group_id=group,
                           enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        taken = 0
        while taken < count:
            taken += sum(len(r) for r in member.poll(timeout_ms=1000).values())
        member.commit()
    finally:
        member.close()


class _GroupMovingOn:
    """A group that committed 5 of 5 records, and that, once, produces 10 more and commits
    them: what a real group does between the two reads of a lag (see the tests below)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.topic, self.group = settings.topic(name), settings.group(name)
        topics.ensure_topic(settings, self.topic, partitions=1)
        self.producer = topics.producer(settings)
        self._produce(5, b"before")
        self.raced = False

    def _produce(self, count: int, value: bytes) -> None:
        for i in range(count):
            self.producer.send(self.topic, key=b"%d" % i, value=value)
        self.producer.flush()
        _consume_and_commit(self.topic, self.group, count)

    def moves_on(self) -> None:
        if not self.raced:
            self.raced = True
            self._produce(10, b"during")


@pytest.fixture
def moving_group(settings):
    group = _GroupMovingOn(settings, "lag")  # the settings' prefix is the test's own
    yield group
    group.producer.close()


def test_lag_read_while_the_group_commits_can_only_over_count(moving_group, settings,
                                                                monkeypatch):
    """Lag is the end offset minus the committed one, each read at its own moment. When the
    group commits between the two reads, reading the end first gave a committed offset past
    it: a negative lag (-77 under load), which hid real lag elsewhere from status and cutover.
    Here the group produces and commits exactly between them, every time: a real group on the
    real broker, the moment chosen by a consumer class that runs it after its first read."""

    class CommittingBetweenReads(KafkaConsumer):
        def committed(self, *args, **kwargs):
            found = super().committed(*args, **kwargs)
            moving_group.moves_on()
            return found

        def end_offsets(self, *args, **kwargs):
            found = super().end_offsets(*args, **kwargs)
            moving_group.moves_on()
            return found

    monkeypatch.setattr(topics, "KafkaConsumer", CommittingBetweenReads)
    lag = topics.group_lag(settings, moving_group.topic, moving_group.group)

    assert moving_group.raced and lag.total == 10 and lag.partitions[0].committed == 5, \
        lag.as_dict()


def test_the_health_checks_lag_read_while_the_group_commits_can_only_over_count(moving_group,
                                                                                settings):
    """The health checks read the lag through an admin client they keep (``admin_lag``): the
    same race as :func:`topics.group_lag`'s, the same order. An admin client of the real
    broker makes the group produce and commit right after its first read."""

    class CommittingBetweenReads(KafkaAdminClient):
        def list_group_offsets(self, *args, **kwargs):
            found = super().list_group_offsets(*args, **kwargs)
            moving_group.moves_on()
            return found

        def list_partition_offsets(self, *args, **kwargs):
            found = super().list_partition_offsets(*args, **kwargs)
            moving_group.moves_on()
            return found

    client = CommittingBetweenReads(**topics.client_options(settings))
    try:
        lag = topics.admin_lag(client, moving_group.topic, moving_group.group)
    finally:
        client.close()

    assert moving_group.raced and lag.total == 10 and lag.partitions[0].committed == 5, \
        lag.as_dict()


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
