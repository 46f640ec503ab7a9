"""The tailer's server-side filter: a migration's filter moved into the change stream."""

from __future__ import annotations

import pytest

from cdc_migrator.migration import Migration
from cdc_migrator.tailer import FENCE_COLLECTION, image_condition, stream_pipeline


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
    assert len(stages) == 1, "only the namespace stage: the tailer checks every event itself"


def test_without_a_filter_only_the_namespaces_are_matched():
    assert stream_pipeline(_migration({})) == [
        {"$match": {"ns.coll": {"$in": ["users", FENCE_COLLECTION]}}}]


def test_with_a_filter_fences_deletes_and_events_without_a_document_always_pass():
    stages = stream_pipeline(_migration({"tier": {"$exists": False}}))
    assert len(stages) == 2
    either = stages[1]["$match"]["$or"]
    assert {"ns.coll": FENCE_COLLECTION} in either
    assert {"operationType": {"$nin": ["insert", "update", "replace"]}} in either
    assert {"fullDocument": None} in either
    assert {"fullDocument.tier": {"$exists": False}} in either
