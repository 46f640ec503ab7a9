"""The applier on raw documents, against the local server: its guarded statements, built as
BSON bytes and sent in ``update``/``delete`` commands, change exactly what the decoded path's
bulk writes change; a refused statement is its own document's failure whatever command it
went in; a statement larger than MongoDB takes is refused with one line; the migration's
filter still keeps the write inside the subset; commands stay within their statement limit.
"""

from __future__ import annotations

import datetime as dt
import itertools

import bson
import pymongo
import pytest
from bson import Binary, Code, DatetimeMS, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex
from bson.raw_bson import RawBSONDocument
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.write_concern import WriteConcern

from cdc_migrator import DELETE, UNSET, migration
from cdc_migrator.apply import applier as applier_module
from cdc_migrator.apply.applier import MAX_STATEMENT_BYTES, Applier
from cdc_migrator.base.codec import CODEC_OPTIONS
from cdc_migrator.migration import _defined

from ..harness import CommandRecorder, examples

RAW_OPTIONS = CODEC_OPTIONS.with_options(document_class=RawBSONDocument)
_names = itertools.count()


def make(fn, **options):
    m = migration(collection="things", **options)(fn)
    _defined.remove(m)
    return m


def raw(doc) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(doc, codec_options=CODEC_OPTIONS), RAW_OPTIONS)


def stored_bytes(collection) -> list[bytes]:
    return [d.raw for d in collection.with_options(codec_options=RAW_OPTIONS).find(
        sort=[("_id", 1)])]


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=6)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**31, 2**31 - 1),
    st.builds(Int64, st.integers(-2**63, 2**63 - 1)), st.floats(allow_nan=True),
    st.sampled_from([Decimal128("NaN"), Decimal128("0.1")]), text,
    st.builds(Binary, st.binary(max_size=8), st.just(0)),
    st.builds(lambda b: Binary(b, 3), st.binary(min_size=16, max_size=16)), st.uuids(),
    st.builds(ObjectId),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                 timezones=st.just(dt.UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    st.builds(DatetimeMS, st.sampled_from([2**62, -(2**62)])),
    st.builds(Regex, text, st.sampled_from(["", "i"])), st.builds(Code, text),
    st.just(MinKey()), st.just(MaxKey()),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("xy"), inner, max_size=2)),
    max_leaves=5)
# The local server refuses updates of documents with a "." or "$" name (docs/testing.md).
names = st.sampled_from(["a", "b", "c", "é"])
bodies = st.dictionaries(names, values, max_size=4)


@st.composite
def transforms(draw):
    reads = draw(st.lists(names, max_size=3))
    result = draw(st.one_of(st.just(DELETE), st.dictionaries(
        names, st.one_of(values, st.just(UNSET)), min_size=1, max_size=3)))

    def transform(doc, ctx):
        for name in reads:
            doc.get(name)
        return result

    return make(transform)


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bodies, transforms(), st.one_of(st.none(), st.tuples(names, values)))
def test_raw_statements_change_exactly_what_the_decoded_bulk_writes_change(
        db, body, m, change):
    """Both paths decide on the same document; the application may change one field before
    the writes; the two collections then hold the same bytes and the counts agree."""
    n = next(_names)
    by_raw, by_dict = (db[f"{path}{n}"].with_options(codec_options=CODEC_OPTIONS)
                       for path in ("raw", "dict"))
    doc = {"_id": 1, **body}
    for collection in (by_raw, by_dict):
        collection.insert_one(doc)
    raw_applier, dict_applier = Applier(m, by_raw, None), Applier(m, by_dict, None)
    decided_raw = raw_applier.decide_documents([raw(doc)])
    decided_dict = dict_applier.decide_documents([doc])
    if change is not None:
        for collection in (by_raw, by_dict):
            collection.update_one({"_id": 1}, {"$set": {change[0]: change[1]}})
    result_raw = raw_applier.write(decided_raw)
    result_dict = dict_applier.write(decided_dict)
    assert result_raw.counts() == result_dict.counts(), (result_raw, result_dict)
    assert stored_bytes(by_raw) == stored_bytes(by_dict)


def test_a_refused_statement_is_its_own_documents_failure_and_the_others_are_written(db):
    db.things.create_index("email", unique=True, sparse=True)
    db.things.insert_many([{"_id": i, "name": f"u{i}"} for i in range(6)]
                          + [{"_id": 99, "email": "taken"}])
    # A delete first: the updates' command then holds statements 1 to 5 of the batch.
    m = make(lambda d, c: DELETE if d["_id"] == 0 else {
        "email": "taken" if d["_id"] in (2, 4) else f"{d['name']}@x"})
    docs = [raw(d) for d in db.things.find({"_id": {"$lt": 99}}, sort=[("_id", 1)])]
    result = Applier(m, db.things, None).apply_documents(docs)
    assert (result.updated, result.deleted) == (3, 1)
    assert sorted(f.id for f in result.failures) == [2, 4]
    assert all(f.error.startswith("write refused (11000)") for f in result.failures)
    assert db.things.find_one({"_id": 5})["email"] == "u5@x"
    assert "email" not in db.things.find_one({"_id": 4})


def test_the_migrations_filter_keeps_a_raw_write_inside_the_subset(db):
    db.things.insert_many([{"_id": 1, "tier": "free"}, {"_id": 2, "tier": "free"}])
    m = make(lambda d, c: {"role": "member"}, filter={"tier": "free"})
    applier = Applier(m, db.things, None)
    decided = applier.decide_documents([raw(d) for d in db.things.find(sort=[("_id", 1)])])
    db.things.update_one({"_id": 2}, {"$set": {"tier": "paid"}})
    result = applier.write(decided)
    assert result.updated == 1 and result.missing == 0
    assert [d.get("role") for d in db.things.find(sort=[("_id", 1)])] == ["member", None]


@pytest.fixture
def recorded(db):
    """A recorder of commands and the ``things`` collection through a client it listens to."""
    recorder = CommandRecorder()
    client = pymongo.MongoClient(*db.client.address, directConnection=True,
                                 event_listeners=[recorder])
    try:
        yield recorder, client[db.name].things
    finally:
        client.close()


def test_raw_updates_and_deletes_are_split_into_commands_within_the_statement_limit(
        db, recorded, monkeypatch):
    monkeypatch.setattr(applier_module, "MAX_WRITE_BATCH", 2)
    recorder, things = recorded
    db.things.insert_many([{"_id": i, "gone": i % 3 == 0} for i in range(7)])
    m = make(lambda d, c: DELETE if d["gone"] else {"done": True})
    result = Applier(m, things, None).apply_documents(
        [raw(d) for d in db.things.find(sort=[("_id", 1)])])
    assert (result.updated, result.deleted) == (4, 3)
    assert sorted(d["_id"] for d in db.things.find({"done": True})) == [1, 2, 4, 5]
    sent = [(name, len(c[name + "s"]), c["ordered"]) for name, c in recorder.commands
            if name in ("update", "delete")]
    assert sent == [("update", 2, False), ("update", 2, False), ("delete", 2, False),
                    ("delete", 1, False)]


def test_a_raw_statement_larger_than_mongodb_takes_is_refused_in_one_line(db):
    big = "x" * (MAX_STATEMENT_BYTES // 2 + 1)
    db.things.insert_one({"_id": 1, "text": big})
    m = make(lambda d, c: {"copy": d["text"]})
    result = Applier(m, db.things, None).apply_documents([raw(db.things.find_one())])
    [failure] = result.failures
    assert "larger than MongoDB accepts for one statement" in failure.error
    assert "\n" not in failure.error and "copy" not in db.things.find_one()


def test_raw_images_and_documents_read_from_the_server_are_written_in_one_batch(db):
    db.things.insert_many([{"_id": i, "n": i} for i in range(4)])
    m = make(lambda d, c: {"n": d["n"] + 10})
    result = Applier(m, db.things, None).apply_ids(
        [0, 1, 2, 3], images={0: raw({"_id": 0, "n": 0}), 2: raw({"_id": 2, "n": 2})})
    assert result.updated == 4 and not result.failures
    assert [d["n"] for d in db.things.find(sort=[("_id", 1)])] == [10, 11, 12, 13]


@pytest.mark.parametrize("concern", [{"w": 1}, {"w": 1, "j": True}])
def test_raw_commands_carry_the_collections_write_concern(db, recorded, concern):
    recorder, things = recorded
    db.things.insert_one({"_id": 1})
    collection = things.with_options(write_concern=WriteConcern(**concern))
    Applier(make(lambda d, c: {"x": 1}), collection, None).apply_documents([raw({"_id": 1})])
    [update] = recorder.named("update")
    assert update["writeConcern"] == concern and db.things.find_one()["x"] == 1


def test_large_raw_statements_go_in_commands_that_mongodb_takes(db, recorded):
    """Statements of 12 MiB: one a command. One of almost 16 MiB, more than a command's body
    may hold beside the command's own fields, is written by itself. (Not over 16 MiB: the
    local server closes the connection on a statement over 16 MiB, see docs/testing.md.)"""
    recorder, things = recorded
    mib = 1 << 20
    db.things.insert_many([{"_id": 1, "text": "a" * (6 * mib)},
                           {"_id": 2, "text": "b" * (6 * mib)},
                           {"_id": 3, "text": "c" * (8 * mib - 2048)}])
    m = make(lambda d, c: {"copy": d["text"]})
    result = Applier(m, things, None).apply_documents(
        [raw(d) for d in db.things.find(sort=[("_id", 1)])])
    assert result.updated == 3 and not result.failures
    assert all(d["copy"] == d["text"] for d in db.things.find())
    assert len(recorder.named("update")) >= 3
