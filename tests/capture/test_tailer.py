"""The tailer: the migration's filter moved into the change stream, the consumer's echo dropped,
every event forwarded that the consumer may have work for; a dropped, renamed or invalidated
stream stopping it in one line, idle writes only at the heartbeat, lost history failing the
migration or recovered by a new backfill."""

from __future__ import annotations

import json
import random
import textwrap
import threading
import time
import uuid

import pytest

from cdc_migrator import api
from cdc_migrator.base import topics
from cdc_migrator.base.naming import FENCE_COLLECTION
from cdc_migrator.base.retry import Retrier
from cdc_migrator.base.settings import Settings
from cdc_migrator.capture.partitions import partition_of
from cdc_migrator.capture.tailer import (
    COALESCE_WINDOW,
    UNUSED_FIELDS,
    RoundTrips,
    Tailer,
    arm,
    image_condition,
    stream_pipeline,
)
from cdc_migrator.core.events import decode_key, key_bytes
from cdc_migrator.core.fingerprint import fingerprint
from cdc_migrator.core.state import CODE_REPORT_INTERVAL, HEARTBEAT_INTERVAL, Phase, StateStore
from cdc_migrator.errors import CaptureStopped
from cdc_migrator.migration import Migration, filter_fields, get_migration
from cdc_migrator.pipeline import run_pipeline

from ..harness import (
    ITEMS_MIGRATION,
    KAFKA,
    CliProcess,
    CommandRecorder,
    local_mongo,
    part_of,
    private_settings,
    run_cli,
    seed_items,
    seed_legacy,
    state_of,
    wait_for,
    wait_for_state,
)


def _migration(filter_):
    return Migration(name="m", collection="users", transform=lambda d, c: None,
                     filter=filter_)


def test_field_paths_get_the_full_document_prefix_and_operators_stay():
    assert image_condition({"tier": {"$exists": False}, "address.city": "Lyon"}) == {
        "fullDocument.tier": {"$exists": False}, "fullDocument.address.city": "Lyon"}


def test_logical_operators_are_rewritten_inside():
    query = {"$or": [{"a": 1}, {"$and": [{"b": {"$gt": 2}}, {"c": None}]}], "$nor": [{"d": 4}]}
    assert image_condition(query) == {
        "$or": [{"fullDocument.a": 1},
                {"$and": [{"fullDocument.b": {"$gt": 2}}, {"fullDocument.c": None}]}],
        "$nor": [{"fullDocument.d": 4}]}


@pytest.mark.parametrize("query", [
    {"$expr": {"$gt": ["$a", "$b"]}},
    {"a": 1, "$where": "this.a > 1"},
    {"$text": {"$search": "x"}},
    {"$or": [{"a": 1}, {"$expr": {"$eq": ["$a", 2]}}]},
    {"$and": []},
    {"$or": "not a list"},
])
def test_a_filter_that_is_not_about_fields_is_not_moved(query):
    assert image_condition(query) is None
    stages = stream_pipeline(_migration(query))
    assert len(stages) == 2, "only the namespace stage: the tailer checks every event itself"
    assert stages[1] == UNUSED_FIELDS


def test_without_a_filter_only_the_namespaces_and_the_end_of_the_stream_are_matched():
    assert stream_pipeline(_migration({})) == [{"$match": {"$or": [
        {"ns.coll": {"$in": ["users", FENCE_COLLECTION]}},
        {"to.coll": "users"},
        {"operationType": {"$in": ["dropDatabase", "invalidate"]}},
    ]}}, {"$unset": ["updateDescription"]}]


def test_with_a_filter_fences_deletes_and_events_without_a_document_always_pass():
    stages = stream_pipeline(_migration({"tier": {"$exists": False}}))
    assert len(stages) == 3 and stages[2] == UNUSED_FIELDS
    either = stages[1]["$match"]["$or"]
    assert {"ns.coll": FENCE_COLLECTION} in either
    assert {"operationType": {"$nin": ["insert", "update", "replace"]}} in either
    assert {"fullDocument": None} in either
    assert {"fullDocument.tier": {"$exists": False}} in either


# --------------------------------------------------------------------------- the filter in writes

def test_filter_fields_are_the_top_level_fields_or_none():
    assert filter_fields({"tier": {"$exists": False}, "address.city": "Lyon"}) == {
        "tier", "address"}
    assert filter_fields({"$or": [{"a": 1}, {"$and": [{"b": 2}]}], "c": None}) == {"a", "b", "c"}
    for query in ({"$expr": {"$gt": ["$a", 1]}}, {"$and": []}, {"a": 1, "$where": "1"},
                  {"$or": [{"$text": {"$search": "x"}}]}):
        assert filter_fields(query) is None


@pytest.mark.parametrize("change", ["drop", "rename", "rename onto"])
def test_a_dropped_or_renamed_collection_fails_its_migration_and_cutover_names_it(
        db, items_settings, change):
    settings = items_settings
    seed_legacy(db.items, 20)
    tail = CliProcess(settings, "tail", "price_total")
    try:
        wait_for(lambda: part_of(db, "price_total", "tail").get("heartbeat"), what="tailing")
        if change == "drop":
            db.items.drop()
            reasons = ["collection 'items' was dropped"]
        elif change == "rename":
            db.items.rename("items_old")
            reasons = ["collection 'items' was renamed to 'items_old'"]
        else:
            db.staging.insert_one({"_id": 1})
            db.staging.rename("items", dropTarget=True)
            # This server reports dropTarget's drop first; MongoDB a rename with `to`.
            reasons = ["collection 'items' was replaced: 'staging' was renamed onto it",
                       "collection 'items' was dropped"]
        code = tail.wait(timeout=30)
    finally:
        tail.kill()
    assert code == 1, tail.log
    errors = [line for line in tail.lines if line.startswith("cdc-migrator:")]
    assert len(errors) == 1, tail.log
    reason = next(r for r in reasons if r in errors[0])
    assert "Traceback" not in tail.log
    state = state_of(db, "price_total")
    assert state["phase"] == Phase.FAILED and state["failure"]["reason"] == reason
    refused = run_cli("cutover", "price_total", "--timeout", "1s", settings=settings)
    assert refused.returncode == 1
    assert f"the migration failed: {reason}" in refused.stdout


def test_a_dropped_database_stops_the_tailer_with_one_line(db, items_settings):
    tail = CliProcess(items_settings, "tail", "early")  # its collection does not exist
    try:
        wait_for(lambda: part_of(db, "early", "tail").get("heartbeat"),
                 what="tailing")
        db.client.drop_database(db.name)
        code = tail.wait(timeout=30)
    finally:
        tail.kill()
    assert code == 1, tail.log
    errors = [line for line in tail.lines if line.startswith("cdc-migrator:")]
    assert len(errors) == 1 and f"database {db.name!r} was dropped" in errors[0], tail.log


def test_a_closed_stream_stops_the_tailer_at_once_instead_of_spinning(db, items_settings):
    """An invalidated stream whose invalidate event the pipeline filtered out: try_next
    returns None at once, forever, without asking the server; the tailer must look at
    ``alive``."""
    db.seed.insert_one({"_id": 1})
    stream = db.watch([{"$match": {"ns.coll": "nothing"}}], max_await_time_ms=50)
    db.client.drop_database(db.name)
    wait_for(lambda: stream.try_next() is None and not stream.alive, timeout=10,
             what="the stream closed by the server")
    tailer = Tailer(items_settings, get_migration(items_settings.transforms, "early"))
    tailer.retry = Retrier(items_settings, stop=tailer.stopping)
    tailer.publisher = topics.Publisher(items_settings, tailer.retry)
    outcome: list[BaseException] = []

    def loop() -> None:
        try:
            tailer._loop(stream, 1)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    thread.join(timeout=10)
    tailer.stop()
    thread.join(timeout=10)
    tailer.publisher.close()
    assert outcome and isinstance(outcome[0], CaptureStopped), "the tailer spun on a closed stream"
    assert "was invalidated" in str(outcome[0])


def test_an_idle_tailer_writes_its_state_only_at_the_heartbeat(db, items_settings):
    """Window: 20 idle polls of the change stream after the tailer's first checkpoint. Each
    idle getMore waits max_await_time_ms (200 ms) for an event, so the window is at least 4 s,
    20 times the 200 ms after which the old tailer wrote again on every poll; it is shorter than
    HEARTBEAT_INTERVAL, so the tailer may write its heartbeat once at most."""
    recorder = CommandRecorder()
    settings = items_settings
    settings.mongo_options = {"event_listeners": [recorder]}
    seed_legacy(db.items, 5)
    tailer = Tailer(settings, get_migration(settings.transforms, "price_total"))
    thread = threading.Thread(target=tailer.run, daemon=True)
    thread.start()
    try:
        def state_writes() -> int:
            return sum(1 for c in recorder.named("update")
                       if c["update"] == settings.state_collection)

        def polls() -> int:
            return len(recorder.named("getMore"))

        wait_for(lambda: part_of(db, "price_total", "tail").get("heartbeat"),
                 what="the first checkpoint")
        writes, start = state_writes(), polls()
        wait_for(lambda: polls() >= start + 20, timeout=30, what="20 idle polls")
        idle_writes = state_writes() - writes
    finally:
        tailer.stop()
        thread.join(timeout=30)
    assert 20 * 0.2 < HEARTBEAT_INTERVAL
    assert idle_writes <= 1, f"{idle_writes} state writes in 20 idle polls"


@pytest.mark.services  # a LocalMongo of its own and the shared Kafka
@pytest.mark.local_server("truncateChangeHistory, on a LocalMongo of its own")
def test_status_warns_of_lost_history_and_rebackfill_recovers_it(tmp_path):
    proc, client = local_mongo(tmp_path)
    try:
        settings = private_settings(client, tmp_path)
        db = settings.db
        seed_legacy(db.items, 30)
        tail = CliProcess(settings, "tail", "price_total")
        wait_for(lambda: part_of(db, "price_total", "tail").get("position_time"),
                 what="a saved resume point")
        assert tail.stop() == 0
        healthy = api.status(settings, "price_total")[0]["history"]
        assert healthy["warnings"] == [] and healthy["runway_seconds"] is not None
        db.items.insert_many([{"_id": 100 + i, "price": 1, "qty": 1, "legacy": True}
                              for i in range(20)])
        client.admin.command({"truncateChangeHistory": 1})

        lost = run_cli("status", "price_total", settings=settings)
        assert "WARNING: the tailer's resume point is older than the server's change " \
               "history" in lost.stdout, lost.stdout

        tail = CliProcess(settings, "tail", "price_total", "--on-history-lost",
                                "rebackfill")
        consume = CliProcess(settings, "consume", "price_total")
        try:
            wait_for(lambda: (part_of(db, "price_total", "tail").get("last_recovery") or {})
                     .get("backfill") == "done", timeout=120, what="the recovery backfill")
            wait_for(lambda: db.items.count_documents({"legacy": {"$exists": True}}) == 0,
                     timeout=120, what="every document migrated")
        finally:
            assert tail.stop() == 0, tail.log
            consume.stop()
        assert tail.count("capture re-armed") == 1, tail.log
        state = state_of(db, "price_total")
        assert state["tail"]["recoveries"] == 1 and state["phase"] != Phase.FAILED
        shown = run_cli("status", "price_total", settings=settings)
        assert "history lost and recovered 1x" in shown.stdout, shown.stdout
        # The reason is text: the server's message, not the driver's raw reply after it.
        reason = state["tail"]["last_recovery"]["reason"]
        as_json = run_cli("status", "price_total", "--json", settings=settings).stdout
        assert json.loads(as_json)["tail"]["last_recovery"]["reason"] == reason
        assert reason.startswith("the change stream of items can no longer resume from the "
                                 "saved point (") and reason.endswith(")"), reason
        for text in (reason, tail.log, shown.stdout):
            assert "RawBSONDocument" not in text and "full error" not in text, text
        assert db.items.count_documents({"total": {"$exists": True}}) == 50
        settings.close()
    finally:
        client.close()
        proc.kill()
        proc.wait()


@pytest.mark.services  # a LocalMongo of its own and the shared Kafka
@pytest.mark.local_server("truncateChangeHistory, on a LocalMongo of its own")
def test_run_recovers_lost_history_with_rebackfill_and_records_the_recovery_done(tmp_path):
    """`run` recovers as `tail` does: the recovery's backfill (the tailer's own) migrates
    what the lost history held, the run drains only after it, and the recovery is recorded
    done (`run` ran the new pass itself and left it "running" for good before)."""
    proc, client = local_mongo(tmp_path)
    try:
        settings = private_settings(client, tmp_path)
        db = settings.db
        seed_legacy(db.items, 30)
        tail = CliProcess(settings, "tail", "price_total")
        wait_for(lambda: part_of(db, "price_total", "tail").get("position_time"),
                 what="a saved resume point")
        assert tail.stop() == 0
        db.items.insert_many([{"_id": 100 + i, "price": 1, "qty": 1, "legacy": True}
                              for i in range(20)])
        client.admin.command({"truncateChangeHistory": 1})

        ran = run_cli("run", "price_total", "--on-history-lost", "rebackfill", "--timeout",
                      "120s", "-q", settings=settings, timeout=180)

        assert ran.returncode == 0, ran.stderr
        assert "capture re-armed" in ran.stderr and "Traceback" not in ran.stderr
        state = state_of(db, "price_total")
        assert state["tail"]["recoveries"] == 1
        assert state["tail"]["last_recovery"]["backfill"] == "done"
        assert db.items.count_documents({"legacy": {"$exists": True}}) == 0
        assert db.items.count_documents({"total": {"$exists": True}}) == 50
        settings.close()
    finally:
        client.close()
        proc.kill()
        proc.wait()


TRANSFORMS = {"items.py": ITEMS_MIGRATION}


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


NAME = "price_total"


def test_tailer_stops_with_history_lost_and_never_skips_ahead(private_mongo, tmp_path):
    (tmp_path / "items.py").write_text(ITEMS_MIGRATION)
    host, port = private_mongo.address
    settings = Settings(mongodb_uri=f"mongodb://{host}:{port}/app?directConnection=true",
                        kafka_bootstrap_servers=KAFKA, transforms=tmp_path,
                        topic_prefix=f"t-hl-{uuid.uuid4().hex[:8]}",
                        group_prefix=f"g-hl-{uuid.uuid4().hex[:8]}", partitions=2)
    db = private_mongo.app
    seed_items(db.items, random.Random(3), 200)
    tail = CliProcess(settings, "tail", NAME)
    first = wait_for(lambda: part_of(db, NAME, "tail").get("resume_token"),
                     what="a saved resume token")
    db.items.insert_one({"_id": 500, "price": 2, "qty": 3, "legacy": True})
    wait_for(lambda: part_of(db, NAME, "tail").get("resume_token") != first,
             what="the tailer moving on")
    assert tail.stop() == 0
    saved = state_of(db, NAME)["tail"]["resume_token"]
    db.items.insert_many([{"_id": 1000 + i, "price": 1, "qty": 1, "legacy": True}
                          for i in range(50)])
    dropped = db.client.admin.command({"truncateChangeHistory": 1})

    again = run_cli("tail", NAME, settings=settings, timeout=60)

    assert dropped["droppedEvents"] >= 50
    assert again.returncode == 1, again.stderr
    error = again.stderr.strip().splitlines()[-1]
    assert error.startswith("cdc-migrator: the change stream of items can no longer resume")
    assert f"a new backfill is needed: `cdc-migrator reset {NAME}`" in error
    assert "Traceback" not in again.stderr
    state = state_of(db, NAME)
    assert state["phase"] == Phase.FAILED and state["tail"]["resume_token"] == saved
    # The way back the message names: reset, then the pipeline migrates everything.
    assert run_cli("reset", NAME, "--yes", settings=settings).returncode == 0
    rerun = run_cli("run", NAME, "--timeout", "60s", "-q", settings=settings)
    assert rerun.returncode == 0, rerun.stderr
    assert db.items.count_documents({"legacy": {"$exists": True}}) == 0
    assert db.items.count_documents({"total": {"$exists": True}}) == 251


EDITED_TOTAL = ITEMS_MIGRATION.replace('return {"total": total, "legacy": UNSET}',
                                       'return {"total": total, "legacy": UNSET, "v": 2}')


def test_a_tailer_of_other_code_holds_its_place_and_goes_on_once_its_code_is_accepted(
        db, settings, tmp_path):
    (tmp_path / "in_force").mkdir()
    (tmp_path / "edited").mkdir()
    (tmp_path / "in_force" / "items.py").write_text(ITEMS_MIGRATION)
    (tmp_path / "edited" / "items.py").write_text(EDITED_TOTAL)
    settings.transforms = tmp_path / "in_force"
    in_force = get_migration(tmp_path / "in_force", "price_total")
    edited = get_migration(tmp_path / "edited", "price_total")
    arm(settings, in_force)
    store = StateStore(db)
    tailer = Tailer(settings, edited)
    thread = threading.Thread(target=tailer.run, daemon=True)
    thread.start()
    try:
        def report() -> dict:
            members = part_of(db, "price_total", "code").get("members") or {}
            return next((r for m, r in members.items() if m.startswith("tailer@")), {})

        wait_for(lambda: report().get("holding"), what="the tailer holding")
        db.items.insert_many([{"_id": i, "price": i, "qty": 2, "legacy": True}
                              for i in range(5)])
        written = time.time()
        # The tailer reports again while it holds: after that, it had every chance to read
        # the inserts, and read none.
        wait_for(lambda: report().get("at", 0) > written, timeout=3 * CODE_REPORT_INTERVAL,
                 what="a report of the holding tailer after the inserts")
        assert part_of(db, "price_total", "counts").get("produced", 0) == 0
        assert part_of(db, "price_total", "tail").get("heartbeat") is None  # no stream opened
        assert store.accept("price_total", tailer.code.fingerprint,
                            previous=fingerprint(in_force, settings.schemas), armed=True)
        wait_for(lambda: part_of(db, "price_total", "counts").get("produced", 0) >= 5,
                 what="the inserts made while it held, produced from its place")
        assert not report().get("holding")
    finally:
        tailer.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert report() == {}  # it left


def test_a_migration_armed_by_a_version_that_recorded_no_code_takes_the_code_armed_next(
        db, items_settings):
    migration = get_migration(items_settings.transforms, "price_total")
    store = StateStore(db)
    store.ensure("price_total", "items")
    store.arm("price_total", db.command("ping")["operationTime"], None)  # as before 25 and 31
    assert store.get("price_total").code.fingerprint is None

    state = arm(items_settings, migration)

    assert state.code.fingerprint == fingerprint(migration, items_settings.schemas)


def test_a_getmore_after_a_small_batch_waits_at_most_the_window():
    trips = RoundTrips(window=0.02, enough=50)
    assert trips.pause(100.0) == 0  # nothing returned yet
    trips.returned(100.0, 3)  # a trickle: the next getMore waits for more to gather
    assert trips.pause(100.0) == pytest.approx(0.02)
    assert trips.pause(100.005) == pytest.approx(0.015)
    assert trips.pause(100.02) == 0 and trips.pause(250.0) == 0
    assert all(0 <= trips.pause(100.0 + i / 1000) <= 0.02 for i in range(-50, 50))
    trips.returned(101.0, 0)  # an empty batch: the server waited already
    assert trips.pause(101.0) == 0
    trips.returned(102.0, 50)  # a backlog: the next batch is there at once
    assert trips.pause(102.0) == 0
    one_by_one = RoundTrips(window=0.02, enough=1)  # the narrow modes: one event per batch
    one_by_one.returned(103.0, 1)
    assert one_by_one.pause(103.0) == 0


def test_trickled_writes_all_reach_the_topic_in_order_through_the_coalescing_wait(
        db, settings, tmp_path):
    """One write at a time, each once the tailer read the one before: every getMore returns a
    small batch, so the next one waits; every write still reaches the topic, in order."""
    from kafka import KafkaConsumer, TopicPartition

    (tmp_path / "accounts.py").write_text(FILTERED_MIGRATION)
    settings.transforms = tmp_path
    migration = get_migration(tmp_path, "add_tier")
    arm(settings, migration)
    tailer = Tailer(settings, migration)
    pauses: list[float] = []
    pause = tailer.round_trips.pause
    tailer.round_trips.pause = lambda now: pauses.append(pause(now)) or pauses[-1]
    thread = threading.Thread(target=tailer.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: tailer.position is not None, 60, "the tailer to follow the stream")
        for n in range(40):
            at = db["accounts"].insert_one({"_id": n, "n": n})
            written = db.client.admin.command("ping")["operationTime"]
            assert at.acknowledged
            wait_for(lambda written=written: tailer.position >= written, 30,
                     f"the tailer to read write {n}")
        wait_for(lambda: tailer.produced >= 40, 30, "every write produced")
    finally:
        tailer.stop()
        thread.join(30)
    assert any(p > 0 for p in pauses)  # the coalescing wait was taken
    assert all(p <= COALESCE_WINDOW for p in pauses)
    consumer = KafkaConsumer(enable_auto_commit=False, **topics.client_options(settings))
    try:
        tps = [TopicPartition(tailer.topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ids: dict[int, list] = {}
        while sum(len(v) for v in ids.values()) < 40:
            polled = consumer.poll(timeout_ms=5000)
            assert polled, "the topic holds fewer records than writes"
            for tp, records in polled.items():
                ids.setdefault(tp.partition, []).extend(
                    decode_key(r.key) for r in records)
    finally:
        consumer.close()
    assert sorted(i for v in ids.values() for i in v) == list(range(40))
    assert all(v == sorted(v) for v in ids.values())  # in write order within a partition
    for partition, keys in ids.items():
        assert all(partition_of(key_bytes(k), settings.partitions) == partition for k in keys)
