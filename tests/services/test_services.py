"""The foundation: the local MongoDB server's change streams behave as the code expects of
MongoDB's."""

from __future__ import annotations

import threading
import time

import pymongo
from pymongo import monitoring

from ..harness import MONGO_BASE


def _drain(stream, n, limit=50):
    events = []
    for _ in range(limit):
        event = stream.try_next()
        if event is not None:
            events.append(event)
            if len(events) == n:
                break
    return events


def test_change_stream_reports_insert_update_delete_with_document_key(db):
    coll = db.things
    with coll.watch(full_document="updateLookup", max_await_time_ms=100) as stream:
        coll.insert_one({"_id": "a", "v": 1})
        coll.update_one({"_id": "a"}, {"$set": {"v": 2}})
        coll.delete_one({"_id": "a"})
        events = _drain(stream, 3)
    assert [e["operationType"] for e in events] == ["insert", "update", "delete"]
    assert [e["documentKey"] for e in events] == [{"_id": "a"}] * 3
    assert events[0]["fullDocument"] == {"_id": "a", "v": 1}
    assert events[1]["fullDocument"] in ({"_id": "a", "v": 2}, None)  # None: deleted by lookup time


def test_change_stream_match_on_the_looked_up_document_of_an_update(db):
    """A $match on fullDocument sees the document as looked up (the tailer's filter relies on
    it), drops the updates whose document does not match, and returns the rest whole."""
    coll = db.things
    coll.insert_many([{"_id": i, "n": i, "nested": {"tags": ["a"]}} for i in range(6)])
    pipeline = [{"$match": {"$or": [{"operationType": {"$ne": "update"}},
                                    {"fullDocument.done": {"$exists": False}}]}}]
    with coll.watch(pipeline, full_document="updateLookup", max_await_time_ms=100) as stream:
        coll.update_many({"_id": {"$in": [0, 2, 4]}}, {"$set": {"done": True}})
        coll.update_many({"_id": {"$in": [1, 3, 5]}}, {"$set": {"seen": 1}})
        coll.update_one({"_id": 99}, {"$set": {"x": 1}}, upsert=True)  # an insert: passes
        coll.delete_one({"_id": 1})
        events = _drain(stream, 5)
        assert stream.try_next() is None
    ops = [(e["operationType"], e["documentKey"]["_id"]) for e in events]
    assert ops == [("update", 1), ("update", 3), ("update", 5), ("insert", 99), ("delete", 1)]
    # Looked up when the stream read it: document 1 was already deleted then.
    assert events[0]["fullDocument"] is None
    assert events[1]["fullDocument"] == {"_id": 3, "n": 3, "nested": {"tags": ["a"]}, "seen": 1}


class _GetMores(monitoring.CommandListener):
    def __init__(self) -> None:
        self.empty = 0

    def started(self, event) -> None:
        pass

    def succeeded(self, event) -> None:
        if event.command_name == "getMore" and not event.reply["cursor"]["nextBatch"]:
            self.empty += 1

    def failed(self, event) -> None:
        pass


def test_an_awaiting_change_stream_passes_over_the_events_its_stages_drop(db):
    """As MongoDB's getMore does while it awaits data: writes the stream's $match drops (the
    consumer's own, for the tailer) do not answer it with one empty batch each."""
    listener = _GetMores()
    client = pymongo.MongoClient(MONGO_BASE, event_listeners=[listener])
    try:
        coll = client[db.name].things
        coll.insert_many([{"_id": i, "keep": False} for i in range(30)])
        pipeline = [{"$match": {"fullDocument.keep": True}}]
        with coll.watch(pipeline, full_document="updateLookup", max_await_time_ms=3000) as stream:
            stream.try_next()  # the first getMore: nothing yet, answered after 3 s
            listener.empty = 0

            def writes() -> None:
                for i in range(30):
                    db.things.update_one({"_id": i}, {"$set": {"n": i}})  # dropped
                    time.sleep(0.01)
                db.things.update_one({"_id": 0}, {"$set": {"keep": True}})  # passes

            writer = threading.Thread(target=writes)
            writer.start()
            event = None
            deadline = time.monotonic() + 20
            while event is None and time.monotonic() < deadline:
                event = stream.try_next()
            writer.join()
    finally:
        client.close()
    assert event is not None and event["documentKey"] == {"_id": 0}
    assert listener.empty <= 2, listener.empty  # the local server used to answer 30 times


def test_change_stream_resumes_after_token_without_losing_or_repeating(db):
    coll = db.things
    with coll.watch(max_await_time_ms=100) as stream:
        coll.insert_many([{"_id": i} for i in range(5)])
        first = _drain(stream, 3)
        token = first[-1]["_id"]
    coll.insert_many([{"_id": i} for i in range(5, 8)])
    with coll.watch(resume_after=token, max_await_time_ms=100) as stream:
        rest = _drain(stream, 5)
        assert stream.try_next() is None
    assert [e["documentKey"]["_id"] for e in first + rest] == list(range(8))


