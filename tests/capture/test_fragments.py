"""A change event split by $changeStreamSplitLargeEvent, put together again; no position is
saved inside one (pure logic: the tailer's reading of a stream, with a stream of fragments)."""

from __future__ import annotations

import bson
import pytest
from bson.raw_bson import RawBSONDocument

from cdc_migrator.base.settings import Settings
from cdc_migrator.capture.fragments import Fragments
from cdc_migrator.capture.tailer import Checkpoint, Tailer
from cdc_migrator.errors import CaptureStopped
from cdc_migrator.migration import Migration


def raw(doc: dict) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(doc))


def fragments() -> list[RawBSONDocument]:
    return [raw({"_id": {"_data": "8201"}, "splitEvent": {"fragment": 1, "of": 3},
                 "operationType": "update", "fullDocument": {"_id": 1, "blob": "after"}}),
            raw({"_id": {"_data": "8202"}, "splitEvent": {"fragment": 2, "of": 3},
                 "fullDocumentBeforeChange": {"_id": 1, "blob": "before"}}),
            raw({"_id": {"_data": "8203"}, "splitEvent": {"fragment": 3, "of": 3},
                 "documentKey": {"_id": 1}, "ns": {"db": "d", "coll": "users"}})]


def test_the_fragments_of_an_event_are_one_event_with_the_last_ones_token():
    parts = Fragments()
    first, second, last = fragments()
    assert parts.add(first) is None and parts.pending
    assert parts.add(second) is None
    whole = parts.add(last)
    assert not parts.pending
    assert bson.decode(whole.raw) == {
        "_id": {"_data": "8203"}, "operationType": "update",
        "fullDocument": {"_id": 1, "blob": "after"},
        "fullDocumentBeforeChange": {"_id": 1, "blob": "before"},
        "documentKey": {"_id": 1}, "ns": {"db": "d", "coll": "users"}}
    plain = raw({"_id": {"_data": "8204"}, "operationType": "insert"})
    assert parts.add(plain) is plain


def test_fragments_out_of_order_stop_capture_and_a_forgotten_event_starts_over():
    first, second, last = fragments()
    with pytest.raises(CaptureStopped):
        Fragments().add(second)
    parts = Fragments()
    parts.add(first)
    with pytest.raises(CaptureStopped):
        parts.add(raw({"_id": {"_data": "8209"}, "operationType": "insert"}))
    parts.add(first)
    parts.forget()  # the stream opened again from the saved point
    assert parts.add(first) is None and parts.add(second) is None
    assert parts.add(last) is not None


class FragmentedStream:
    """A stream that answers a getMore with an empty batch between two fragments."""

    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.resume_token = None
        self.alive = True

    def try_next(self):
        change = self.answers.pop(0)
        if change is None:
            return None
        self.resume_token = change["_id"]  # the token after the last fragment returned
        return change


def test_no_position_is_saved_inside_a_split_event():
    migration = Migration(name="m", collection="users", transform=lambda d, c: None)
    tailer = Tailer(Settings(mongodb_uri="mongodb://127.0.0.1:1/d"), migration)
    checkpoint = Checkpoint(1, 0.2, 10.0)
    checkpoint.token = {"_data": "8100"}  # after the event before
    first, second, last = fragments()
    stream = FragmentedStream([first, None, second, last])

    assert tailer._next(stream, checkpoint) is None  # fragment 1, then nothing for now
    tailer._on_idle(stream, checkpoint)
    assert checkpoint.token == {"_data": "8100"}, "a token inside the event was kept"
    whole = tailer._next(stream, checkpoint)
    assert bson.decode(whole.raw)["_id"] == {"_data": "8203"}
    assert "fullDocumentBeforeChange" in whole
