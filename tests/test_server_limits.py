"""Real MongoDB behaviour that the local server used to forgive, and the tool's answer to each:
idle cursors die, collections are dropped and renamed, streams are invalidated, collations
loosen comparisons, collMod is refused, idle tailers must not write all the time, and the
change history runs out.

The local server now reproduces each of these where it can (see docs/testing.md); tests that
shorten the idle-cursor timeout or truncate the change history use a server of their own.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo import monitoring
from pymongo.errors import CursorNotFound, OperationFailure

from cdc_migrator import api
from cdc_migrator.apply.applier import Applier
from cdc_migrator.base import topics
from cdc_migrator.base.context import make_context
from cdc_migrator.base.identity import id_key
from cdc_migrator.base.retry import Retrier
from cdc_migrator.base.scanner import scan
from cdc_migrator.base.settings import Settings
from cdc_migrator.base.state import HEARTBEAT_INTERVAL, MigrationState, Phase
from cdc_migrator.capture.backfill import backfill
from cdc_migrator.capture.tailer import Tailer, arm
from cdc_migrator.errors import CaptureStopped, UsageError
from cdc_migrator.migration import Migration, get_migration
from cdc_migrator.operations import runway
from cdc_migrator.operations.schema import dialect_problems
from cdc_migrator.operations.status import migration_status

from .harness import (
    KAFKA,
    CliProcess,
    local_mongo_missing,
    part_of,
    run_cli,
    start_local_mongo,
    state_of,
    stop_local_mongo,
    wait_for,
)

CURSOR_TIMEOUT_MS = 600
ITEMS = textwrap.dedent('''
    from cdc_migrator import migration, UNSET

    @migration(collection="items", batch_size=5)
    def price_total(doc, ctx):
        total = doc["price"] * doc["qty"]
        if doc.get("total") != total or "legacy" in doc:
            return {"total": total, "legacy": UNSET}

    @migration(collection="not_there_yet")
    def early(doc, ctx):
        return None
''')


def local_mongo(home: Path, *properties: str) -> tuple[subprocess.Popen, Any]:
    """A LocalMongo of this test's own (JVM ``-D`` ``properties``) and a client for it."""
    missing = local_mongo_missing()
    if missing:
        pytest.skip(missing)
    return start_local_mongo(home, *properties)


@pytest.fixture(scope="module")
def short_cursors(tmp_path_factory):
    """A server whose idle cursors time out after CURSOR_TIMEOUT_MS."""
    proc, client = local_mongo(tmp_path_factory.mktemp("cursors"),
                                     f"-DcursorTimeoutMillis={CURSOR_TIMEOUT_MS}")
    yield client
    stop_local_mongo(proc, client)


def cursor_metrics(client) -> dict:
    return client.admin.command("serverStatus")["metrics"]["cursor"]


def private_settings(client, tmp_path: Path, **options: Any) -> Settings:
    host, port = client.address
    (tmp_path / "items.py").write_text(ITEMS)
    return Settings(mongodb_uri=f"mongodb://{host}:{port}/d{uuid.uuid4().hex[:8]}"
                                "?directConnection=true",
                    kafka_bootstrap_servers=KAFKA, transforms=tmp_path,
                    topic_prefix=f"t-sl-{uuid.uuid4().hex[:8]}",
                    group_prefix=f"g-sl-{uuid.uuid4().hex[:8]}", partitions=2, **options)


def seed(coll, n: int) -> None:
    coll.insert_many([{"_id": i, "price": i, "qty": 2, "legacy": True} for i in range(n)])


# ----------------------------------------------------------------- the local server, stricter

def test_an_idle_cursor_times_out_with_cursor_not_found_unless_opened_without_timeout(
        short_cursors):
    coll = short_cursors.limits.idle
    coll.insert_many([{"_id": i} for i in range(10)])
    before = cursor_metrics(short_cursors)["timedOut"]
    idle = coll.find(batch_size=2)
    kept = coll.find(batch_size=2, no_cursor_timeout=True)
    next(idle), next(kept)
    assert cursor_metrics(short_cursors)["open"]["noTimeout"] >= 1

    wait_for(lambda: cursor_metrics(short_cursors)["timedOut"] > before, timeout=10,
             what="the idle cursor timing out")

    with pytest.raises(CursorNotFound) as lost:
        list(idle)
    assert lost.value.code == 43
    assert len(list(kept)) == 9  # noCursorTimeout: still there


def test_a_change_stream_getmore_held_for_await_data_keeps_its_cursor_in_use(short_cursors):
    coll = short_cursors.limits.awaited
    before = cursor_metrics(short_cursors)["timedOut"]
    with coll.watch(max_await_time_ms=3 * CURSOR_TIMEOUT_MS) as stream:
        for _ in range(2):  # each held longer than the idle timeout
            assert stream.try_next() is None
        coll.insert_one({"_id": 1})
        assert stream.try_next()["documentKey"] == {"_id": 1}
    assert cursor_metrics(short_cursors)["timedOut"] == before


def test_set_parameter_sets_the_cursor_timeout_at_run_time(mongo_client):
    admin = mongo_client.admin
    assert admin.command({"getParameter": 1, "cursorTimeoutMillis": 1})[
        "cursorTimeoutMillis"] == 600_000
    try:
        assert admin.command({"setParameter": 1, "cursorTimeoutMillis": 12_345})["was"] == 600_000
        assert admin.command({"getParameter": 1, "cursorTimeoutMillis": 1})[
            "cursorTimeoutMillis"] == 12_345
    finally:
        admin.command({"setParameter": 1, "cursorTimeoutMillis": 600_000})
    with pytest.raises(OperationFailure) as unknown:
        admin.command({"setParameter": 1, "noSuchParameter": 1})
    assert unknown.value.code == 72
    with pytest.raises(OperationFailure) as elsewhere:
        mongo_client.app.command({"setParameter": 1, "cursorTimeoutMillis": 1})
    assert elsewhere.value.code == 13


def test_only_the_simple_collation_is_accepted(db):
    db.words.insert_many([{"_id": 1, "w": "Bob"}, {"_id": 2, "w": "BOB"}])
    simple = {"locale": "simple"}
    assert [d["_id"] for d in db.words.find({"w": "Bob"}, collation=simple)] == [1]
    updated = db.words.update_one({"w": "BOB"}, {"$set": {"n": 1}}, collation=simple)
    assert updated.matched_count == 1
    for refused in (lambda: db.create_collection("ci", collation={"locale": "en", "strength": 2}),
                    lambda: list(db.words.find({"w": "bob"}, collation={"locale": "en"})),
                    lambda: db.words.delete_one({"w": "bob"}, collation={"locale": "fr"})):
        with pytest.raises(OperationFailure, match="this test server has no collations"):
            refused()


def test_the_fail_command_fail_point_fails_the_named_command_as_often_as_asked(db):
    admin = db.client.admin
    admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                   "data": {"failCommands": ["collMod"], "errorCode": 13}})
    try:
        with pytest.raises(OperationFailure) as first:
            db.command("collMod", "anything")
        assert first.value.code == 13
        with pytest.raises(OperationFailure) as second:
            db.command("collMod", "anything")
        assert second.value.code == 59  # the fail point is spent: no validators here
    finally:
        admin.command({"configureFailPoint": "failCommand", "mode": "off"})


@pytest.mark.services  # a LocalMongo of its own
def test_the_oplog_window_is_read_from_local_oplog_rs_as_on_a_replica_set(tmp_path):
    proc, client = local_mongo(tmp_path)
    try:
        client.app.things.insert_one({"_id": 1})
        window, unknown = runway.history_window(client)
        assert unknown is None and window.newest >= window.oldest
        truncated = client.admin.command({"truncateChangeHistory": 1})
        after, _ = runway.history_window(client)
        assert after.oldest == truncated["oldestResumePoint"].time >= window.oldest
    finally:
        client.close()
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- idle cursors

def test_a_scan_reopens_after_the_last_document_read_when_its_cursor_timed_out(short_cursors):
    coll = short_cursors.limits[f"scan{uuid.uuid4().hex[:6]}"]
    coll.insert_many([{"_id": i} for i in range(10)])
    before = cursor_metrics(short_cursors)["timedOut"]
    batches = scan(coll, batch_size=3)
    seen = []
    for batch in batches:
        seen += [d["_id"] for d in batch]
        if len(seen) == 3:
            wait_for(lambda: cursor_metrics(short_cursors)["timedOut"] > before, timeout=10,
                     what="the scan's cursor timing out")
    assert seen == list(range(10))
    assert batches.reopened == 1


def test_a_paused_backfill_holds_no_cursor_and_finishes_after_resume(short_cursors, tmp_path):
    settings = private_settings(short_cursors, tmp_path)
    migration = get_migration(tmp_path, "price_total")
    seed(settings.db.items, 40)
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


def test_apply_at_a_rate_slower_than_the_cursor_timeout_migrates_every_document(short_cursors,
                                                                                tmp_path):
    settings = private_settings(short_cursors, tmp_path)
    seed(settings.db.items, 6)
    # Two documents per batch at 2/0.9 s: each getMore comes 0.9 s after the last, > 0.6 s.
    report = api.apply(settings, "price_total", batch_size=2, rate=2 / 0.9,
                       show_progress=False)
    assert report.scanned == 6 and report.result.updated == 6
    assert settings.db.items.count_documents({"legacy": {"$exists": True}}) == 0
    settings.close()


# -------------------------------------------------------------------------------- collation

class Recorder(monitoring.CommandListener):
    """Every command started, as (name, command document)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict]] = []

    def started(self, event) -> None:
        self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass

    def named(self, name: str) -> list[dict]:
        return [c for n, c in self.commands if n == name]


def _rename_or_drop(doc, ctx):
    if doc.get("gone"):
        from cdc_migrator import DELETE
        return DELETE
    if doc.get("slug") != doc["name"].lower():
        return {"slug": doc["name"].lower()}


def test_every_guarded_write_and_re_read_states_the_simple_collation(db, db_name):
    recorder = Recorder()
    client = pymongo.MongoClient(db.client.address[0], db.client.address[1],
                                 directConnection=True, event_listeners=[recorder])
    try:
        coll = client[db_name].people  # the applier's client: its commands are recorded
        db.people.insert_many([{"_id": 1, "name": "Bob"}, {"_id": 2, "name": "Ann"},
                               {"_id": 3, "name": "Old", "gone": True}])
        migration = Migration(name="slugs", collection="people", transform=_rename_or_drop,
                              filter={"name": {"$exists": True}})
        applier = Applier(migration, coll, make_context(client[db_name], "slugs"))
        # Document 1's image is stale (the application changed its name to BOB): its guard
        # misses, it is read again and written from the current value. 2 has no image: read.
        db.people.update_one({"_id": 1}, {"$set": {"name": "BOB"}})
        result = applier.apply_ids([1, 2, 3], {
            id_key(1): {"_id": 1, "name": "Bob"},
            id_key(3): {"_id": 3, "name": "Old", "gone": True}})
    finally:
        client.close()
    assert result.retried == 1 and result.updated == 2 and result.deleted == 1
    assert db.people.find_one({"_id": 1})["slug"] == "bob"
    simple = {"locale": "simple"}
    updates = [u for c in recorder.named("update") for u in c["updates"]]
    deletes = [d for c in recorder.named("delete") for d in c["deletes"]]
    reads = [c for c in recorder.named("find") if c["find"] == "people"]
    assert len(updates) == 3 and len(deletes) == 1 and len(reads) == 2
    assert all(statement.get("collation") == simple for statement in updates + deletes)
    assert all(read.get("collation") == simple for read in reads)


# -------------------------------------------------------------- drops, renames, invalidation

@pytest.fixture
def items_settings(settings, tmp_path):
    (tmp_path / "items.py").write_text(ITEMS)
    settings.transforms = tmp_path
    return settings


@pytest.mark.parametrize("change", ["drop", "rename", "rename onto"])
def test_a_dropped_or_renamed_collection_fails_its_migration_and_cutover_names_it(
        db, items_settings, change):
    settings = items_settings
    seed(db.items, 20)
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
    refused = run_cli("cutover", "price_total", "--timeout", "1", settings=settings)
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


# ------------------------------------------------------------------------------ idle writes

def test_an_idle_tailer_writes_its_state_only_at_the_heartbeat(db, items_settings):
    """Window: 20 idle polls of the change stream after the tailer's first checkpoint. Each
    idle getMore waits max_await_time_ms (200 ms) for an event, so the window is at least 4 s,
    20 times the 200 ms after which the old tailer wrote again on every poll; it is shorter than
    HEARTBEAT_INTERVAL, so the tailer may write its heartbeat once at most."""
    recorder = Recorder()
    settings = items_settings
    settings.mongo_options = {"event_listeners": [recorder]}
    seed(db.items, 5)
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


def test_status_counts_a_tailer_with_a_slow_heartbeat_as_running(db, items_settings):
    settings = items_settings
    migration = get_migration(settings.transforms, "price_total")
    seed(db.items, 3)
    arm(settings, migration)
    db.cdc_migrator_state.update_one({"_id": "price_total"}, {"$set": {
        "phase": "catching up", "backfill": {"done": True, "scanned": 3, "total": 3},
        "tail.heartbeat": time.time() - (HEARTBEAT_INTERVAL + 2)}})
    # Stored as version 1 wrote it ("catching up"): read as the same phase after an upgrade.
    stored = MigrationState.from_document(state_of(db, "price_total"))
    status = migration_status(settings, migration, stored)
    assert status["lag"]["total"] == 0
    assert status["phase"] == "ready for cutover"


# ------------------------------------------------------------------------------ history lost

@pytest.mark.services  # a LocalMongo of its own and the shared Kafka
def test_status_warns_of_lost_history_and_rebackfill_recovers_it(tmp_path):
    proc, client = local_mongo(tmp_path)
    try:
        settings = private_settings(client, tmp_path)
        db = settings.db
        seed(db.items, 30)
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


def test_the_runway_is_the_window_less_the_resume_points_age():
    window = runway.HistoryWindow(oldest=1000.0, newest=5000.0)
    fresh = runway.assess(window, position_time=4995.0, backfill_eta=None, now=5000.0)
    assert fresh["runway_seconds"] == 3995.0 and fresh["warnings"] == []
    stale = runway.assess(window, position_time=2500.0, backfill_eta=None, now=5000.0)
    assert stale["runway_seconds"] == 1500.0 and "runs out in about 25m00s" in stale["warnings"][0]
    long_backfill = runway.assess(window, position_time=4995.0, backfill_eta=5000.0, now=5000.0)
    assert "the backfill needs about 1h23m" in long_backfill["warnings"][0]
    gone = runway.assess(window, position_time=900.0, backfill_eta=None, now=5000.0)
    assert "cannot resume" in gone["warnings"][0]


# ------------------------------------------------------------------------- collMod, schemas

CONTRACTED = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="users", contract_schema="{schema}")
    def add_role(doc, ctx):
        if doc.get("role") is None:
            return {{"role": "user"}}
''')


def _contracted(settings, tmp_path, schema: dict) -> None:
    transforms = tmp_path / "transforms"
    transforms.mkdir(exist_ok=True)
    (tmp_path / "schemas").mkdir(exist_ok=True)
    (tmp_path / "schemas" / "users.contract.json").write_text(json.dumps(schema))
    (transforms / "users.py").write_text(CONTRACTED.format(schema="users.contract.json"))
    settings.transforms = transforms


GOOD_SCHEMA = {"bsonType": "object", "required": ["role"],
               "properties": {"role": {"enum": ["user", "admin"]}}}


def test_cutover_refuses_and_records_nothing_when_the_server_refuses_collmod(db, settings,
                                                                             tmp_path):
    _contracted(settings, tmp_path, GOOD_SCHEMA)
    db.users.insert_many([{"_id": i} for i in range(5)])
    assert run_cli("apply", "add_role", "-q", settings=settings).returncode == 0
    admin = db.client.admin
    admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                   "data": {"failCommands": ["collMod"], "errorCode": 13}})
    try:
        refused = run_cli("cutover", "add_role", settings=settings)
    finally:
        admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the server refused the contract schema users.contract.json" in refused.stdout
    assert "(collMod 13:" in refused.stdout
    assert state_of(db, "add_role")["phase"] != Phase.CUT_OVER
    # This server has no validators at all (59): that is no refusal, and cutover says so.
    done = run_cli("cutover", "add_role", settings=settings)
    assert done.returncode == 0, done.stdout
    assert "The server has no validators (59" in done.stdout
    assert state_of(db, "add_role")["phase"] == Phase.CUT_OVER


def test_a_contract_schema_mongodb_rejects_stops_cutover_before_it_writes(db, settings,
                                                                        tmp_path):
    _contracted(settings, tmp_path, {"bsonType": "object", "properties": {
        "role": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}})
    db.users.insert_many([{"_id": i} for i in range(5)])
    assert run_cli("apply", "add_role", "-q", settings=settings).returncode == 0
    before = state_of(db, "add_role")
    refused = run_cli("cutover", "add_role", settings=settings)
    assert refused.returncode == 2
    assert "type 'integer' is not supported by MongoDB" in refused.stderr
    assert "schema.properties.age" in refused.stderr and "Traceback" not in refused.stderr
    assert state_of(db, "add_role") == before
    assert "cdc_migrator_fences" not in db.list_collection_names()


def test_the_dialect_check_names_what_mongodb_rejects():
    assert dialect_problems(GOOD_SCHEMA) == []
    assert dialect_problems({"bsonType": ["int", "long"], "anyOf": [{"minimum": 1}],
                             "description": "ok"}) == []
    problems = dialect_problems({
        "$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
        "bsonType": "object", "definitions": {}, "properties": {
            "n": {"type": ["integer", "null"], "default": 0},
            "d": {"format": "date-time", "id": "x"},
            "k": {"bsonType": "uuid", "exclusiveMinimum": 1},
        }, "required": [], "additionalProperties": {"$ref": "#/x"}, "examples": []})
    expected = [
        "schema: keyword '$schema' is not supported by MongoDB",
        "schema: keyword 'definitions' is not supported by MongoDB",
        "schema: unknown keyword 'examples'",
        "schema: 'type' and 'bsonType' cannot both be given",
        "schema: 'required' must be a non-empty list of distinct names",
        "schema.properties.n: keyword 'default' is not supported by MongoDB",
        "schema.properties.n: type 'integer' is not supported by MongoDB (use bsonType 'int' "
        "or 'long', or ['int', 'long'])",
        "schema.properties.d: keyword 'format' is not supported by MongoDB",
        "schema.properties.d: keyword 'id' is not supported by MongoDB",
        "schema.properties.k: unknown bsonType 'uuid'",
        "schema.properties.k: 'exclusiveMinimum' must be true or false (draft 4)",
        "schema.properties.k: 'exclusiveMinimum' needs 'minimum'",
        "schema.additionalProperties: keyword '$ref' is not supported by MongoDB",
    ]
    assert problems == expected


def test_load_schema_refuses_a_schema_mongodb_rejects(settings, tmp_path):
    _contracted(settings, tmp_path, {"properties": {"x": {"type": "integer"}}})
    from cdc_migrator.operations.cutover import load_schema
    with pytest.raises(UsageError, match="not one MongoDB's \\$jsonSchema accepts"):
        load_schema(settings, "users.contract.json")

