"""Lag you can trust, status you can watch, and a cutover that refuses when it should."""

from __future__ import annotations

import json
import textwrap
import threading

from kafka import KafkaConsumer, TopicPartition

from cdc_migrator.base import topics
from cdc_migrator.base.naming import FENCE_COLLECTION
from cdc_migrator.base.state import Phase, StateStore
from cdc_migrator.capture.tailer import arm
from cdc_migrator.migration import get_migration

from .harness import CliProcess, run_cli, wait_drained, wait_for, wait_for_state

MIGRATIONS = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="accounts")
    def add_tier(doc, ctx):
        if doc.get("tier") is None:
            if doc.get("explode"):
                raise ValueError("cannot migrate an exploding account")
            return {"tier": "free"}

    @migration(collection="accounts")
    def add_region(doc, ctx):
        if "region" not in doc:
            return {"region": "eu"}
''')
TRANSFORMS = {"accounts.py": MIGRATIONS}


def seed(db, n, start=0):
    db.accounts.insert_many([{"_id": start + i, "name": f"a{i}"} for i in range(n)])


class Deployment:
    """tail and consume (at -v) as separate processes, stopped with SIGTERM at the end."""

    def __init__(self, settings, name, consumers=1):
        self.procs = [CliProcess(settings, "tail", name)]
        self.consumers = [CliProcess(settings, "consume", name, "-v") for _ in range(consumers)]
        self.procs += self.consumers

    def stop(self):
        for proc in self.procs:
            if proc.alive:
                proc.proc.terminate()
        return [proc.wait(timeout=60) for proc in self.procs]


def test_cutover_refuses_until_backfill_lag_and_unmigrated_documents_clear(db, settings,
                                                                          transforms):
    seed(db, 3000)
    arm(settings, get_migration(transforms, "add_tier"))
    refused = run_cli("cutover", "add_tier", "--timeout", "1", settings=settings)
    assert refused.returncode == 1
    assert "backfill unfinished" in refused.stdout
    assert "3,000 documents unmigrated" in refused.stdout

    tail = CliProcess(settings, "tail", "add_tier")
    consume = None
    try:
        wait_for_state(db, "add_tier", lambda s: (s.get("tail") or {}).get("heartbeat"))
        assert run_cli("backfill", "add_tier", "-q", settings=settings).returncode == 0
        # Paused, no consumer applies anything (not even the one cutover would start).
        assert run_cli("pause", "add_tier", settings=settings).returncode == 0
        behind = run_cli("cutover", "add_tier", "--timeout", "2", settings=settings)
        assert behind.returncode == 1
        assert "events behind" in behind.stdout and "backfill" not in behind.stdout
        assert run_cli("resume", "add_tier", settings=settings).returncode == 0

        consume = CliProcess(settings, "consume", "add_tier")
        wait_drained(settings, get_migration(transforms, "add_tier"), process=consume)
        ok = run_cli("cutover", "add_tier", "--timeout", "60", settings=settings)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "cut over" in ok.stdout
        state = db.cdc_migrator_state.find_one({"_id": "add_tier"})
        assert state["phase"] == Phase.CUT_OVER and state["completed_at"]
        assert db.accounts.count_documents({"tier": "free"}) == 3000
        assert consume.stop() == 0
    finally:
        for process in (consume, tail):
            if process is not None and process.alive:
                process.stop()


def test_cutover_refuses_while_documents_fail_and_names_them(db, settings, transforms):
    seed(db, 200)
    db.accounts.update_many({"_id": {"$in": [3, 7]}}, {"$set": {"explode": True}})
    assert run_cli("apply", "add_tier", "-q", settings=settings).returncode == 1
    refused = run_cli("cutover", "add_tier", settings=settings)
    assert refused.returncode == 1
    assert "2 documents make the transform raise" in refused.stdout
    db.accounts.update_many({}, {"$unset": {"explode": ""}})
    db.accounts.insert_one({"_id": 999, "name": "late"})
    late = run_cli("cutover", "add_tier", settings=settings)
    assert late.returncode == 1 and "3 documents unmigrated" in late.stdout
    assert run_cli("apply", "add_tier", "-q", settings=settings).returncode == 0
    assert run_cli("cutover", "add_tier", settings=settings).returncode == 0


def test_status_lag_agrees_with_an_independent_count_at_the_broker(db, settings, transforms):
    seed(db, 1500)
    migration = get_migration(transforms, "add_tier")
    arm(settings, migration)
    assert run_cli("backfill", "add_tier", "-q", settings=settings).returncode == 0
    status = run_cli("status", "add_tier", "--json", settings=settings)
    assert status.returncode == 0, status.stderr
    reported = json.loads(status.stdout)["lag"]

    topic = settings.topic("accounts")
    consumer = KafkaConsumer(group_id=settings.group(migration.name),
                             bootstrap_servers=settings.kafka_bootstrap_servers)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    ends = consumer.end_offsets(parts)
    independent = sum(ends[tp] - (consumer.committed(tp) or 0) for tp in parts)
    consumer.close()
    # Lag counts records: the backfill puts a batch of documents of one partition in each.
    assert reported["total"] == independent
    assert 0 < independent < 1500
    assert {int(p): v["lag"] for p, v in reported["partitions"].items()} == {
        tp.partition: ends[tp] for tp in parts}


def test_fence_waits_for_every_partition_with_several_consumers(db, settings, transforms):
    seed(db, 6000)
    deployment = Deployment(settings, "add_tier", consumers=2)
    try:
        wait_for_state(db, "add_tier", lambda s: (s.get("tail") or {}).get("heartbeat"))
        assert run_cli("backfill", "add_tier", "-q", settings=settings).returncode == 0
        # Cut over at once: the fence makes cutover wait for every event before it. How far
        # the fence got is watched while cutover waits (it forgets the fence when done).
        store = StateStore(db, settings.state_collection)
        reached: list[int] = []
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                state = store.get("add_tier")
                reached.extend(len(p) for p in (state.fences.values() if state else ()))
                watching.wait(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        result = run_cli("cutover", "add_tier", "--timeout", "120", settings=settings)
        watching.set()
        watcher.join()
        assert result.returncode == 0, result.stdout + result.stderr
        assert max(reached) == settings.partitions, "a fence passed by every partition"
        # Done: the fence document and what the state knew of it are gone.
        assert store.get("add_tier").fences == {}
        assert db[FENCE_COLLECTION].count_documents({}) == 0
        assert db.accounts.count_documents({"tier": {"$ne": "free"}}) == 0
        lag = topics.group_lag(settings, settings.topic("accounts"),
                               settings.group("add_tier"))
        assert lag.total == 0
    finally:
        assert deployment.stop() == [0, 0, 0]


def test_pause_holds_and_resume_continues(db, settings, transforms):
    seed(db, 100)
    deployment = Deployment(settings, "add_tier")
    try:
        wait_for_state(db, "add_tier", lambda s: (s.get("tail") or {}).get("heartbeat"))
        assert run_cli("backfill", "add_tier", "-q", settings=settings).returncode == 0
        migration = get_migration(transforms, "add_tier")
        wait_drained(settings, migration)
        assert run_cli("pause", "add_tier", settings=settings).returncode == 0
        (consumer,) = deployment.consumers
        wait_for(lambda: consumer.count("paused: holding the position"),
                 what="the consumer holding after pause")
        seed(db, 50, start=1000)
        topic, group = settings.topic("accounts"), settings.group("add_tier")
        wait_for(lambda: topics.group_lag(settings, topic, group).total == 50,
                 what="the 50 new events on the topic")
        # The paused consumer checks the flag every second and polls (every partition
        # paused) for 200 ms at a time in between. Three checks after the events were on its
        # partitions are two seconds of polls to which they were there to take: a consumer
        # that did not hold would have applied them within the first (its fetches wait at
        # most 500 ms). The checks are logged at -v, so the window is what it says.
        held = consumer.count("still paused")
        wait_for(lambda: consumer.count("still paused") >= held + 3,
                 what="three pause checks with the events on the topic")
        assert db.accounts.count_documents({"tier": None}) == 50, "paused, yet applied"
        status = json.loads(run_cli("status", "add_tier", "--json", settings=settings).stdout)
        assert status["paused"] and status["lag"]["total"] == 50
        assert run_cli("resume", "add_tier", settings=settings).returncode == 0
        wait_drained(settings, migration)
        assert db.accounts.count_documents({"tier": None}) == 0
    finally:
        assert deployment.stop() == [0, 0]


def test_cancel_refuses_further_work_and_reset_starts_over(db, settings, transforms):
    seed(db, 10)
    assert run_cli("cancel", "add_tier", settings=settings).returncode == 0
    tail = run_cli("tail", "add_tier", settings=settings, timeout=60)
    assert tail.returncode == 1 and "cancelled" in tail.stderr
    assert db.accounts.count_documents({"tier": "free"}) == 0
    assert run_cli("reset", "add_tier", "--yes", settings=settings).returncode == 0
    assert db.cdc_migrator_state.find_one({"_id": "add_tier"}) is None
    assert run_cli("apply", "add_tier", "-q", settings=settings).returncode == 0
    assert db.accounts.count_documents({"tier": "free"}) == 10


def test_next_runs_migrations_of_a_collection_in_series(db, settings, transforms):
    seed(db, 10)
    first = run_cli("next", "accounts", settings=settings)
    assert first.returncode == 0 and first.stdout.strip() == "add_tier"
    assert run_cli("apply", "add_tier", "-q", settings=settings).returncode == 0
    assert run_cli("next", "accounts", settings=settings).stdout.strip() == "add_tier"
    assert run_cli("cutover", "add_tier", settings=settings).returncode == 0
    assert run_cli("next", "accounts", settings=settings).stdout.strip() == "add_region"
    assert run_cli("apply", "add_region", "-q", settings=settings).returncode == 0
    assert run_cli("cutover", "add_region", settings=settings).returncode == 0
    done = run_cli("next", "accounts", settings=settings)
    assert done.returncode == 1 and "every migration" in done.stdout


def test_next_run_cuts_over_each_migration_before_starting_the_next(db, settings, transforms):
    seed(db, 300)
    result = run_cli("next", "accounts", "--run", "--timeout", "120", settings=settings,
                     timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    states = {s["_id"]: s for s in db.cdc_migrator_state.find()}
    assert states["add_tier"]["phase"] == states["add_region"]["phase"] == Phase.CUT_OVER
    assert states["add_tier"]["completed_at"] <= states["add_region"]["created_at"]
    assert db.accounts.count_documents({"tier": "free", "region": "eu"}) == 300


def holding_partitions(settings, name: str) -> list[topics.GroupMember]:
    return [m for m in topics.group_description(settings, settings.group(name),
                                                settings.topic("accounts")) if m.partitions]


def test_status_says_a_killed_consumer_holds_its_partitions_until_its_session_times_out(
        db, settings, transforms):
    """A consumer killed without --instance-id stays a member of the group until its session
    times out (30 s): its partitions are consumed by nobody meanwhile, and the next cutover
    waited 73 s. `status` says why while it lasts."""
    seed(db, 20)
    arm(settings, get_migration(settings.transforms, "add_tier"))
    survivor = CliProcess(settings, "consume", "add_tier")
    killed = CliProcess(settings, "consume", "add_tier")
    try:
        wait_for(lambda: len(StateStore(db).get("add_tier").consumers) == 2,
                 what="both consumers reporting themselves alive")
        wait_for(lambda: len(holding_partitions(settings, "add_tier")) == 2,
                 what="both members holding partitions")
        killed.kill()

        silent = wait_for(lambda: json.loads(run_cli(
            "status", "add_tier", "--json", settings=settings).stdout)["group"]["silent"],
            timeout=25, what="the killed member shown silent")
        text = run_cli("status", "add_tier", settings=settings).stdout
    finally:
        survivor.stop()
    (member,) = silent
    assert member["instance_id"] is None and member["session_timeout_seconds"] == 30
    assert member["partitions"] and member["silent_seconds"] >= 10
    assert f"consumer {member['member_id']} on 127.0.0.1 silent for" in text, text
    assert "still in the group, holding p" in text and "killed without --instance-id" in text
    assert "when its session times out (30 s after its last heartbeat)" in text
    assert "Until then they are not consumed, and cutover waits." in text
