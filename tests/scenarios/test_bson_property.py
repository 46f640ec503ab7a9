"""Property: whatever BSON a collection holds, every document is migrated and every field the
migration did not touch stays byte for byte as it was, through ``apply`` and through tail +
backfill + consume on the real services; ``verify`` then finds nothing left.

Most examples are small; explicit examples carry values of several MiB. The local server
stores Binary subtypes 0, 3 and 4 only and refuses updates of documents with a top-level
name holding a ``.`` or starting with ``$`` (docs/testing.md): those stay out of the space.
"""

from __future__ import annotations

import datetime as dt
import itertools
import textwrap

import bson
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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdc_migrator import api
from cdc_migrator.base import codec
from cdc_migrator.base.identity import id_key
from cdc_migrator.migration import get_migration
from cdc_migrator.pipeline import run_pipeline

MIB = 1 << 20
_names = itertools.count()

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=8)
field_names = text.filter(lambda k: k and not k.startswith("$") and "." not in k)
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-2**31, 2**31 - 1), st.builds(Int64, st.integers(-2**63, 2**63 - 1)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal128("NaN"), Decimal128("-0"), Decimal128("1E+6144"),
                     Decimal128("-1E-6176"), Decimal128("0.1"), Decimal128("Infinity")]),
    text,
    st.builds(Binary, st.binary(max_size=16), st.just(0)),
    st.builds(lambda b: Binary(b, 3), st.binary(min_size=16, max_size=16)),
    st.uuids(),
    st.builds(ObjectId),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                 timezones=st.just(dt.UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    st.builds(DatetimeMS, st.sampled_from([2**62, -(2**62), 253402300800000])),
    st.builds(Regex, text, st.sampled_from(["", "i", "ms", "imsux"])),
    st.builds(Code, text),
    st.just(MinKey()), st.just(MaxKey()),
    st.builds(Timestamp, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.builds(DBRef, text.filter(bool), st.integers(0, 9)),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(field_names, inner, max_size=3)),
    max_leaves=8)
ids = st.one_of(st.integers(-5, 5), st.booleans(), st.builds(Int64, st.integers(-5, 5)),
                st.floats(-5, 5, allow_nan=False), text, st.builds(ObjectId), st.uuids(),
                st.dictionaries(st.sampled_from("ab"), st.integers(0, 2), min_size=1))
bodies = st.dictionaries(field_names.filter(lambda k: k not in ("_id", "migrated")), values,
                         max_size=5)


@st.composite
def collections(draw):
    """Documents with ids distinct to MongoDB (1 and True side by side, never 1 and 1.0)."""
    docs, seen = [], set()
    for _id in draw(st.lists(ids, min_size=1, max_size=8)):
        if id_key(_id) not in seen:
            seen.add(id_key(_id))
            docs.append({"_id": _id, **draw(bodies)})
    return docs


LARGE = [[{"_id": 1, "text": "é" * (3 * MIB)}, {"_id": True, "blob": Binary(b"\1" * 5 * MIB)}],
         [{"_id": "big", "nested": [{"s": "x" * (6 * MIB)}]}, {"_id": {"b": 1, "a": 2}}]]

MIGRATION = '''
    from cdc_migrator import migration

    @migration(collection="{name}")
    def {name}(doc, ctx):
        if "migrated" not in doc:
            return {{"migrated": True}}
'''

property_settings = settings(deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large,
                                                    HealthCheck.function_scoped_fixture])


def _prepare(db, settings_, tmp_path, docs) -> str:
    name = f"p{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MIGRATION.format(name=name)))
    settings_.transforms = tmp_path
    settings_.db[name].insert_many(docs)
    return name


def _assert_migrated_and_untouched(db, settings_, name: str, docs) -> None:
    raw = db.get_collection(name, codec_options=codec.CODEC_OPTIONS.with_options(
        document_class=RawBSONDocument))
    stored = {id_key(d["_id"]): d.raw for d in raw.find()}
    assert len(stored) == len(docs)
    for doc in docs:
        # The migration appended one field; every other byte is as the application wrote it.
        expected = bson.encode({**doc, "migrated": True}, codec_options=codec.CODEC_OPTIONS)
        assert stored[id_key(doc["_id"])] == expected, doc["_id"]
    assert api.verify(settings_, name).ok


@settings(property_settings, max_examples=40)
@given(docs=collections())
@example(docs=LARGE[0])
def test_apply_migrates_every_document_and_leaves_the_rest_byte_identical(
        db, settings, tmp_path, docs):
    name = _prepare(db, settings, tmp_path, docs)
    report = api.apply(settings, name, show_progress=False)
    assert report.result.failed == 0
    _assert_migrated_and_untouched(db, settings, name, docs)


@settings(property_settings, max_examples=6)
@given(docs=collections())
@example(docs=LARGE[1])
def test_the_pipeline_migrates_every_document_and_leaves_the_rest_byte_identical(
        db, settings, tmp_path, docs):
    name = _prepare(db, settings, tmp_path, docs)
    report = run_pipeline(settings, get_migration(tmp_path, name), show_progress=False,
                          timeout=120)
    assert report.drained and report.counts.get("failed", 0) == 0
    _assert_migrated_and_untouched(db, settings, name, docs)
