"""The event-sourced path against the real broker and server: nothing written is missed."""

from __future__ import annotations

import os
import random
import sys
import textwrap
import threading
import time

from cdc_migrator import api
from cdc_migrator.base import topics
from cdc_migrator.migration import get_migration
from cdc_migrator.pipeline import run_pipeline

from ..harness import (
    ITEMS_MIGRATION,
    CliProcess,
    ItemsWriter,
    assert_invariant,
    part_of,
    run_cli,
    seed_items,
    wait_drained,
    wait_for,
    wait_for_state,
)

TRANSFORMS = {"items.py": ITEMS_MIGRATION}


def test_invariant_holds_while_the_application_writes_during_backfill(db, settings, transforms):
    seed = int(os.environ.get("CDC_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed={seed}")
    rng = random.Random(seed)
    coll = db["items"]
    expected = seed_items(coll, rng, 20_000)
    migration = get_migration(transforms, "price_total")
    writer = ItemsWriter(coll, random.Random(seed + 1), next_id=20_000, expected=expected)
    stop = threading.Event()

    def stop_writer_after_backfill() -> None:
        try:
            wait_for(lambda: stop.is_set() or part_of(db, "price_total", "backfill").get("done"),
                     timeout=600, what="the backfill done", interval=0.05)
        finally:
            writer.stop.set()

    writer.start()
    watcher = threading.Thread(target=stop_writer_after_backfill, daemon=True)
    watcher.start()
    # The rate cap keeps the backfill running long enough for the writer to race with it.
    report = run_pipeline(settings, migration, show_progress=False, timeout=300, stop=stop,
                          batch_size=1000, rate=4000)
    writer.finish()
    # Writes made after `run` saw zero lag are caught by a second drain, as `consume` would.
    report = run_pipeline(settings, migration, show_progress=False, timeout=120)
    print(f"writer ops={writer.ops} counts={report.counts}")
    assert writer.ops > 100, "the writer did not race with the backfill"
    assert report.drained and report.lag == 0
    assert_invariant(coll, writer.expected, writer.deleted)
    assert api.verify(settings, "price_total").ok


def test_killed_tailer_and_consumer_resume_to_the_same_end_state(db, settings, transforms):
    rng = random.Random(7)
    members = db["members"]
    members.insert_many([{"_id": i, "name": f"m{i}", "prefs": {"theme": rng.choice("ab"),
                                                               "n": i}} for i in range(6000)])
    migration = get_migration(transforms, "split_prefs")
    tail = CliProcess(settings, "tail", "split_prefs")
    consume = CliProcess(settings, "consume", "split_prefs")
    wait_for_state(db, "split_prefs", lambda s: (s.get("tail") or {}).get("armed_at"))
    backfill = CliProcess(settings, "backfill", "split_prefs", "--batch-size", "200", "-q")
    # Writes during the run: new members in the old shape, which only the tailer can see.
    members.insert_many([{"_id": 10_000 + i, "prefs": {"theme": "c", "n": i}}
                         for i in range(500)])
    wait_for_state(db, "split_prefs", lambda s: (s.get("counts") or {}).get("consumed", 0) > 500)
    tail.kill()
    consume.kill()
    members.insert_many([{"_id": 20_000 + i, "prefs": {"theme": "d", "n": i}}
                         for i in range(500)])
    assert backfill.wait(timeout=180) == 0, backfill.log
    tail = CliProcess(settings, "tail", "split_prefs")
    consume = CliProcess(settings, "consume", "split_prefs")
    try:
        wait_for_state(db, "split_prefs", lambda s: (s.get("tail") or {}).get("heartbeat", 0)
                       > time.time() - 1)
        wait_drained(settings, migration)
        wait_for(lambda: members.count_documents({"prefs": {"$exists": True}}) == 0,
                 timeout=120, interval=0.5, what="every member's prefs moved")
    finally:
        codes = [proc.stop() for proc in (tail, consume)]
    assert codes == [0, 0], "SIGTERM must finish the batch, commit and exit 0"
    assert members.count_documents({"prefs": {"$exists": True}}) == 0
    prefs = list(db.member_prefs.find())
    assert len(prefs) == 7000, "every member's prefs moved exactly once"
    assert len({p["memberId"] for p in prefs}) == 7000
    by_member = {p["memberId"]: p for p in prefs}
    assert by_member[42]["n"] == 42 and by_member[10_003]["theme"] == "c"
    assert api.verify(settings, "split_prefs").ok


def test_backfill_refuses_until_change_capture_is_armed(db, settings, transforms):
    db.items.insert_one({"_id": 1, "price": 1, "qty": 1})
    result = run_cli("backfill", "price_total", settings=settings)
    assert result.returncode == 1
    assert "not armed" in result.stderr and "Traceback" not in result.stderr
    assert db.cdc_migrator_state.count_documents({"backfill": {"$exists": True}}) == 0


def test_the_consumers_own_writes_are_not_sent_through_the_topic_again(db, settings,
                                                                         transforms):
    coll = db["items"]
    coll.insert_many([{"_id": i, "price": i, "qty": 2, "legacy": True} for i in range(300)]
                     + [{"_id": 300 + i, "price": 1, "qty": 1, "total": 1} for i in range(20)])
    migration = get_migration(transforms, "price_total")
    report = run_pipeline(settings, migration, show_progress=False, timeout=120)
    assert report.drained and report.lag == 0
    # The backfill's 320 events; the 300 writes came back through the change stream and were
    # dropped by the tailer, since the transform finds those documents migrated.
    assert report.counts["produced"] == 320
    assert report.counts["updated"] == 300 and report.counts["skipped"] == 300
    assert report.counts["consumed"] == 320 and report.counts["unchanged"] == 20
    assert api.verify(settings, "price_total").ok


def test_the_tailer_forwards_every_event_the_consumer_may_have_work_for(db, settings,
                                                                         transforms):
    from cdc_migrator.capture.tailer import Tailer
    from cdc_migrator.migration import Migration

    def event(op, doc):
        return {"_id": {"_data": "82"}, "operationType": op, "documentKey": {"_id": 1},
                "fullDocument": doc}

    price_total = get_migration(transforms, "price_total")
    split_prefs = get_migration(transforms, "split_prefs")
    tailer = Tailer(settings, price_total)
    done = {"_id": 1, "price": 2, "qty": 3, "total": 6}
    assert tailer._needs_nothing(event("update", done))
    assert tailer._needs_nothing(event("insert", done))
    assert not tailer._needs_nothing(event("update", {**done, "legacy": True}))
    assert not tailer._needs_nothing(event("update", None))  # deleted before the look-up
    assert not tailer._needs_nothing(event("delete", None))
    assert not tailer._needs_nothing(event("insert", {"_id": 1, "price": 2}))  # it raises

    def bad_patch(doc, ctx):
        return ["not", "a", "patch"]

    def writes_elsewhere(doc, ctx):
        ctx.db.audit.insert_one({"seen": doc["_id"]})
        return None

    for transform in (bad_patch, writes_elsewhere):
        other = Tailer(settings, Migration(transform.__name__, "items", transform))
        assert not other._needs_nothing(event("update", done))
    assert db.audit.count_documents({}) == 0  # the dry run wrote nothing
    assert Tailer(settings, split_prefs)._needs_nothing(event("update", {"_id": 1}))


FILTERED_MIGRATION = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="accounts", filter={"tier": {"$exists": False}})
    def add_tier(doc, ctx):
        return {"tier": "gold" if doc["n"] % 10 == 0 else "standard"}
''')


def test_a_filtered_migrations_echo_is_dropped_by_the_server(db, settings, tmp_path):
    """With a filter, the change stream itself drops events of documents outside it: the
    consumer's writes never reach the tailer, while every application write inside it does."""
    (tmp_path / "accounts.py").write_text(FILTERED_MIGRATION)
    settings.transforms = tmp_path
    coll = db["accounts"]
    coll.insert_many([{"_id": i, "n": i} for i in range(400)]
                     + [{"_id": 400 + i, "n": i, "tier": "vip"} for i in range(50)])
    migration = get_migration(tmp_path, "add_tier")
    stop = threading.Event()
    result: dict = {}

    def application():
        # Writes during the run, once capture is armed: new old-shape documents (inside the
        # filter) and an update of a migrated field (outside it: nothing to do, and no event
        # needed). The run cannot end before it backfilled 400 documents and drained.
        wait_for_state(db, "add_tier", lambda s: (s.get("tail") or {}).get("armed_at"),
                       timeout=60)
        coll.insert_many([{"_id": 1000 + i, "n": i} for i in range(30)])
        coll.update_many({"_id": {"$in": list(range(400, 410))}}, {"$set": {"tier": "bronze"}})

    writer = threading.Thread(target=application, daemon=True)
    writer.start()
    result["report"] = run_pipeline(settings, migration, show_progress=False, timeout=120,
                                    stop=stop, settle=2.0)
    writer.join(timeout=30)
    report = result["report"]
    assert report.drained and report.lag == 0
    # 400 snapshots, plus the 30 inserts unless the backfill read them first (then the
    # insert event may arrive with its document already migrated and be dropped).
    produced = report.counts["produced"]
    assert 400 <= produced <= 430 + 30, produced
    # Nothing came back for the tailer to drop in Python: the server dropped the echo.
    assert report.counts.get("skipped", 0) == 0
    assert report.counts["updated"] == 430
    assert coll.count_documents({"tier": {"$exists": False}}) == 0
    assert coll.count_documents({"tier": "bronze"}) == 10
    assert coll.count_documents({"tier": "gold"}) == 43
    assert api.verify(settings, "add_tier").ok


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
