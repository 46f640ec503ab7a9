"""Points in the change history: a resume token's cluster time (pure), and the point where a
stream opened now starts (against the local server)."""

from __future__ import annotations

import threading

import bson
from bson import Timestamp
from bson.raw_bson import RawBSONDocument

from cdc_migrator.base import history


def test_a_resume_tokens_time_is_its_first_keystring_value():
    # An event's token and a high-water mark as MongoDB 6.0 sends them: "82", then seconds and
    # increment of the cluster time, then what only the server reads.
    event = {"_data": "8263A1B3C4000000042B022C0100296E5A1004A5093ABB38FE4B9EA67F01BB1A96D81"
                      "2463C5F6964003C2D3F0004"}
    high_water_mark = {"_data": "8263A1B3C5000000012B0229296E04"}
    assert history.token_time(event) == Timestamp(0x63A1B3C4, 4)
    assert history.token_time(high_water_mark) == Timestamp(0x63A1B3C5, 1)
    assert history.token_time(RawBSONDocument(bson.encode(high_water_mark))) == \
        Timestamp(0x63A1B3C5, 1)


def test_a_token_that_does_not_say_its_time_gives_none():
    for token in ({"_data": bson.Binary(b"\x82" + bytes(9))}, {"_data": "0163A1B3C4000000"},
                  {"_data": "82zz"}, {"_data": "82XYZ3C4000000012B"}, {}, None):
        assert history.token_time(token) is None


def test_a_stream_opened_now_starts_at_the_last_write(db):
    db.items.insert_one({"_id": 1})
    last = db.command("ping")["operationTime"]

    token, at = history.stream_start(db, [{"$match": {"ns.coll": "items"}}])

    assert at >= last and history.token_time(token) == at
    with db.watch(resume_after=token) as stream:
        db.items.insert_one({"_id": 2})
        assert stream.next()["documentKey"] == {"_id": 2}



def test_a_stream_opened_under_writes_still_gives_its_point(db):
    # Regression: a first reply that carried events (the local server sends them under
    # writes; MongoDB may too) left pymongo without a token, and arming failed with "the
    # change stream's first reply has no postBatchResumeToken", about one open in 20 here.
    stop, written = threading.Event(), [0]

    def write() -> None:
        while not stop.is_set():
            db.items.insert_one({"n": written[0]})
            written[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        points = [history.stream_start(db, [{"$match": {"ns.coll": "items"}}])
                  for _ in range(200)]
    finally:
        stop.set()
        writer.join()

    assert written[0] > 200  # the opens ran under writes
    assert all(history.token_time(token) == at for token, at in points)
    with db.watch(resume_after=points[-1][0]) as stream:  # a point the stream resumes from
        db.items.insert_one({"_id": "last"})
        while stream.next()["documentKey"]["_id"] != "last":  # the writes after the point
            pass
