"""The transform consumer: one member of a migration's group (its client, its watchdog, pause and
rebalances) and the batches it applies."""

from __future__ import annotations

import logging
import random
import sys
import textwrap
import threading
import urllib.error
import urllib.request

import pytest
from kafka import KafkaAdminClient, TopicPartition

from cdc_migrator import api
from cdc_migrator.apply.consumer import TransformConsumer
from cdc_migrator.base import topics
from cdc_migrator.capture.tailer import arm
from cdc_migrator.migration import get_migration
from cdc_migrator.operations import observability
from cdc_migrator.operations.status import render
from cdc_migrator.pipeline import run_pipeline

from ..harness import (
    ITEMS_MIGRATION,
    KAFKA,
    assert_invariant,
    run_cli,
    seed_items,
    wait_drained,
    wait_for,
)

TRANSFORMS = {"items.py": ITEMS_MIGRATION}


SLOW_ONCE_MIGRATION = textwrap.dedent('''
    import threading
    from cdc_migrator import migration

    SLOW = threading.Event()  # set by the test: the next transform call holds its batch
    RELEASE = threading.Event()  # set by the test once the group is rebalancing

    @migration(collection="slow")
    def mark(doc, ctx):
        if SLOW.is_set():
            SLOW.clear()
            RELEASE.wait(60)  # a second member joins meanwhile: the group rebalances
        if "done" not in doc:
            return {"done": True}
''')


def test_a_member_joining_during_a_slow_batch_rebalances_and_the_group_drains(
        db, settings, tmp_path):
    from cdc_migrator.apply.consumer import TransformConsumer
    from cdc_migrator.capture.backfill import backfill
    from cdc_migrator.capture.tailer import arm

    (tmp_path / "slow.py").write_text(SLOW_ONCE_MIGRATION)
    settings.transforms = tmp_path
    migration = get_migration(tmp_path, "mark")
    db.slow.insert_many([{"_id": i} for i in range(3000)])
    arm(settings, migration)
    backfill(settings, migration, show_progress=False)
    transform = sys.modules[migration.transform.__module__]
    transform.SLOW.set()
    first, second = TransformConsumer(settings, migration), TransformConsumer(settings, migration)
    threads = [threading.Thread(target=first.run, daemon=True)]
    threads[0].start()
    wait_for(lambda: not transform.SLOW.is_set(), what="the first consumer in its batch")
    threads.append(threading.Thread(target=second.run, daemon=True))
    threads[1].start()
    group = settings.group(migration.name)

    def rebalancing() -> bool:
        client = topics.admin(settings)
        try:
            state = (client.describe_groups([group]).get(group) or {}).get("group_state")
        finally:
            client.close()
        return state in ("PreparingRebalance", "CompletingRebalance")

    try:
        # The second member's join puts the group into a rebalance, which waits for the first
        # member, still in its batch; only then does the batch go on (and its commit meets the
        # rebalance).
        wait_for(rebalancing, what="the group rebalancing while the first member is in its batch")
        transform.RELEASE.set()
        wait_drained(settings, migration, timeout=120)
    finally:
        transform.RELEASE.set()
        first.stop()
        second.stop()
        for t in threads:
            t.join(timeout=60)
    assert db.slow.count_documents({"done": True}) == 3000
    # The slow batch's commit came during the rebalance (accepted by the broker, or refused
    # and the batch applied again after the group settled): either way, every offset is
    # committed by one member or the other, or the lag would not have reached zero.
    assert first.stats.batches >= 1


def test_a_poll_applied_in_small_chunks_counts_and_migrates_every_document(
        db, settings, transforms, monkeypatch):
    """The consumer writes one chunk of a poll while it decides the next: with chunks of 7
    documents every poll has many, and every chunk's writes and counts must be in before
    the poll is committed."""
    from cdc_migrator.apply import batch

    monkeypatch.setattr(batch, "APPLY_CHUNK", 7)
    expected = seed_items(db["items"], random.Random(5), 1000)
    report = run_pipeline(settings, get_migration(transforms, "price_total"),
                          show_progress=False, timeout=120, batch_size=200)
    assert report.drained and report.lag == 0
    assert_invariant(db["items"], expected, set())
    # A third of the documents were in the new shape already: no write for them.
    assert report.counts["updated"] == sum(1 for i in expected if i % 3)


NAME = "add_default_role"


@pytest.fixture
def kafka_admin():
    client = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=15_000)
    yield client
    client.close()


def seed_users(db, n: int = 40) -> None:
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(n)])


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
