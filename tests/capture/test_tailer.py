"""The tailer's server-side filter: a migration's filter moved into the change stream."""

from __future__ import annotations

import pytest

from cdc_migrator.apply.applier import Applier
from cdc_migrator.base.identity import id_key
from cdc_migrator.base.naming import FENCE_COLLECTION
from cdc_migrator.capture.tailer import UNUSED_FIELDS, image_condition, stream_pipeline
from cdc_migrator.core.context import make_context
from cdc_migrator.core.patch import decide
from cdc_migrator.migration import Migration, filter_fields


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


def _add_tier(doc, ctx):
    if "tier" not in doc:
        return {"tier": "std"}


def _flag_active(doc, ctx):
    if "flag" not in doc:
        return {"flag": True}


def test_a_filter_the_guard_pins_is_left_out_of_the_write_and_still_holds(db):
    coll = db["accounts"]
    m = Migration(name="t", collection="accounts", transform=_add_tier,
                  filter={"tier": {"$exists": False}})
    applier = Applier(m, coll, make_context(db, "t"))
    op = applier._op(decide(m, {"_id": 1, "n": 1}, applier.ctx))
    assert "$and" not in op._filter and op._filter["tier"] == {"$exists": False}
    # The document left the filter after the image was taken: the guard alone refuses it.
    coll.insert_one({"_id": 1, "n": 1, "tier": "gold"})
    result = applier.apply_ids([1], {id_key(1): {"_id": 1, "n": 1}})
    assert result.updated == 0 and result.missing == 0
    assert coll.find_one({"_id": 1})["tier"] == "gold"


def test_a_filter_on_fields_the_transform_does_not_read_stays_in_the_write(db):
    coll = db["accounts"]
    m = Migration(name="t", collection="accounts", transform=_flag_active,
                  filter={"status": "active"})
    applier = Applier(m, coll, make_context(db, "t"))
    op = applier._op(decide(m, {"_id": 2, "status": "active"}, applier.ctx))
    assert op._filter["$and"][1] == {"status": "active"}
    # The application deactivated the document after the image was taken.
    coll.insert_one({"_id": 2, "status": "inactive"})
    result = applier.apply_ids([2], {id_key(2): {"_id": 2, "status": "active"}})
    assert result.updated == 0
    assert "flag" not in coll.find_one({"_id": 2})
