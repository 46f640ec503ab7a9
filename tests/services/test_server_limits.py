"""Real MongoDB behaviour that the local server used to forgive, reproduced by it: idle cursors
die, collations other than the simple one are refused, fail points fail commands, the change
history has a window (and can be truncated), a change event over 16 MiB fails, pre-images are
kept only where enabled; and what it does as MongoDB does: mixed _id types in BSON order, a
range of _id read from the _id index, a uniform $sample.

The tool's answer to each is tested beside the room that gives it (a scan reopening a lost
cursor in base/, a dropped collection stopping the tailer in capture/, ...). Tests that
shorten the idle-cursor timeout or truncate the change history use a server of their own.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import pymongo
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pymongo.errors import CursorNotFound, OperationFailure

from cdc_migrator.base.bsontypes import after_filter
from cdc_migrator.base.codec import CODEC_OPTIONS
from cdc_migrator.capture.leases import (
    KeyRange,
    range_filter,
    split,
    split_points,
)
from cdc_migrator.operations import runway

from ..harness import (
    CURSOR_TIMEOUT_MS,
    cursor_metrics,
    examples,
    local_mongo,
    wait_for,
)


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


@pytest.mark.local_server("setParameter: a parameter of the whole server")
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


@pytest.mark.local_server("the local server's refusal of collations")
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


@pytest.mark.local_server("failCommand; and collMod answers 59 (no validators) here")
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
@pytest.mark.local_server("truncateChangeHistory, on a LocalMongo of its own")
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


def test_the_local_server_keeps_pre_images_only_where_they_are_enabled(db):
    db.create_collection("kept", changeStreamPreAndPostImages={"enabled": True})
    db.plain.insert_one({"_id": 1, "v": 1})
    db.kept.insert_one({"_id": 1, "v": 1})
    options = {c["name"]: c.get("options") or {} for c in db.list_collections()}
    assert options["kept"]["changeStreamPreAndPostImages"] == {"enabled": True}
    assert "changeStreamPreAndPostImages" not in options["plain"]
    with pytest.raises(Exception, match="ns does not exist"):
        db.command("collMod", "missing", changeStreamPreAndPostImages={"enabled": True})
    with pytest.raises(Exception, match="enabled' is missing"):
        db.command("collMod", "plain", changeStreamPreAndPostImages={})
    with db.watch(full_document_before_change="whenAvailable") as stream:
        for name in ("plain", "kept"):
            db[name].update_one({"_id": 1}, {"$set": {"v": 2}})
            db[name].replace_one({"_id": 1}, {"v": 3})
            db[name].delete_one({"_id": 1})
        seen = [(c["ns"]["coll"], c["operationType"], c["fullDocumentBeforeChange"])
                for c in (stream.next() for _ in range(6))]
    assert seen == [("plain", "update", None), ("plain", "replace", None),
                    ("plain", "delete", None),
                    ("kept", "update", {"_id": 1, "v": 1}), ("kept", "replace", {"_id": 1, "v": 2}),
                    ("kept", "delete", {"_id": 1, "v": 3})]
    db.command("collMod", "plain", changeStreamPreAndPostImages={"enabled": True})
    db.plain.insert_one({"_id": 2, "v": 1})
    with db.watch(full_document_before_change="whenAvailable") as stream:
        db.plain.delete_one({"_id": 2})
        assert stream.next()["fullDocumentBeforeChange"] == {"_id": 2, "v": 1}


# The _id types whose ranges the local server reads from its _id index (SortedIdIndex.java);
# a collection holding any other _id type is scanned whole, as the stock server does.
narrow_ids = st.one_of(
    st.binary(min_size=12, max_size=12).map(ObjectId),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=3),
    st.uuids(),
    st.booleans(),
    st.integers(min_value=-2_000_000_000_000, max_value=4_000_000_000_000).map(
        lambda ms: dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)),
)


TYPE_ALIASES = ["string", "binData", "objectId", "bool", "date", "number", "object", "null"]


@st.composite
def id_queries(draw, ids):
    """A query bounding _id as the tool's scans do, or as a user's filter might."""
    def bound():
        return draw(st.sampled_from(ids) if ids and draw(st.booleans()) else narrow_ids)

    kind = draw(st.sampled_from(["range", "after", "ops", "type", "or", "and", "eq"]))
    if kind == "range":
        has_lo, has_hi = draw(st.booleans()), draw(st.booleans())
        return range_filter(KeyRange(lo=bound() if has_lo else None, hi=bound() if has_hi else None,
                                     has_lo=has_lo, has_hi=has_hi))
    if kind == "after":
        return after_filter(bound())
    if kind == "ops":
        ops = draw(st.lists(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), min_size=1,
                            max_size=2, unique=True))
        return {"_id": {op: bound() for op in ops}, "v": {"$exists": True}}
    if kind == "type":
        return {"_id": {"$type": draw(st.lists(st.sampled_from(TYPE_ALIASES), min_size=1,
                                               max_size=3, unique=True))}}
    if kind == "eq":
        return {"_id": bound(), "v": {"$gte": 0}}
    return {f"${kind}": [draw(id_queries(ids)), draw(id_queries(ids))]}


@pytest.fixture(scope="module")
def twin_collections(mongo_client):
    """Two collections, the second holding one numeric _id more (a numeric _id turns the
    narrowing off, so the server answers there by scanning every document)."""
    name = f"t_narrow_{uuid.uuid4().hex[:8]}"
    database = mongo_client.get_database(name, codec_options=CODEC_OPTIONS)
    yield database.narrowed, database.scanned
    mongo_client.drop_database(name)


@pytest.mark.services
@hypothesis_settings(max_examples=examples(150), deadline=None,
                     suppress_health_check=[HealthCheck.too_slow,
                                            HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_query_bounding_the_id_matches_what_a_scan_of_every_document_matches(
        twin_collections, data):
    narrowed, scanned = twin_collections
    ids = data.draw(st.lists(narrow_ids, max_size=25, unique_by=lambda i: (type(i), i)),
                    label="ids")
    for coll in (narrowed, scanned):
        coll.delete_many({})
        if ids:
            coll.insert_many([{"_id": i, "v": n} for n, i in enumerate(ids)])
    scanned.insert_one({"_id": 123456789, "v": -1})
    for _ in range(4):
        query = data.draw(id_queries(ids), label="query")
        found = [d["_id"] for d in narrowed.find(query, sort=[("_id", 1)])]
        expected = [d["_id"] for d in scanned.find(query, sort=[("_id", 1)]) if d["v"] != -1]
        assert repr(found) == repr(expected), query
        touched = narrowed.update_many(query, {"$inc": {"hits": 1}}).matched_count
        assert touched == len(expected), query


@pytest.mark.services
def test_a_range_of_ids_is_read_from_the_id_index_not_by_scanning_the_collection(settings):
    coll = settings.db.ranged
    coll.insert_many([{"fullName": "Ada Lovelace"} for _ in range(6_400)])
    ids = [d["_id"] for d in coll.find({}, {"_id": 1}, sort=[("_id", 1)])]
    third = split([ids[2_000], ids[2_200]])[1]

    def scanned(query) -> tuple[int, int]:
        before = settings.client.admin.command("serverStatus")["metrics"]["queryExecutor"]
        found = len(list(coll.find(query, sort=[("_id", 1)])))
        after = settings.client.admin.command("serverStatus")["metrics"]["queryExecutor"]
        return found, after["scannedObjects"] - before["scannedObjects"]

    # MongoDB reads a range of _id from its _id index; the local server used to read every
    # document for each of a backfill's 32 ranges. Other queries run meanwhile (the shared
    # server), so the count has slack, not 6,400 of it.
    found, read = scanned({"$and": [{"fullName": {"$exists": True}}, range_filter(third)]})
    assert found == 200 and read < 1_000, read
    found, read = scanned({"fullName": {"$exists": True}})
    assert found == 6_400 and read >= 6_400, read


@pytest.mark.services
def test_sample_is_uniform_so_the_ranges_come_out_about_equal(settings):
    coll = settings.db.many
    for start in range(0, 60_000, 10_000):
        coll.insert_many([{"_id": i} for i in range(start, start + 10_000)])

    points = split_points(coll, None, 32)  # a $sample of 640, sorted by the server

    assert len(points) == 31 and points == sorted(points)
    gaps = [b - a for a, b in zip([0, *points], [*points, 60_000], strict=True)]
    assert max(gaps) < 3 * 60_000 / 32, gaps  # the stock server's samples crowd the start


MIB = 1 << 20


def test_the_local_server_fails_a_change_event_over_its_limit_as_mongodb_does(db):
    db.big.insert_one({"_id": 1, "a": os.urandom(8 * MIB), "b": os.urandom(8 * MIB - 100)})
    stream = db.big.watch(full_document="updateLookup", max_await_time_ms=100)
    before = stream.resume_token
    # The update's description repeats the new 8 MiB beside the looked-up 16 MiB document.
    db.big.update_one({"_id": 1}, {"$set": {"a": os.urandom(8 * MIB)}})
    with pytest.raises(pymongo.errors.OperationFailure) as getmore:
        stream.try_next()
    assert getmore.value.code == 10334
    assert "BSONObj size: " in str(getmore.value)
    assert "is invalid. Size must be between 0 and 16793600(16MB)" in str(getmore.value)
    with pytest.raises(pymongo.errors.OperationFailure) as resumed:
        db.big.watch(full_document="updateLookup", resume_after=before).try_next()
    assert resumed.value.code == 10334  # forever: resuming from before meets it again
    asked_less = db.big.watch([{"$unset": ["updateDescription"]}],
                              full_document="updateLookup", resume_after=before)
    assert asked_less.try_next()["operationType"] == "update"
