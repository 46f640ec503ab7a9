"""The pure logic of migrating one document: what a transform read, what it changes, and the
guard that makes the write safe. Fast unit tests and property tests; one test asks the real
server whether it evaluates a guard as :func:`matches_guard` does.
"""

from __future__ import annotations

import datetime as dt
import math

import bson
import pytest
from bson.int64 import Int64
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdc_migrator import DELETE, UNSET, PatchError, migration
from cdc_migrator.core.patch import (
    Outcome,
    RecordingDocument,
    decide,
    guard_filter,
    same_value,
    validate_patch,
)
from cdc_migrator.migration import _defined
from cdc_migrator.testing import apply_to, matches_guard

from ..harness import examples


def make(fn, collection: str = "things"):
    """A Migration from a plain function, without leaving it in the loader's registry."""
    m = migration(collection=collection)(fn)
    _defined.remove(m)
    return m


def stored(doc):
    """The document as the server would return it after storing it (Int64 for large ints...)."""
    return None if doc is None else bson.decode(bson.encode(doc))


# --------------------------------------------------------------------------- RecordingDocument


def test_recording_document_notes_each_field_read_by_get_item_and_contains():
    view = RecordingDocument({"_id": 1, "a": 1, "b": None, "c": 3})
    assert view["a"] == 1
    assert view.get("b") is None and view.get("zz", 5) == 5
    assert "c" in view and "missing" not in view
    with pytest.raises(KeyError):
        view["absent"]
    assert view.fields_read() == {"a", "b", "zz", "c", "missing", "absent"}
    assert not view.read_all


def test_recording_document_iteration_reads_every_field():
    for use in (list, dict, len, lambda v: list(v.items()), lambda v: {**v}):
        view = RecordingDocument({"_id": 1, "a": 1, "b": 2})
        view.get("not_there")
        use(view)
        assert view.read_all
        assert view.fields_read() == {"_id", "a", "b", "not_there"}


def test_recording_document_is_read_only():
    view = RecordingDocument({"a": 1})
    with pytest.raises(TypeError):
        view["a"] = 2  # type: ignore[index]


# --------------------------------------------------------------------------- decide


def test_decide_noop_when_the_transform_returns_none_or_an_empty_patch():
    doc = {"_id": 1, "a": 1}
    assert decide(make(lambda d, c: None), doc, None).kind == "noop"
    assert decide(make(lambda d, c: {}), doc, None).kind == "noop"


def test_decide_setting_an_equal_value_or_unsetting_an_absent_field_is_a_noop():
    doc = {"_id": 1, "a": 1, "s": "x", "sub": {"k": [1, 2]}}
    m = make(lambda d, c: {"a": 1, "s": "x", "sub": {"k": [1, 2]}, "gone": UNSET})
    outcome = decide(m, doc, None)
    assert outcome == Outcome("noop", 1)


def test_decide_keeps_only_the_effective_part_of_a_patch_and_pins_read_and_written_fields():
    doc = {"_id": 7, "same": 1, "old": "x", "drop": True, "input": 3}

    def transform(d, ctx):
        return {"same": 1, "new": d["input"] * 2, "drop": UNSET, "absent": UNSET}

    outcome = decide(make(transform), doc, None)
    assert outcome.kind == "update"
    assert outcome.set == {"new": 6}
    assert outcome.unset == ("drop",)
    assert outcome.update == {"$set": {"new": 6}, "$unset": {"drop": ""}}
    pinned = set(outcome.guard) - {"_id", "$expr"}
    assert pinned == {"same", "new", "drop", "absent", "input"}  # not "old": never read
    assert apply_to(doc, outcome) == {"_id": 7, "same": 1, "old": "x", "input": 3, "new": 6}


@pytest.mark.parametrize("stored_value, patched, kind", [
    (1, 1, "noop"),
    (1, 1.0, "update"),
    (1.0, 1, "update"),
    (1, True, "update"),
    (True, 1, "update"),
    (0, False, "update"),
    (1.5, 1.5, "noop"),
    (None, None, "noop"),
    ("1", 1, "update"),
    ({"x": 1}, {"x": 1.0}, "update"),
    ({"x": 1, "y": 2}, {"y": 2, "x": 1}, "update"),  # BSON sub-documents are ordered
    ([1, 2], [1, 2], "noop"),
    ([1, 2], [2, 1], "update"),
    ([1], [True], "update"),
])
def test_decide_compares_values_strictly_by_type_and_value(stored_value, patched, kind):
    doc = {"_id": 1, "f": stored_value}
    assert decide(make(lambda d, c: {"f": patched}), doc, None).kind == kind


def test_decide_a_value_equal_to_the_stored_int64_is_a_noop():
    # The server returns int64 values as Int64; a transform computes a plain int.
    doc = stored({"_id": 1, "size": 2**40})
    assert type(doc["size"]) is Int64
    assert decide(make(lambda d, c: {"size": 2**40}), doc, None).kind == "noop"


def test_decide_setting_nan_where_nan_is_stored_is_a_noop():
    doc = {"_id": 1, "score": math.nan}
    assert decide(make(lambda d, c: {"score": math.nan}), doc, None).kind == "noop"


def test_decide_delete_pins_the_fields_the_transform_read():
    outcome = decide(make(lambda d, c: DELETE if d.get("orphan") else None),
                     {"_id": 2, "orphan": True, "x": 1}, None)
    assert outcome.kind == "delete"
    assert outcome.guard == {"_id": 2, "orphan": {"$eq": True, "$not": {"$type": "array"}}}
    assert apply_to({"_id": 2}, outcome) is None


def test_decide_reports_a_transform_that_raises_as_an_error_outcome():
    def transform(d, ctx):
        raise ValueError(f"bad value {d['a']}")

    outcome = decide(make(transform), {"_id": 3, "a": 9}, None)
    assert outcome.kind == "error" and outcome.id == 3
    assert outcome.error == "ValueError: bad value 9"
    assert "ValueError: bad value 9" in outcome.traceback and "transform" in outcome.traceback
    assert apply_to({"_id": 3, "a": 9}, outcome) == {"_id": 3, "a": 9}


def test_decide_sees_a_change_made_by_editing_a_nested_value_in_place():
    def transform(d, ctx):
        settings_ = d["settings"]
        settings_["theme"] = "dark"
        return {"settings": settings_}

    doc = {"_id": 1, "settings": {"theme": "light"}}
    outcome = decide(make(transform), doc, None)
    assert outcome.kind == "update" and outcome.set == {"settings": {"theme": "dark"}}


# --------------------------------------------------------------------------- validate_patch


@pytest.mark.parametrize("result, message", [
    ([("a", 1)], "returned list"),
    ("a", "returned str"),
    (1, "returned int"),
    ({"$set": {"a": 1}}, "'$set'"),
    ({"a.b": 1}, "'a.b'"),
    ({"": 1}, "''"),
    ({1: "x"}, "1"),
    ({"_id": 5}, "_id is immutable"),
])
def test_validate_patch_rejects_what_is_not_a_patch_with_a_message_naming_it(result, message):
    m = make(lambda d, c: result)
    with pytest.raises(PatchError) as info:
        validate_patch(result, m)
    assert message in str(info.value) and repr(m.name) in str(info.value)
    with pytest.raises(PatchError):
        decide(m, {"_id": 1}, None)


def test_validate_patch_accepts_none_delete_and_mappings():
    m = make(lambda d, c: None)
    assert validate_patch(None, m) is None
    assert validate_patch(DELETE, m) is None
    assert validate_patch({"a": UNSET, "b": [1]}, m) == {"a": UNSET, "b": [1]}


def test_validate_patch_rejects_a_value_bson_cannot_encode():
    m = make(lambda d, c: {"day": dt.date(2024, 1, 1)})
    with pytest.raises(PatchError):
        validate_patch({"day": dt.date(2024, 1, 1)}, m)


@pytest.mark.parametrize("text", ["\ud800", "Zoë \udfff", "ok\ud83d"])
def test_validate_patch_rejects_a_string_utf8_cannot_hold_and_accepts_any_other(text):
    m = make(lambda d, c: None)
    with pytest.raises(PatchError, match="cannot store"):
        validate_patch({"name": text}, m)
    for fine in ("José", "Nguyễn \U0001f600", "\0", "a" * 1000):
        assert validate_patch({"name": fine}, m) == {"name": fine}


# --------------------------------------------------------------------------- guard_filter


def test_guard_filter_pins_present_fields_by_exact_value_and_absent_ones_by_exists_false():
    doc = {"_id": 5, "b": [1, 2], "a": {"x": None}, "c": None}
    assert guard_filter(doc, {"a", "b", "c", "missing", "_id"}) == {
        "_id": 5,
        "a": {"$exists": True},
        "b": {"$exists": True},
        "c": {"$exists": True},
        "missing": {"$exists": False},
        "$expr": {"$and": [
            {"$eq": ["$a", {"$literal": {"x": None}}]},
            {"$eq": ["$b", {"$literal": [1, 2]}]},
            {"$eq": ["$c", {"$literal": None}]},
        ]},
    }


def test_guard_filter_with_one_present_field_has_a_single_equality_and_none_without():
    assert guard_filter({"_id": 1, "a": [1]}, {"a"})["$expr"] == \
        {"$eq": ["$a", {"$literal": [1]}]}  # $literal: a value is never a path or an operator
    assert guard_filter({"_id": 1}, {"a"}) == {"_id": 1, "a": {"$exists": False}}
    assert guard_filter({"_id": 1}, set()) == {"_id": 1}


def test_guard_filter_pins_strings_booleans_object_ids_and_dates_by_plain_equality_not_arrays():
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
    oid = bson.ObjectId()
    doc = {"_id": 1, "s": "$x", "t": True, "o": oid, "d": when}
    not_array = {"$not": {"$type": "array"}}
    assert guard_filter(doc, {"s", "t", "o", "d"}) == {
        "_id": 1, "d": {"$eq": when, **not_array}, "o": {"$eq": oid, **not_array},
        "s": {"$eq": "$x", **not_array}, "t": {"$eq": True, **not_array}}


@pytest.mark.parametrize("value", [
    1, 1.0, Int64(1), math.nan, -0.0, bson.Decimal128("1"), None, [], ["a"], {"a": 1},
    bson.Regex("^a"), bson.Binary(b"a"), bson.Timestamp(1, 1), bson.DatetimeMS(2**62),
    bson.Code("x"), bson.MinKey(),
])
def test_guard_filter_keeps_expr_for_values_plain_equality_would_pin_differently(value):
    assert guard_filter({"_id": 1, "a": value}, {"a"}) == {
        "_id": 1, "a": {"$exists": True}, "$expr": {"$eq": ["$a", {"$literal": value}]}}


def test_guard_filter_pins_dotted_and_dollar_names_inside_expr_through_get_field():
    doc = {"_id": 1, "a.b": 1, "$c": "x"}
    guard = guard_filter(doc, {"a.b", "$c", "d.e", "$f", ""})
    dotted = {"$getField": {"field": {"$literal": "a.b"}}}
    dollar = {"$getField": {"field": {"$literal": "$c"}}}
    # A dotted query key is a path and a $ key an operator: nothing of these outside $expr.
    assert set(guard) == {"_id", "$expr"}
    assert guard["$expr"]["$and"] == [
        {"$eq": [{"$type": {"$getField": {"field": {"$literal": ""}}}}, "missing"]},
        {"$ne": [{"$type": dollar}, "missing"]},
        {"$eq": [dollar, {"$literal": "x"}]},
        {"$eq": [{"$type": {"$getField": {"field": {"$literal": "$f"}}}}, "missing"]},
        {"$ne": [{"$type": dotted}, "missing"]},
        {"$eq": [dotted, {"$literal": 1}]},
        {"$eq": [{"$type": {"$getField": {"field": {"$literal": "d.e"}}}}, "missing"]},
    ]
    assert matches_guard(doc, guard)
    assert not matches_guard({**doc, "a.b": 2}, guard)
    assert not matches_guard({"_id": 1, "$c": "x"}, guard)
    assert not matches_guard({**doc, "$f": None}, guard)


def test_matches_guard_never_matches_a_deleted_document_or_another_id():
    guard = guard_filter({"_id": 1, "a": 1}, {"a"})
    assert not matches_guard(None, guard)
    assert not matches_guard({"_id": 2, "a": 1}, guard)
    assert not matches_guard({"_id": 1.0, "a": 1}, guard)


# --------------------------------------------------------------------------- properties

KEYS = "abcde"

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=4),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from("xyz"), inner, max_size=3),
    ),
    max_leaves=6,
)
documents = st.builds(
    lambda body, _id: {"_id": _id, **body},
    st.dictionaries(st.sampled_from(KEYS), values, max_size=len(KEYS)),
    st.integers(0, 10**6),
)


def _rule(kind: str, target: str, source: str, value):
    """One clause of a transform: a pure function of the fields it reads, idempotent."""
    def clause(doc):
        if kind == "set_if_missing":
            return {} if target in doc else {target: value}
        if kind == "set_if_none":
            return {target: value} if doc.get(target) is None else {}
        if kind == "set":
            return {target: value}
        if kind == "unset":
            return {target: UNSET}
        if kind == "copy":  # target := source, or removed when source is absent
            return {target: doc[source] if source in doc else UNSET}
        if kind == "unset_if":  # remove target when the source field is truthy
            return {target: UNSET} if doc.get(source) else {}
        raise AssertionError(kind)
    return clause


@st.composite
def transforms(draw):
    """A transform built from a random patch: distinct targets, sources never written."""
    targets = draw(st.lists(st.sampled_from(KEYS), unique=True, min_size=1, max_size=3))
    sources = [k for k in KEYS if k not in targets] or ["zz"]
    clauses = [
        _rule(draw(st.sampled_from(["set_if_missing", "set_if_none", "set", "unset", "copy",
                                    "unset_if"])),
              target, draw(st.sampled_from(sources)), draw(values))
        for target in targets
    ]

    def transform(doc, ctx):
        patch = {}
        for clause in clauses:
            patch.update(clause(doc))
        return patch or None

    return make(transform)


property_settings = settings(max_examples=examples(300), deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@property_settings
@given(documents, transforms())
def test_applying_a_migration_twice_equals_applying_it_once(doc, m):
    first = decide(m, doc, None)
    once = apply_to(doc, first)
    second = decide(m, once, None)
    assert second.kind == "noop", (first, second)
    assert apply_to(once, second) == once
    assert bson.encode(apply_to(once, second)) == bson.encode(once)


@property_settings
@given(documents, transforms())
def test_a_migrated_document_as_the_server_stores_it_needs_nothing_more(doc, m):
    once = stored(apply_to(stored(doc), decide(m, stored(doc), None)))
    assert decide(m, once, None).kind == "noop"


@property_settings
@given(documents, transforms())
def test_the_guard_of_a_decision_matches_the_document_it_was_decided_on(doc, m):
    outcome = decide(m, doc, None)
    if outcome.kind in ("update", "delete"):
        assert matches_guard(doc, outcome.guard)
        assert outcome.guard == guard_filter(doc, set(outcome.guard) - {"_id", "$expr"})


@property_settings
@given(documents, st.sets(st.sampled_from(KEYS), min_size=1), st.data())
def test_a_guard_matches_the_unchanged_document_and_never_one_with_a_pinned_field_changed(
        doc, fields, data):
    guard = guard_filter(doc, fields)
    assert matches_guard(doc, guard)
    assert matches_guard(stored(doc), guard)

    name = data.draw(st.sampled_from(sorted(fields)), label="changed field")
    changed = dict(doc)
    if name in doc and data.draw(st.booleans(), label="remove it"):
        del changed[name]
    else:
        new = data.draw(values, label="new value")
        assume(name not in doc or not same_value(doc[name], new))
        changed[name] = new
    assert not matches_guard(changed, guard)


@property_settings
@given(documents, st.sets(st.sampled_from(KEYS)), st.sampled_from(KEYS), values)
def test_a_guard_ignores_fields_it_does_not_pin(doc, fields, other, value):
    assume(other not in fields)
    guard = guard_filter(doc, fields)
    assert matches_guard({**doc, other: value}, guard)
    assert matches_guard({k: v for k, v in doc.items() if k != other}, guard)


@property_settings
@given(values)
def test_same_value_is_reflexive_and_survives_a_round_trip_through_bson(value):
    assert same_value(value, value)
    assert same_value(stored({"v": value})["v"], value)


# --------------------------------------------------------------------------- the real server


BASE = {"_id": 1, "tags": ["a", "b"], "profile": {"name": "x", "age": 3}, "note": None,
        "flag": True, "label": "$not_a_path", "a.b": 1, "$price": None,
        "pattern": bson.Regex("^a", "i")}
PINNED = {"tags", "profile", "note", "label", "missing", "a.b", "$price", "x.y", "$gone",
          "pattern"}
VARIANTS = {
    "unchanged": BASE,
    "unpinned field changed": {**BASE, "flag": False},
    "unpinned field added": {**BASE, "extra": 1},
    "array element removed": {**BASE, "tags": ["a"]},
    "array reordered": {**BASE, "tags": ["b", "a"]},
    "array became its element": {**BASE, "tags": "a"},
    "array nested": {**BASE, "tags": [["a", "b"]]},
    "array emptied": {**BASE, "tags": []},
    "sub-document reordered": {**BASE, "profile": {"age": 3, "name": "x"}},
    "sub-document field added": {**BASE, "profile": {"name": "x", "age": 3, "z": 0}},
    "sub-document value changed": {**BASE, "profile": {"name": "y", "age": 3}},
    "sub-document became array": {**BASE, "profile": [{"name": "x", "age": 3}]},
    "null became missing": {k: v for k, v in BASE.items() if k != "note"},
    "null became false": {**BASE, "note": False},
    "string changed": {**BASE, "label": "$other"},
    "absent field appeared": {**BASE, "missing": None},
    "pinned field removed": {k: v for k, v in BASE.items() if k != "tags"},
    "dotted field changed": {**BASE, "a.b": 2},
    "dotted field removed": {k: v for k, v in BASE.items() if k != "a.b"},
    "path of the dotted name appeared": {**BASE, "a": {"b": 1}},
    "dollar field became missing": {k: v for k, v in BASE.items() if k != "$price"},
    "dollar field changed": {**BASE, "$price": 0},
    "absent dotted field appeared": {**BASE, "x.y": None},
    "absent dollar field appeared": {**BASE, "$gone": 1},
    "regex flags changed": {**BASE, "pattern": bson.Regex("^a", "m")},
    "regex became its pattern": {**BASE, "pattern": "^a"},
}


def test_the_server_evaluates_a_guard_as_matches_guard_does(db):
    guard = guard_filter(BASE, PINNED)
    verdicts = {}
    for label, variant in VARIANTS.items():
        # MongoDB refuses a replacement with a $-prefixed top-level name: insert it anew.
        db.guards.delete_one({"_id": 1})
        db.guards.insert_one(variant)
        on_server = db.guards.find_one(guard) is not None
        in_memory = matches_guard(db.guards.find_one({"_id": 1}), guard)
        assert on_server == in_memory, label
        verdicts[label] = on_server
    assert [label for label, matched in verdicts.items() if matched] == \
        ["unchanged", "unpinned field changed", "unpinned field added",
         "path of the dotted name appeared"]


# A value the plain-equality guard pins, and what a stored field may hold instead of it.
plain_pinned = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=4), st.booleans(),
    st.builds(bson.ObjectId),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                 timezones=st.just(dt.UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
)
MISSING = object()


def _neighbours(pinned) -> list:
    """Stored values around ``pinned``: itself, inside arrays and documents, the same value
    of another type, and nearby values of its own type."""
    out = [pinned, [pinned], [pinned, pinned], [[pinned]], [], {"v": pinned}, None, MISSING]
    if isinstance(pinned, str):
        out += [pinned.upper(), pinned.lower(), pinned + "\0", bson.Regex(pinned),
                bson.Code(pinned), pinned.encode(), bson.Binary(pinned.encode())]
    elif isinstance(pinned, bool):
        out += [not pinned, int(pinned), float(pinned), Int64(int(pinned)), str(pinned).lower()]
    elif isinstance(pinned, bson.ObjectId):
        out += [bson.ObjectId(), str(pinned), pinned.binary]
    else:
        millis = int(pinned.timestamp() * 1000)
        out += [bson.DatetimeMS(millis + 1), bson.DatetimeMS(millis - 1), millis,
                bson.Timestamp(max(0, min(2**31 - 1, millis // 1000)), 0), pinned.isoformat()]
    return out


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pinned=plain_pinned, other=values)
def test_on_the_server_a_plain_equality_guard_matches_exactly_where_the_expr_guard_does(
        db, pinned, other):
    """For the values it pins by plain equality, the guard means on the server what the
    ``$expr`` guard it replaced means: the same verdict on the same stored value, whatever
    that value is (the pinned one, one inside an array or document, one of another type...),
    and what :func:`matches_guard` says."""
    guard = guard_filter({"_id": 0, "f": pinned}, {"f"})
    assert "$expr" not in guard
    with_expr = {"_id": 0, "f": {"$exists": True},
                 "$expr": {"$eq": ["$f", {"$literal": pinned}]}}
    simple = {"locale": "simple"}
    for stored_value in [*_neighbours(pinned), other]:
        db.guards.delete_many({})
        db.guards.insert_one({"_id": 0} if stored_value is MISSING
                             else {"_id": 0, "f": stored_value})
        plain = db.guards.find_one(guard, collation=simple) is not None
        assert plain == (db.guards.find_one(with_expr, collation=simple) is not None), \
            stored_value
        assert plain == matches_guard(db.guards.find_one({"_id": 0}), guard), stored_value
        read = db.guards.find_one({"_id": 0})
        assert plain == ("f" in read and same_value(read["f"], pinned)), stored_value


def test_a_guard_of_a_sharded_collection_pins_its_shard_key_by_equality():
    doc = {"_id": 1, "region": "eu", "n": 5, "owner": {"id": 7}, "seen": "x"}

    seen = make(lambda d, ctx: {"seen": "y"} if d["n"] else None)
    outcome = decide(seen, doc, None, shard_key=("region", "n", "owner.id", "zone", "_id"))

    guard = outcome.guard
    # beside the guard's own conditions: n read as a number is pinned by $expr, which mongos
    # cannot target with; a missing key field is null to a sharded cluster
    assert guard["region"] == {"$eq": "eu"}
    assert guard["n"] == {"$exists": True, "$eq": 5}
    assert guard["owner.id"] == {"$eq": 7} and guard["zone"] == {"$eq": None}
    assert guard["_id"] == 1 and guard["seen"] == {"$eq": "x", "$not": {"$type": "array"}}
    assert outcome.shard_key == {"region": "eu", "n": 5, "owner.id": 7, "zone": None}
    assert decide(seen, doc, None).guard == guard_filter(doc, {"n", "seen"})  # unsharded
