"""The backfill scanner: armed capture first, the existing documents into the topic, a paused
backfill holding no cursor, a backfill of other code than the code in force scanning nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from cdc_migrator import api
from cdc_migrator.capture.backfill import RECORD_BYTES, backfill, by_partition
from cdc_migrator.capture.tailer import arm
from cdc_migrator.core import events
from cdc_migrator.core.state import MemberCode, StateStore
from cdc_migrator.migration import get_migration

from ..harness import (
    CURSOR_TIMEOUT_MS,
    ITEMS_MIGRATION,
    CliProcess,
    cursor_metrics,
    part_of,
    private_settings,
    run_cli,
    seed_legacy,
    wait_for,
)


def test_a_paused_backfill_holds_no_cursor_and_finishes_after_resume(short_cursors, tmp_path):
    settings = private_settings(short_cursors, tmp_path)
    migration = get_migration(tmp_path, "price_total")
    seed_legacy(settings.db.items, 40)
    arm(settings, migration)
    api.pause(settings, "price_total")
    before = cursor_metrics(short_cursors)
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(
        backfill(settings, migration, show_progress=False)), daemon=True)
    worker.start()
    try:
        wait_for(lambda: part_of(settings.db, "price_total", "backfill").get("scanned"),
                 what="the first batch produced")
        # Holding: the scan closed its cursor rather than leave it to the server's timeout.
        wait_for(lambda: cursor_metrics(short_cursors)["open"]["total"]
                 <= before["open"]["total"], timeout=10 * CURSOR_TIMEOUT_MS / 1000,
                 what="no cursor open while paused")
        assert cursor_metrics(short_cursors)["timedOut"] == before["timedOut"]
        api.resume(settings, "price_total")
        worker.join(timeout=60)
        assert done and done[0].done and done[0].total_scanned == 40
    finally:
        api.resume(settings, "price_total")
        worker.join(timeout=60)
        settings.close()


def test_a_write_in_an_oplog_hole_when_capture_is_armed_is_scanned_once_committed(
        private_mongo, tmp_path):
    # Regression (issue 25): capture was armed at ping's operationTime, the last applied write,
    # past a write reserved before it and committed after (an oplog hole). The stream, armed
    # past it, never delivers that write, and the scan ran before it was committed: the
    # document stayed unmigrated, and nothing said why.
    settings = private_settings(private_mongo, tmp_path)
    db = private_mongo[settings.database_name]
    seed_legacy(db.items, 50)
    private_mongo.admin.command({"holdOplogHole": db.name, "write": {
        "insert": "items", "documents": [{"_id": 1000, "price": 3, "qty": 2, "legacy": True}]}})
    db.items.insert_one({"_id": 1001, "price": 4, "qty": 2, "legacy": True})  # applied past it
    released = False
    try:
        with CliProcess(settings, "run", "price_total", "--timeout", "120s") as run:
            # Armed during the hole, the backfill waits for it to commit (or, before the fix,
            # scanned and ran to its end).
            wait_for(lambda: not run.alive or run.count("waiting until every write up to the "
                                                        "armed point"),
                     what="the run waiting for the write in flight, or its end")
            private_mongo.admin.command({"releaseOplogHole": 1})
            released = True
            assert run.wait() == 0, run.log
    finally:
        if not released:
            private_mongo.admin.command({"releaseOplogHole": 1})
        settings.close()
    assert db.items.find_one({"_id": 1000}) == {"_id": 1000, "price": 3, "qty": 2, "total": 6}
    assert db.items.count_documents({"legacy": True}) == 0


TRANSFORMS = {"items.py": ITEMS_MIGRATION}


def test_backfill_refuses_until_change_capture_is_armed(db, settings, transforms):
    db.items.insert_one({"_id": 1, "price": 1, "qty": 1})
    result = run_cli("backfill", "price_total", settings=settings)
    assert result.returncode == 1
    assert "not armed" in result.stderr and "Traceback" not in result.stderr
    assert db.cdc_migrator_state.count_documents({"backfill": {"$exists": True}}) == 0


def test_a_backfill_of_other_code_holds_and_scans_nothing(db, settings, transforms, tmp_path):
    db.items.insert_many([{"_id": i, "price": i, "qty": 2, "legacy": True} for i in range(50)])
    arm(settings, get_migration(settings.transforms, "price_total"))
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "items.py").write_text(ITEMS_MIGRATION.replace(
        'total = doc["price"] * doc["qty"]', 'total = round(doc["price"] * doc["qty"], 2)'))
    held = CliProcess(settings, "backfill", "price_total", "-q",
                      env={"CDC_MIGRATOR_TRANSFORMS": str(edited)})
    try:
        wait_for(lambda: any(m.startswith("backfill@") and r["holding"] for m, r in (
            part_of(db, "price_total", "code").get("members") or {}).items()),
            what="the backfill of the edited code holding")
        assert part_of(db, "price_total", "backfill") == {}
        assert db.cdc_migrator_state.count_documents({"range_of": "price_total"}) == 0
    finally:
        assert held.stop() == 0, held.log[-2000:]
    assert "holding price_total: this backfill runs its code with fingerprint" in held.log
    assert "stopped before the end; 0 documents produced" in held.output
    assert part_of(db, "price_total", "code")["members"] == {}


def test_a_pass_begins_once_a_member_still_applying_other_code_holds(db, settings,
                                                                     transforms):
    db.items.insert_many([{"_id": i, "price": i, "qty": 2, "legacy": True} for i in range(50)])
    arm(settings, get_migration(settings.transforms, "price_total"))
    store = StateStore(db)
    # What a consumer of the code in force before an `accept` reports until it looks again.
    old = MemberCode("consumer", "0" * 64, False, "elsewhere", time.time())
    store.report_code("price_total", "consumer@old", old)
    waiting = CliProcess(settings, "backfill", "price_total")
    try:
        wait_for(lambda: waiting.count("waiting for consumer@old to hold"),
                 what="the backfill waiting for the old consumer")
        assert part_of(db, "price_total", "backfill") == {}
        store.report_code("price_total", "consumer@old",
                          MemberCode("consumer", old.fingerprint, True, "elsewhere", time.time()))
        assert waiting.wait(timeout=60) == 0, waiting.log[-2000:]
    finally:
        waiting.stop()
    assert part_of(db, "price_total", "backfill")["done"]


def test_a_document_over_the_record_size_of_a_batch_is_alone_in_its_record():
    encoder = events.RawEncoder("m", "d", "c")
    small = [RawBSONDocument(bson.encode({"_id": i, "v": "x"})) for i in range(10)]
    large = RawBSONDocument(bson.encode({"_id": 99, "v": b"\0" * (RECORD_BYTES + 1)}))
    groups = [docs for _, docs in by_partition(small[:5] + [large] + small[5:], encoder, 1)]
    assert [large] in groups
    assert all(len(docs) == 1 for docs in groups if large in docs)


def test_a_topic_that_takes_less_gets_smaller_groups(settings):
    """On a topic whose max.message.bytes is under twice the record size, groups stay within
    half of it (the broker checks its limit per batch of records)."""
    from cdc_migrator.base import topics

    topic = settings.topic("small_records")
    topics._limits[topic] = 100_000
    try:
        most = topics.group_bytes(topic, RECORD_BYTES)
        assert most == 50_000 and topics.group_bytes("unread", RECORD_BYTES) == RECORD_BYTES
        encoder = events.RawEncoder("m", "d", "c")
        docs = [RawBSONDocument(bson.encode({"_id": i, "v": b"\0" * 9_000})) for i in range(20)]
        groups = [g for _, g in by_partition(docs, encoder, 1, most)]
        assert [len(g) for g in groups] == [5, 5, 5, 5]
        assert all(sum(len(d.raw) for d in g) <= most for g in groups)
    finally:
        del topics._limits[topic]
