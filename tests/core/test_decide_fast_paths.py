"""The raw path's shortcuts (issue 27) against the general path they stand in for: the BSON of
common patch values made by hand, the patch keys' check with its cache of names, the values'
check left to the one encoding of the patch, an ``_id`` read straight from its bytes. Pure.
"""

from __future__ import annotations

import datetime as dt
import math

import bson
import pytest
from bson import Int64, ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_migrator import UNSET, PatchError, migration
from cdc_migrator.base.codec import CODEC_OPTIONS
from cdc_migrator.core.patch import decide, validate_patch
from cdc_migrator.core.rawdoc import RawView, document_id, plain_elements
from cdc_migrator.migration import _defined

from ..harness import examples
from .test_rawdoc import encoded, make

fast = settings(max_examples=examples(400), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


# Any text, lone surrogates and NUL included: what BSON cannot hold must fall back.
any_text = st.text(max_size=5)
plain_values = st.one_of(
    any_text, st.integers(-2**31, 2**31 - 1), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, -math.nan, -0.0, 2.0**63, 1e-320]))
other_values = st.one_of(
    st.integers(), st.sampled_from([2**31, -2**31 - 1, 2**40, 2**64]),
    st.builds(Int64, st.integers(-2**63, 2**63 - 1)), st.builds(ObjectId),
    st.lists(st.integers(0, 3), max_size=2), st.just(dt.date(2024, 1, 1)),
    st.datetimes(timezones=st.just(dt.UTC)))


@fast
@given(st.dictionaries(any_text, st.one_of(plain_values, other_values), max_size=4))
def test_plain_elements_are_the_bytes_bson_encodes_or_none(values):
    elements = plain_elements(values)
    try:
        expected = encoded(values)
    except (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError):
        assert elements is None
        return
    if elements is not None:
        assert elements == expected[4:-1]


@fast
@given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",),
                                             blacklist_characters="\x00"), max_size=5)
                       .filter(lambda k: k != "_id"),
                       plain_values.filter(lambda v: not isinstance(v, str) or v.isascii()),
                       max_size=4))
def test_plain_elements_take_every_string_int32_bool_double_and_none_but_an_id(values):
    assert plain_elements(values) == encoded(values)[4:-1]


keys = st.one_of(st.sampled_from(["a", "b", "_id", "$a", "a.b", "", "é", "a\x00"]),
                 st.text(max_size=3), st.integers(0, 2), st.just(b"a"))


@fast
@given(st.lists(st.dictionaries(keys, st.integers(0, 2), max_size=3), min_size=1, max_size=4))
def test_the_patch_keys_check_rejects_the_same_keys_with_its_cache_of_names(patches):
    m = make(lambda d, c: None)
    for patch in patches:
        bad = [k for k in patch if not isinstance(k, str) or not k or k[0] == "$" or "." in k
               or k == "_id"]
        for _ in range(2):  # the second check meets the names the first one cached
            if bad:
                with pytest.raises(PatchError, match="_id is immutable|top-level field names"):
                    validate_patch(patch, m)
            else:
                assert validate_patch(patch, m) == patch


@pytest.mark.parametrize("value", [dt.date(2024, 1, 1), "ok\ud83d", 2**64, {"$x": object()}])
def test_a_value_mongodb_cannot_store_is_refused_alike_on_the_raw_and_the_decoded_path(value):
    m = make(lambda d, c: {"first": "x", "bad": value, "gone": UNSET})
    doc = {"_id": ObjectId(), "gone": 1, "bad": "stored"}
    messages = []
    for given_doc in (doc, encoded(doc)):
        with pytest.raises(PatchError, match="cannot store") as info:
            decide(m, given_doc, None)
        assert info.value.document_id == doc["_id"]
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@fast
@given(st.one_of(st.builds(ObjectId), st.integers(-2**31, 2**31 - 1),
                 st.integers(-2**63, 2**63 - 1), st.text(max_size=3), st.booleans(),
                 st.floats(allow_nan=False)),
       st.booleans())
def test_an_id_read_from_its_bytes_is_the_decoded_id(doc_id, first):
    doc = {"_id": doc_id, "x": 1} if first else {"x": 1, "_id": doc_id}
    data = encoded(doc)
    expected = bson.decode(data, CODEC_OPTIONS)["_id"]
    for got in (document_id(data), RawView(data).document_id()):
        assert type(got) is type(expected) and got == expected


@pytest.mark.parametrize("filter_", [None, {"a": {"$exists": True}}, {"zz": 1}])
@pytest.mark.parametrize("patch", [{"b": "x"}, {"a": UNSET}, {"a": 2, "b": UNSET, "c": [1]}])
def test_a_raw_statement_is_the_bson_of_its_guard_update_and_collation(filter_, patch):
    from cdc_migrator.apply.applier import SIMPLE_COLLATION, Applier

    m = migration(collection="things", filter=filter_)(lambda d, c: (d.get("a"), patch)[1])
    _defined.remove(m)
    doc = {"_id": ObjectId(), "a": 1, "b": "y"}
    outcome = decide(m, encoded(doc), None)
    assert outcome.kind == "update"
    guard = bson.decode(outcome.raw_guard, CODEC_OPTIONS)
    if filter_ and not set(filter_) <= set(guard):
        guard = {"$and": [guard, filter_]}
    expected = {"q": guard, "u": bson.decode(outcome.raw_update, CODEC_OPTIONS),
                "collation": SIMPLE_COLLATION}
    assert Applier(m, None, None)._statement(outcome) == encoded(expected)
