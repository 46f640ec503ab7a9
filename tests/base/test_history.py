"""Points in the change history: a resume token's cluster time (pure), and the point where a
stream opened now starts (against the local server)."""

from __future__ import annotations

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
