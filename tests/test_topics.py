"""Real Kafka behaviour: the settings of the topics (retention, compaction, record size), records
deleted before they were consumed, and a consumer that stops making progress."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource

from cdc_migrator import api
from cdc_migrator.apply.consumer import TransformConsumer
from cdc_migrator.base import topics
from cdc_migrator.capture.tailer import arm
from cdc_migrator.operations import observability
from cdc_migrator.operations.status import render

from .harness import KAFKA, run_cli, wait_for

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


def test_lag_read_while_the_group_commits_can_only_over_count(settings, monkeypatch):
    """Lag is the end offset minus the committed one, each read at its own moment. When the
    group commits between the two reads, reading the end first gave a committed offset past
    it: a negative lag (-77 under load), which hid real lag elsewhere from status and cutover.
    Here the group produces and commits exactly between them, every time: a real group on the
    real broker, the moment chosen by a consumer class that runs it after its first read."""
    topic, group = settings.topic("lag"), settings.group("lag")
    topics.ensure_topic(settings, topic, partitions=1)
    producer = topics.producer(settings)
    for i in range(5):
        producer.send(topic, key=b"%d" % i, value=b"before")
    producer.flush()
    _consume_and_commit(topic, group, 5)
    raced: list[bool] = []

    class CommittingBetweenReads(KafkaConsumer):
        def _then_the_group_moves_on(self) -> None:
            if not raced:
                raced.append(True)
                for i in range(10):
                    producer.send(topic, key=b"%d" % i, value=b"during")
                producer.flush()
                _consume_and_commit(topic, group, 10)

        def committed(self, *args, **kwargs):
            found = super().committed(*args, **kwargs)
            self._then_the_group_moves_on()
            return found

        def end_offsets(self, *args, **kwargs):
            found = super().end_offsets(*args, **kwargs)
            self._then_the_group_moves_on()
            return found

    monkeypatch.setattr(topics, "KafkaConsumer", CommittingBetweenReads)
    lag = topics.group_lag(settings, topic, group)
    producer.close()

    assert raced and lag.total == 10 and lag.partitions[0].committed == 5, lag.as_dict()
