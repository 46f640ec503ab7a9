"""The compiled raw-BSON hot path (``cdc_migrator/core/_rawbson.c``) against the Python code it
is the counterpart of: the same element index, the same guard, the same update, byte for byte,
on documents of every BSON type and odd names; ``None`` (the Python path decides) exactly where
it should; and malformed bytes left to the Python path, which says what it always said.

The Python path is the one ``rawdoc.compiled = None`` selects (as ``CDC_MIGRATOR_PURE_PYTHON=1``
or a build without a C compiler does). tests/core/test_rawdoc.py compares the raw path, compiled
where built, with the decoded one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator

import bson
import pytest
from bson import Binary, DatetimeMS, Decimal128, Int64, ObjectId
from bson.raw_bson import RawBSONDocument
from hypothesis import given
from hypothesis import strategies as st

from cdc_migrator import DELETE, UNSET, PatchError
from cdc_migrator.core import rawdoc
from cdc_migrator.core.patch import decide
from cdc_migrator.core.rawdoc import RawView, raw_guard

from .test_rawdoc import documents, encoded, make, names, property_settings, transforms, values

compiled = rawdoc.compiled

needs_compiled = pytest.mark.skipif(compiled is None, reason="built without the compiled path")


def test_the_compiled_path_is_built_where_a_c_compiler_is():
    # `make test` installs the package with a C compiler at hand; CI asks for the compiled path
    # (.ci/run), so that a build that silently dropped it fails here.
    if os.environ.get("CDC_MIGRATOR_REQUIRE_COMPILED"):
        assert compiled is not None, "the compiled raw-BSON path was not built"
    if compiled is None:
        pytest.skip("built without a C compiler")
    assert rawdoc.implementation() == "compiled"


@contextlib.contextmanager
def python_path() -> Iterator[None]:
    """The Python path alone, as a build without the compiled part runs."""
    kept = rawdoc.compiled
    rawdoc.compiled = None
    try:
        yield
    finally:
        rawdoc.compiled = kept


def python_index(data: bytes) -> dict:
    with python_path():
        view = RawView(data)
        view._scan(None)
    return view._index


def python_guard(data: bytes, fields) -> tuple[bytes, frozenset[str]]:
    with python_path():
        return raw_guard(RawView(data), fields)


def outcome_of(m, data: bytes):
    """decide()'s outcome as a comparable tuple, or the PatchError it raised."""
    try:
        o = decide(m, RawBSONDocument(data), None)
    except PatchError as exc:
        return ("PatchError", str(exc))
    return (o.kind, encoded({"v": o.id}), o.set and encoded(o.set), o.unset, o.raw_guard,
            o.raw_update, o.guard_names, o.error)


# --- the element index ------------------------------------------------------------------------

@needs_compiled
@property_settings
@given(documents)
def test_the_compiled_index_is_the_python_index(doc):
    data = encoded(doc)
    assert compiled.scan(data) == python_index(data)


@needs_compiled
def test_a_repeated_name_keeps_its_first_element_in_both():
    elements = b"\x10a\x00\x01\x00\x00\x00" + b"\x02a\x00\x02\x00\x00\x00x\x00"
    data = rawdoc.document(b"\x10_id\x00\x07\x00\x00\x00" + elements)
    assert compiled.scan(data) == python_index(data)
    assert RawView(data)["a"] == 1


@needs_compiled
def test_deprecated_types_and_a_large_document_are_indexed_alike():
    legacy = (b"\x06u\x00" + b"\x0cp\x00" + b"\x02\x00\x00\x00c\x00" + bytes(ObjectId().binary)
              + b"\x0es\x00\x02\x00\x00\x00s\x00" + b"\x0bre\x00a.b\x00i\x00")
    data = rawdoc.document(b"\x10_id\x00\x01\x00\x00\x00" + legacy)
    assert list(compiled.scan(data)) == ["_id", "u", "p", "s", "re"]
    assert compiled.scan(data) == python_index(data)
    big = encoded({"_id": uuid.uuid4(), "blob": Binary(os.urandom(4 << 20)),
                   **{f"f{i}": i for i in range(2000)}, "text": "é" * 500_000})
    assert compiled.scan(big) == python_index(big)


@needs_compiled
def test_an_empty_regex_last_in_the_document_is_indexed():
    # A regex has no length: its two empty C strings can end right before the document does
    # (the compiled scan once read a length there first and left such a document to Python).
    data = encoded({"_id": 1, "a": bson.Regex("", "")})
    assert compiled.scan(data) == python_index(data) == {"_id": (4, 9, 13), "a": (13, 16, 18)}


def malformed() -> list[bytes]:
    good = encoded({"_id": 1, "name": "x", "n": 2})
    return [
        good[:-1],  # cut short
        good[:-1] + b"\x01",  # no terminating zero
        (len(good) + 3).to_bytes(4, "little") + good[4:],  # a length that is not its own
        rawdoc.document(b"\x20odd\x00\x00"),  # a type BSON does not have
        rawdoc.document(b"\x02s\x00\xff\xff\xff\x7fx\x00"),  # a string running past the end
        rawdoc.document(b"\x02s\x00\x00\x00\x00\x00"),  # a string of length zero
        rawdoc.document(b"\x10\xff\xfe\x00\x01\x00\x00\x00"),  # a name that is not UTF-8
        rawdoc.document(b"\x10name"),  # a name without its end
        b"",
    ]


@needs_compiled
@pytest.mark.parametrize("data", malformed(), ids=range(len(malformed())))
def test_malformed_bytes_are_left_to_the_python_path_which_says_what_it_said(data):
    assert compiled.scan(data) is None

    def reading(data):
        view = RawView(data)
        try:
            return [(name, view.get(name)) for name in ("_id", "name", "n", "s", "odd")]
        except Exception as exc:  # noqa: BLE001 - the point is that both fail alike
            return type(exc)

    with python_path():
        expected = reading(data)
    assert reading(data) == expected


@needs_compiled
def test_the_compiled_functions_refuse_the_wrong_types_of_arguments():
    with pytest.raises(TypeError):
        compiled.scan("not bytes")
    with pytest.raises(TypeError):
        compiled.guard(b"", [], set())
    with pytest.raises(TypeError):
        compiled.update(b"", {}, [("a", 1)], UNSET)


# --- the guard --------------------------------------------------------------------------------

def _odd(name: str) -> bool:
    return name != "_id" and (not name or name[0] == "$" or "." in name)


@needs_compiled
@property_settings
@given(documents, st.sets(st.one_of(names, st.just("_id"), st.just("zz"))))
def test_the_compiled_guard_is_the_python_guard_or_leaves_it_an_odd_name(doc, fields):
    data = encoded(doc)
    made = compiled.guard(data, compiled.scan(data), fields)
    if any(_odd(name) for name in fields):
        assert made is None
    else:
        assert made == python_guard(data, fields)
    assert raw_guard(RawView(data), fields) == python_guard(data, fields)


# The milliseconds a datetime holds, at their ends: a date outside is pinned through $expr.
DATE_ENDS = [rawdoc._DATE_RANGE.start - 1, rawdoc._DATE_RANGE.start,
             rawdoc._DATE_RANGE.stop - 1, rawdoc._DATE_RANGE.stop, 0, -1, 2**63 - 1, -2**63]


@needs_compiled
@pytest.mark.parametrize("ms", DATE_ENDS)
def test_dates_at_the_ends_of_a_datetime_are_pinned_as_python_pins_them(ms):
    data = encoded({"_id": 1, "at": DatetimeMS(ms)})
    made = compiled.guard(data, compiled.scan(data), {"at", "b"})
    assert made == python_guard(data, {"at", "b"})
    plain = ms in rawdoc._DATE_RANGE
    assert (b"$expr" not in made[0]) == plain


@needs_compiled
def test_the_guard_falls_back_without_an_id_or_with_names_that_are_no_strings():
    data = encoded({"a": 1})
    assert compiled.guard(data, compiled.scan(data), {"a"}) is None
    with pytest.raises(KeyError):
        raw_guard(RawView(data), {"a"})
    data = encoded({"_id": 1, "a": 1})
    assert compiled.guard(data, compiled.scan(data), {"a", 1}) is None
    assert compiled.guard(data, compiled.scan(data), {"a\x00b"}) is None


# --- the update, and decide() as a whole -----------------------------------------------------

@needs_compiled
@property_settings
@given(documents, transforms())
def test_decide_gives_the_same_outcome_compiled_and_in_python(doc, m):
    data = encoded(doc)
    with python_path():
        expected = outcome_of(m, data)
    assert outcome_of(m, data) == expected


# Values the compiled update encodes itself, at the edges of their types.
plain_values = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.nan, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**63 - 1,
                     -2**63, 0, 1, True, False, "", "é", "\U0001F600"]),
    st.integers(-2**63, 2**63 - 1), st.text(max_size=5),
)
# Lone surrogates: a patch may hold them, BSON cannot.
patch_values = st.one_of(plain_values, st.sampled_from(["\ud800", "a\udfff"]), st.just(UNSET))
stored_values = st.one_of(plain_values, values, st.builds(Int64, st.integers(-2**63, 2**63 - 1)),
                          st.just(Decimal128("1")))
patch_names = st.sampled_from(["a", "b", "c", "é", "zz"])


@needs_compiled
@property_settings
@given(st.dictionaries(patch_names, stored_values, max_size=4),
       st.dictionaries(patch_names, patch_values, min_size=1, max_size=4))
def test_a_patch_of_plain_values_is_decided_compiled_and_as_python_decides_it(doc, result):
    data = encoded({"_id": ObjectId(), **doc})
    try:
        encoded({k: v for k, v in result.items() if v is not UNSET})
    except Exception:  # noqa: BLE001 - whatever bson says: not storable
        storable = False
    else:
        storable = True
    made = compiled.update(data, compiled.scan(data), dict(result), UNSET)
    # Everything it can store is decided compiled (a lone surrogate is not: Python says why).
    assert (made is not None) == storable
    m = make(lambda doc, ctx: result)
    with python_path():
        expected = outcome_of(m, data)
    assert outcome_of(m, data) == expected


@needs_compiled
@pytest.mark.parametrize("stored, value, changes", [
    (1, 1, False), (1, 1.0, True), (1, True, True), (True, 1, True), (2**31, 2**31, False),
    (Int64(5), 5, True), (5, Int64(5), None), (math.nan, math.nan, False), (0.0, -0.0, True),
    (None, None, False), ("é", "é", False), ("a", "b", True), (2**63 - 1, 2**63 - 1, False),
])
def test_a_value_is_unchanged_only_when_its_element_is_the_stored_one(stored, value, changes):
    data = encoded({"_id": 1, "v": stored})
    made = compiled.update(data, compiled.scan(data), {"v": value}, UNSET)
    if changes is None:  # Int64: not a value encoded here, Python decides
        assert made is None
        return
    to_set, to_unset, update = made
    assert (to_set == {"v": value}) == changes and to_unset == ()
    assert (update != b"") == changes
    if changes:
        assert update == encoded({"$set": {"v": value}})


@needs_compiled
@pytest.mark.parametrize("result, error", [
    ({"big": 2**63}, "MongoDB cannot store"), ({"bad": "\ud800"}, "MongoDB cannot store"),
    ({"a\x00b": 1}, "MongoDB cannot store"), ({"_id": 2}, "_id is immutable"),
    ({"a.b": 1}, "top-level field names"),
])
def test_a_patch_mongodb_cannot_store_is_refused_with_python_s_error(result, error):
    data = encoded({"_id": 1, "a": 1})
    m = make(lambda doc, ctx: result)
    with python_path():
        expected = outcome_of(m, data)
    assert expected[0] == "PatchError" and error in expected[1]
    assert outcome_of(m, data) == expected


@needs_compiled
def test_unset_and_set_together_and_an_unset_of_an_absent_field():
    data = encoded({"_id": 1, "old": "x", "keep": 2})
    to_set, to_unset, update = compiled.update(
        data, compiled.scan(data), {"new": "y", "old": UNSET, "gone": UNSET}, UNSET)
    assert (to_set, to_unset) == ({"new": "y"}, ("old",))
    assert update == encoded({"$set": {"new": "y"}, "$unset": {"old": ""}})
    assert compiled.update(data, compiled.scan(data), {"gone": UNSET, "keep": 2}, UNSET) == (
        {}, (), b"")


# --- that the hot path takes it ----------------------------------------------------------------

@needs_compiled
def test_the_benchmark_s_migration_is_decided_without_the_python_fallbacks(monkeypatch):
    calls: dict[str, int] = {"scan": 0, "guard": 0, "update": 0}

    def counted(name):
        def call(*args):
            made = getattr(compiled, name)(*args)
            calls[name] += made is not None
            return made
        return call

    monkeypatch.setattr(rawdoc, "compiled",
                        types.SimpleNamespace(**{n: counted(n) for n in calls}))

    def split(doc, ctx):
        first, _, last = doc.get("fullName").partition(" ")
        return {"first": first, "last": last, "fullName": UNSET}

    docs = [{"_id": ObjectId(), "fullName": f"Ann Lee{i}", "age": i,
             "at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)} for i in range(5)]
    for doc in docs:
        outcome = decide(make(split), encoded(doc), None)
        assert outcome.kind == "update" and outcome.unset == ("fullName",)
    assert calls == {"scan": 5, "guard": 5, "update": 5}
    # and a delete's guard
    assert decide(make(lambda doc, ctx: DELETE), encoded(docs[0]), None).kind == "delete"
    assert calls["guard"] == 6


def test_the_python_path_is_what_pure_python_selects():
    code = "from cdc_migrator.core import rawdoc; print(rawdoc.implementation())"
    env = {**os.environ, "CDC_MIGRATOR_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "python"

