"""Deciding on raw BSON: a transform reading a document given as bytes sees the values a
decoded dict holds, field by field, and the guard and update built as bytes are, byte for
byte, what the decoded path builds (the guard forms of :func:`guard_filter`, every BSON type,
odd field names). Pure; the writes themselves are tested in tests/apply/test_raw_writes.py.
"""

from __future__ import annotations

import datetime as dt
import uuid

import bson
import pytest
from bson import (
    Binary,
    Code,
    DatetimeMS,
    DBRef,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
)
from bson.raw_bson import RawBSONDocument
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_migrator import DELETE, UNSET, PatchError, migration
from cdc_migrator.base.codec import CODEC_OPTIONS
from cdc_migrator.core.patch import RecordingDocument, decide, guard_filter
from cdc_migrator.core.rawdoc import RawView, document_id, element_index, raw_guard
from cdc_migrator.migration import _defined

from ..harness import examples

RAW_OPTIONS = CODEC_OPTIONS.with_options(document_class=RawBSONDocument)


def make(fn):
    m = migration(collection="things")(fn)
    _defined.remove(m)
    return m


def encoded(doc) -> bytes:
    return bson.encode(doc, codec_options=CODEC_OPTIONS)


def same(a, b) -> bool:
    """Same Python type and the same BSON (NaN equals NaN, 1 is not 1.0 nor True)."""
    return type(a) is type(b) and encoded({"v": a}) == encoded({"v": b})


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=6)
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-2**31, 2**31 - 1), st.builds(Int64, st.integers(-2**63, 2**63 - 1)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal128("NaN"), Decimal128("-0"), Decimal128("0.1"),
                     Decimal128("1E+6144")]),
    text,
    st.builds(Binary, st.binary(max_size=16), st.just(0)),
    st.builds(lambda b: Binary(b, 3), st.binary(min_size=16, max_size=16)),
    st.uuids(), st.builds(ObjectId),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                 timezones=st.just(dt.UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    st.builds(DatetimeMS, st.sampled_from([2**62, -(2**62), 253402300800000, -62135596800001])),
    st.builds(Regex, text, st.sampled_from(["", "i", "msx"])),
    st.builds(Code, text), st.builds(Code, text, st.dictionaries(st.sampled_from("xy"),
                                                                st.integers(0, 3))),
    st.just(MinKey()), st.just(MaxKey()),
    st.builds(Timestamp, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.builds(DBRef, text.filter(bool), st.integers(0, 9)),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("xyz"), inner, max_size=3)),
    max_leaves=6)
# Odd names too: a dot, a leading "$", the empty name (legal top-level names since 5.0).
names = st.sampled_from(["a", "b", "c", "d", "a.b", "$x", "", "é"])
ids = st.one_of(st.integers(-5, 5), st.booleans(), st.builds(Int64, st.integers(-5, 5)),
                st.floats(-5, 5, allow_nan=False), text, st.builds(ObjectId), st.uuids(),
                st.dictionaries(st.sampled_from("ab"), st.integers(0, 2), min_size=1))
documents = st.builds(lambda body, _id: {"_id": _id, **body},
                      st.dictionaries(names, values, max_size=6), ids)


@st.composite
def transforms(draw):
    """A transform reading a random subset of fields (by ``[]``, ``get`` or ``in``, or all of
    them by iterating) and returning a random patch, None or DELETE."""
    reads = draw(st.lists(st.tuples(st.sampled_from(["item", "get", "in"]), names), max_size=4))
    iterate = draw(st.booleans())
    result = draw(st.one_of(
        st.none(), st.just(DELETE),
        st.dictionaries(names.filter(lambda k: k and k[0] != "$" and "." not in k),
                        st.one_of(values, st.just(UNSET)), max_size=3)))

    def transform(doc, ctx):
        for how, name in reads:
            if how == "item" and name in doc:
                doc[name]
            elif how == "get":
                doc.get(name)
        if iterate:
            dict(doc)
        return result

    return make(transform)


property_settings = settings(max_examples=examples(400), deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@property_settings
@given(documents)
def test_a_raw_view_gives_every_field_the_type_and_value_a_decoded_dict_holds(doc):
    data = encoded(doc)
    decoded = bson.decode(data, CODEC_OPTIONS)
    view = RecordingDocument(RawView(data))
    assert list(view) == list(decoded) and len(view) == len(decoded)
    for name, value in decoded.items():
        assert name in view
        assert same(view[name], value) and same(view.get(name), value)
    assert view.get("absent", 7) == 7 and "absent" not in view
    assert document_id(RawBSONDocument(data)) == decoded["_id"]


@property_settings
@given(documents, transforms())
def test_the_raw_guard_and_update_are_the_bytes_of_the_decoded_guard_and_update(doc, m):
    data = encoded(doc)
    decoded = bson.decode(data, CODEC_OPTIONS)
    try:
        expected = decide(m, decoded, None)
    except PatchError as exc:
        with pytest.raises(PatchError, match="document _id"):
            decide(m, data, None)
        assert "document _id" in str(exc)
        return
    raw = decide(m, RawBSONDocument(data, RAW_OPTIONS), None)
    assert (raw.kind, raw.set, raw.unset) == (expected.kind, expected.set, expected.unset)
    assert same(raw.id, expected.id)
    if expected.kind in ("update", "delete"):
        assert raw.guard == {}
        assert raw.raw_guard == encoded(expected.guard)
        assert raw.guard_names == set(expected.guard)
    if expected.kind == "update":
        assert raw.raw_update == encoded(expected.update)


@property_settings
@given(documents, st.sets(names))
def test_raw_guard_is_guard_filter_byte_for_byte(doc, fields):
    data = encoded(doc)
    guard, guard_names = raw_guard(RawView(data), fields)
    expected = guard_filter(bson.decode(data, CODEC_OPTIONS), fields)
    assert guard == encoded(expected) and guard_names == set(expected)


def test_every_bson_type_is_indexed_to_its_element():
    doc = {"_id": 1, "double": 1.5, "str": "é", "doc": {"x": [1]}, "arr": [1, "2"],
           "bin": Binary(b"xy", 0), "uuid4": uuid.uuid4(), "uuid3": Binary(b"0" * 16, 3),
           "oid": ObjectId(), "bool": False, "date": dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
           "far": DatetimeMS(2**62), "null": None, "re": Regex("a.b", "i"),
           "code": Code("f()"), "scoped": Code("f()", {"a": 1}), "i32": 7, "ts": Timestamp(1, 2),
           "i64": Int64(7), "dec": Decimal128("1.5"), "min": MinKey(), "max": MaxKey(),
           "ref": DBRef("c", 1)}
    data = encoded(doc)
    index = element_index(data)
    assert list(index) == list(doc)
    for name, (begin, _, end) in index.items():
        assert encoded({name: doc[name]}) == (
            (end - begin + 5).to_bytes(4, "little") + data[begin:end] + b"\x00")
    # Deprecated types a server may still hold: undefined, DBPointer, symbol.
    legacy = (b"\x06u\x00" + b"\x0cp\x00" + b"\x02\x00\x00\x00c\x00" + bytes(ObjectId().binary)
              + b"\x0es\x00\x02\x00\x00\x00s\x00" + b"\x10after\x00\x05\x00\x00\x00")
    raw = (len(legacy) + 5).to_bytes(4, "little") + legacy + b"\x00"
    assert list(element_index(raw)) == ["u", "p", "s", "after"]
    assert RawView(raw)["after"] == 5


def test_a_raw_value_the_transform_mutates_in_place_does_not_change_what_the_guard_pins():
    def transform(doc, ctx):
        tags = doc["tags"]
        tags.append("edited")
        doc["profile"]["name"] = "changed"
        return {"tags": tags, "seen": doc["tags"]}  # a second read is the stored value again

    doc = {"_id": 1, "tags": ["a"], "profile": {"name": "n"}}
    outcome = decide(make(transform), encoded(doc), None)
    assert outcome.set == {"tags": ["a", "edited"], "seen": ["a"]}
    assert bson.decode(outcome.raw_guard, CODEC_OPTIONS) == guard_filter(
        doc, {"tags", "profile", "seen"})
    assert outcome.raw_guard == encoded(guard_filter(doc, {"tags", "profile", "seen"}))


def test_decide_on_raw_bytes_with_a_shard_key_pins_it_as_the_decoded_path_does():
    doc = {"_id": 1, "region": {"code": "eu"}, "n": 1}
    m = make(lambda d, c: {"n": 2})
    raw = decide(m, encoded(doc), None, shard_key=("region.code", "_id"))
    assert raw.guard == decide(m, doc, None, shard_key=("region.code", "_id")).guard
    assert raw.shard_key == {"region.code": "eu"} and raw.raw_guard == b""
