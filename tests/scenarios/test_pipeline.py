"""The event-sourced path against the real broker and server: nothing written is missed."""

from __future__ import annotations

import logging
import os
import random
import threading
import time

from cdc_migrator import api
from cdc_migrator.apply.consumer import TransformConsumer
from cdc_migrator.base.threads import Threads
from cdc_migrator.capture.backfill import backfill
from cdc_migrator.capture.tailer import Tailer, arm
from cdc_migrator.migration import get_migration
from cdc_migrator.pipeline import run_pipeline
from cdc_migrator.pipeline import wait_drained as drained_by_run

from ..harness import (
    ITEMS_MIGRATION,
    CliProcess,
    ItemsWriter,
    assert_invariant,
    part_of,
    private_settings,
    seed_items,
    seed_legacy,
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




class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_runs_drain_waits_for_a_write_in_flight_before_the_present(private_mongo, tmp_path):
    # Regression (issue 25): `run` took the first empty batch of the stream for "caught up".
    # While a write is in flight (an oplog hole), the stream returns nothing from it on, so
    # the drain passed, the run ended ready for cutover, and the write came after.
    settings = private_settings(private_mongo, tmp_path)
    db = private_mongo[settings.database_name]
    seed_legacy(db.items, 20)
    migration = get_migration(tmp_path, "price_total")
    arm(settings, migration)
    assert backfill(settings, migration, show_progress=False).done
    stop = threading.Event()
    tailer, consumer = Tailer(settings, migration), TransformConsumer(settings, migration)
    threads = Threads(stop)
    threads.start("tail", tailer.run)
    threads.start("consume", consumer.run)
    records = _Records()
    logger = logging.getLogger("cdc_migrator.pipeline")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    held = False
    try:
        assert drained_by_run(settings, migration, tailer, stop, None, settle=0)
        private_mongo.admin.command({"holdOplogHole": db.name, "write": {"insert": "items",
                                     "documents": [{"_id": 1000, "price": 3, "qty": 2}]}})
        held = True
        db.items.insert_one({"_id": 1001, "price": 4, "qty": 2})  # applied, past the hole
        outcome: list[bool] = []
        drain = threading.Thread(target=lambda: outcome.append(
            drained_by_run(settings, migration, tailer, stop, None, settle=0)))
        drain.start()
        # The drain's own checks are the window: three that find the tailer behind.
        wait_for(lambda: outcome or sum("catching up" in m for m in records.messages) >= 3,
                 what="the drain's end, or three of its checks")
        assert not outcome, "drained while a write before the present was in flight"
        private_mongo.admin.command({"releaseOplogHole": 1})
        held = False
        drain.join(timeout=60)
        assert outcome == [True]
        assert db.items.find_one({"_id": 1000}) == {"_id": 1000, "price": 3, "qty": 2,
                                                    "total": 6}
    finally:
        if held:
            private_mongo.admin.command({"releaseOplogHole": 1})
        logger.removeHandler(records)
        logger.setLevel(level)
        tailer.stop()
        consumer.stop()
        stop.set()
        threads.join(timeout=60)
        settings.close()
