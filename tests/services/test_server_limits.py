"""Real MongoDB behaviour that the local server used to forgive, reproduced by it: idle cursors
die, collations other than the simple one are refused, fail points fail commands, the change
history has a window (and can be truncated).

The tool's answer to each is tested beside the room that gives it (a scan reopening a lost
cursor in base/, a dropped collection stopping the tailer in capture/, ...). Tests that
shorten the idle-cursor timeout or truncate the change history use a server of their own.
"""

from __future__ import annotations

import pytest
from pymongo.errors import CursorNotFound, OperationFailure

from cdc_migrator.operations import runway

from ..harness import (
    CURSOR_TIMEOUT_MS,
    cursor_metrics,
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
