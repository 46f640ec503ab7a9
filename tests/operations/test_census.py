"""census and verify --reversible: documents grouped by shape, the transform (and its inverse)
tried on each shape before any write."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import uuid

import pytest
from bson import Binary, Decimal128, Int64, ObjectId

from cdc_migrator import api
from cdc_migrator.core.patch import Outcome
from cdc_migrator.operations.reversible import applied, canonical, round_trip
from cdc_migrator.operations.shapes import shape_id, shape_of

from ..harness import run_cli

# ---------------------------------------------------------------------------- shapes (unit)


def test_a_shape_is_the_set_of_fields_and_their_bson_types_not_their_order_or_values():
    a = {"_id": 1, "name": "Ann", "age": 30}
    b = {"age": 99, "_id": 2, "name": "Bob"}
    assert shape_of(a) == shape_of(b) == "{_id: int, age: int, name: string}"
    assert shape_id(shape_of(a)) == shape_id(shape_of(b))
    assert len(shape_id(shape_of(a))) == 8


@pytest.mark.parametrize("left, right", [
    (1, Int64(1)),            # int32 and int64 are different BSON types
    (1, 1.0),
    (1, True),
    (1, Decimal128("1")),
    ("x", None),
    (b"x", Binary(b"x", 3)),  # binary subtypes apart: 3 and 4 hold UUIDs
    (uuid.uuid4(), Binary(b"0123456789abcdef", 3)),
    (ObjectId(), "5f0000000000000000000000"),
    (dt.datetime(2020, 1, 1, tzinfo=dt.UTC), 0),
])
def test_values_of_different_bson_types_make_different_shapes(left, right):
    assert shape_of({"_id": 1, "v": left}) != shape_of({"_id": 1, "v": right})


def test_a_shape_looks_one_level_into_documents_and_arrays_and_no_further():
    one = {"_id": 1, "address": {"city": "Oslo", "zip": 1234, "geo": {"lat": 1.0}},
           "tags": ["a", 2, "b"]}
    assert shape_of(one) == ("{_id: int, address: {city: string, geo: object, zip: int}, "
                             "tags: [int, string]}")
    deeper_differs = {**one, "address": {"city": "X", "zip": 1, "geo": {"lat": "north"}}}
    assert shape_of(deeper_differs) == shape_of(one)
    nested_differs = {**one, "address": {"city": "X", "zip": "1234", "geo": {}}}
    assert shape_of(nested_differs) != shape_of(one)
    assert shape_of({"_id": 1, "tags": []}) == "{_id: int, tags: []}"


def test_documents_differing_only_below_the_first_level_of_a_field_share_no_cached_shape():
    # shape_of caches shapes by the values' Python types: a binary's subtype and the types
    # inside a document or an array must still tell shapes apart.
    for left, right in [({"a": {"b": Binary(b"x", 3)}}, {"a": {"b": Binary(b"x", 5)}}),
                        ({"a": [Binary(b"x", 3)]}, {"a": [Binary(b"x", 5)]}),
                        ({"a": {"b": 1}}, {"a": {"b": "1"}}), ({"a": [1]}, {"a": ["1"]}),
                        ({"a": []}, {"a": {}}), ({"a": {"b": 1}}, {"a": {"c": 1}})]:
        assert shape_of(left) != shape_of(right), (left, right)
        assert shape_of({"a": 1, "b": "x"}) == shape_of({"b": "y", "a": 2})


def test_field_names_that_are_not_plain_are_quoted_in_a_shape():
    assert shape_of({"_id": 1, "price.usd": 2, "$x": 1}) == \
        '{"$x": int, _id: int, "price.usd": int}'


def test_the_round_trip_sets_top_level_field_order_aside_but_not_nested_order():
    doc = {"_id": 1, "full_name": "Ada Lovelace", "age": 36}
    moved = {"_id": 1, "age": 36, "full_name": "Ada Lovelace"}
    assert canonical(doc) == canonical(moved)
    nested = {"_id": 1, "a": {"x": 1, "y": 2}}
    assert canonical(nested) != canonical({"_id": 1, "a": {"y": 2, "x": 1}})
    outcome = Outcome("update", 1, set={"first": "Ada", "age": 37}, unset=("full_name",))
    assert list(applied(doc, outcome)) == ["_id", "age", "first"]


def test_the_shipped_split_full_name_comes_back_for_every_kind_of_name(settings):
    from cdc_migrator.core.context import make_context

    forward = api.load(settings, "split_full_name")
    reverse = api.load(settings, "split_full_name-revert")
    assert reverse.transform.__name__ == "join_full_name" and reverse.filter == {}
    ctx = make_context(None, "split_full_name", dry_run=True)
    for name in ["Ada Lovelace", "Ada", "Ada ", " Ada", "", "Ada King  Lovelace", "Ünïcode ñ"]:
        assert round_trip(forward, reverse, {"_id": 1, "full_name": name}, ctx) is None, name
    assert round_trip(forward, reverse, {"_id": 1, "full_name": 7}, ctx) is None
    # Both shapes in one document: the split fields cannot survive the way back.
    both = {"_id": 1, "full_name": "Ada Lovelace", "first_name": "Ada", "last_name": "L"}
    assert "first_name lost" in round_trip(forward, reverse, both, ctx)


def test_down_declares_the_inverse_once_and_returns_the_plain_function():
    from cdc_migrator import migration
    from cdc_migrator.errors import UsageError
    from cdc_migrator.migration import _defined

    @migration(collection="c")
    def up(doc, ctx):
        return None

    @up.down
    def back(doc, ctx):
        return {"x": 1}

    _defined.remove(up)  # defined here, never loaded from a transforms directory
    assert up.inverse is back and back({}, None) == {"x": 1}
    with pytest.raises(UsageError, match="twice"):
        up.down(back)


# ---------------------------------------------------------------------------- on the services

RARE_SHAPE = textwrap.dedent('''
    from cdc_migrator import migration, UNSET

    @migration(collection="people", contract_schema="people.contract.json")
    def split_name(doc, ctx):
        first, last = doc["name"].split(" ", 1)   # raises on a name without a space
        ctx.db.audit.insert_one({"person": doc["_id"]})
        return {"first_name": first, "last_name": last, "name": UNSET}

    @migration(collection="people")
    def bad_patch(doc, ctx):
        if "nick" in doc:
            return {"$set": {"x": 1}}
        return None

    @migration(collection="people")
    def lossy(doc, ctx):
        if "name" in doc:
            return {"first_name": doc["name"].split(" ")[0], "name": UNSET}

    @lossy.down
    def lossy_back(doc, ctx):
        if "first_name" in doc:
            return {"name": doc["first_name"], "first_name": UNSET}
''')


@pytest.fixture
def people(db, settings, tmp_path):
    transforms = tmp_path / "transforms"
    transforms.mkdir()
    (transforms / "people.py").write_text(RARE_SHAPE)
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "people.contract.json").write_text(json.dumps({
        "bsonType": "object", "required": ["first_name", "last_name"],
        "properties": {"last_name": {"bsonType": "string", "minLength": 2}}}))
    settings.transforms = transforms
    docs = [{"_id": i, "name": f"Person {i:04d}", "age": i % 90} for i in range(3000)]
    docs[1717] = {"_id": 1717, "name": "Cher", "age": 77}  # the one rare shape: no space
    docs[2024] = {"_id": 2024, "name": "Ann Li", "age": Int64(3)}  # another shape, fine
    docs[42] = {"_id": 42, "name": "Bo X", "age": 1, "nick": "b"}  # short last name
    db.people.insert_many(docs)
    return db.people


def _shapes(report: dict) -> dict[str, dict]:
    return {s["shape"]: s for s in report["shapes"]}


def test_census_json_counts_each_shape_names_a_contract_break_and_writes_nothing(
        settings, people, db):
    before = list(people.find().sort("_id", 1))
    result = run_cli("census", "split_name", "--json", settings=settings)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    shapes = _shapes(report)
    common = shapes["{_id: int, age: int, name: string}"]
    # Cher shares the common shape: a rare *value* inside a shape is for `verify`, which
    # runs the transform on every document; census samples each shape.
    assert common["count"] == 2998 and common["verdict"] == "would change"
    nick = shapes["{_id: int, age: int, name: string, nick: string}"]
    assert nick["count"] == 1 and not nick["ok"]
    assert nick["verdict"] == "breaks the contract schema"
    assert "last_name is shorter than 2" in nick["problem"]["error"]
    long_age = shapes["{_id: int, age: long, name: string}"]
    assert long_age["count"] == 1 and long_age["ok"]
    assert common["side_writes"] and "audit.insert_one" in common["side_writes"][0]
    assert report["documents"] == 3000 and report["bad_shapes"] == [nick["id"]]
    assert list(people.find().sort("_id", 1)) == before
    assert "audit" not in db.list_collection_names()
    assert "cdc_migrator_state" not in db.list_collection_names()


def test_census_names_a_rare_shape_that_raises_and_exits_1(settings, people):
    people.update_one({"_id": 1717}, {"$set": {"name": "Cher", "alias": True}})
    result = run_cli("census", "split_name", settings=settings)
    assert result.returncode == 1, result.stdout + result.stderr
    rare = shape_id(shape_of({"_id": 1, "age": 1, "alias": True, "name": "x"}))
    first = result.stdout.splitlines()[0]
    assert f"{rare} (raises)" in first
    assert "e.g. _id 1717: ValueError: not enough values to unpack" in result.stdout
    assert "Traceback" not in result.stderr


def test_census_counts_of_a_collection_in_one_shape_exit_0(settings, people):
    people.delete_many({"_id": {"$in": [42, 1717, 2024]}})
    report = api.census(settings, "split_name")
    assert report.ok and [(s.count, s.sampled) for s in report.shapes] == [(2997, 5)]
    assert report.shapes[0].reversible is None  # no inverse declared
    result = run_cli("census", "split_name", "--per-shape", "2", settings=settings)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2,997 documents of people in 1 shapes; every shape is fine" in result.stdout


def test_census_exits_1_naming_an_invalid_patch(settings, people):
    result = run_cli("census", "bad_patch", "--json", settings=settings)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    (bad,) = [s for s in report["shapes"] if not s["ok"]]
    assert bad["verdict"] == "invalid patch" and bad["problem"]["id"] == 42
    assert report["bad_shapes"] == [bad["id"]]


def test_census_says_when_more_shapes_exist_than_it_tracks(settings, people):
    people.insert_many([{"_id": 10_000 + i, f"f{i}": 1, "name": "A B"} for i in range(5)])
    report = api.census(settings, "split_name", max_shapes=3)
    assert len(report.shapes) == 3 and report.untracked == 3005 - sum(
        s.count for s in report.shapes)
    assert report.untracked > 0 and not report.ok
    assert "not sampled (raise --max-shapes)" in report.summary()


def test_census_reports_reversibility_per_shape_when_an_inverse_exists(settings, people):
    report = api.census(settings, "lossy")
    by_shape = {s.shape: s for s in report.shapes}
    common = by_shape["{_id: int, age: int, name: string}"]
    assert common.reversible is False and "name 'Person" in common.irreversible
    result = run_cli("census", "lossy", settings=settings)
    assert "NOT reversible" in result.stdout


def test_verify_reversible_fails_naming_the_shapes_a_lossy_inverse_does_not_give_back(
        settings, people):
    result = run_cli("verify", "lossy", "--reversible", "--per-shape", "2", settings=settings)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOT reversible: 3 of 3 shapes do not come back" in result.stdout
    common = shape_id("{_id: int, age: int, name: string}")
    assert common in result.stdout
    assert "came back as 'Person'" in result.stdout


def test_verify_reversible_passes_for_an_exact_inverse(settings, db):
    db.people.insert_many([
        {"_id": 1, "full_name": "Ada Lovelace"}, {"_id": 2, "full_name": "Cher"},
        {"_id": 3, "full_name": "Ada ", "tags": ["x"]}, {"_id": 4, "full_name": 12},
        {"_id": 5, "other": True}])
    result = run_cli("verify", "split_full_name", "--reversible", "--json", settings=settings)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["checked"] == 5 and len(report["shapes"]) == 4
    assert db.people.find_one({"_id": 1}) == {"_id": 1, "full_name": "Ada Lovelace"}
    db.people.insert_one({"_id": 6, "full_name": "A B", "first_name": "A", "last_name": "B"})
    result = run_cli("verify", "split_full_name", "--reversible", settings=settings)
    assert result.returncode == 1
    assert "1 of 5 shapes do not come back" in result.stdout and "first_name lost" in \
        result.stdout


def test_verify_reversible_refuses_a_migration_without_an_inverse(settings, people):
    result = run_cli("verify", "split_name", "--reversible", settings=settings)
    assert result.returncode == 2
    assert "declares no inverse" in result.stderr and "Traceback" not in result.stderr
