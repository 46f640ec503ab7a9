"""The consumer's decoder (:func:`cdc_migrator.core.events.decode_raw`): the same envelopes and
the same poison records as :func:`~cdc_migrator.core.events.decode`, with the documents left as
their BSON bytes. No Kafka, no MongoDB."""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import bson
import fastavro
import pytest
from bson import Int64, ObjectId, Regex, Timestamp
from bson.errors import InvalidBSON
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cdc_migrator.core import events
from cdc_migrator.core.events import (
    CODEC_OPTIONS,
    Envelope,
    EventSource,
    Operation,
    PoisonRecord,
    RawDocument,
    decode,
    decode_raw,
    encode,
    key_bytes,
)
from cdc_migrator.core.rawdoc import document_id

from ..harness import ROOT, examples
from .test_events import _SCALARS, _TEXT, _VALUES, assert_same, documents

_IDS = _SCALARS.filter(lambda v: not isinstance(v, (list, Regex)))
_TIMESTAMPS = st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    """Any envelope the schema can carry: every source and operation, with or without a
    document, a batch of documents, a resume token, a fence id, a dependency."""
    batch = draw(st.none() | st.lists(documents(), min_size=1, max_size=4))
    return Envelope(
        migration=draw(_TEXT), source=draw(st.sampled_from(list(EventSource))),
        operation=draw(st.sampled_from(list(Operation))), database=draw(_TEXT),
        collection=draw(_TEXT), key=draw(_IDS) if batch is None else batch[0]["_id"],
        document=draw(st.none() | documents()) if batch is None else None,
        cluster_time=draw(st.none() | _TIMESTAMPS),
        resume_token=draw(st.none() | st.dictionaries(st.just("_data"), _VALUES, min_size=1)),
        emitted_at=draw(st.integers(-(2**63), 2**63 - 1)), fence_id=draw(st.none() | _TEXT),
        documents=batch, dependency=draw(st.none() | _TEXT))


def _plain(document: Any) -> Any:
    """A document as the applier reads it (a raw one decoded with CODEC_OPTIONS)."""
    return dict(document) if isinstance(document, RawDocument) else document


def assert_same_decoding(data: bytes) -> None:
    """``decode_raw(data)`` is ``decode(data)``: the same envelope (documents compared once
    decoded, the raw ones decoded with CODEC_OPTIONS and their _id read from their bytes), or
    the same PoisonRecord."""
    try:
        want = decode(data)
    except PoisonRecord as exc:
        with pytest.raises(PoisonRecord) as raised:
            decode_raw(data)
        assert str(raised.value) == str(exc)
        return
    got = decode_raw(data)
    for f in dataclasses.fields(Envelope):
        if f.name not in ("document", "documents"):
            assert_same(getattr(want, f.name), getattr(got, f.name), f.name)
    assert (got.document is None) == (want.document is None)
    if want.document is not None:
        assert_same(want.document, _plain(got.document), "document")
    assert (got.documents is None) == (want.documents is None)
    for wanted, raw in zip(want.documents or [], got.documents or [], strict=True):
        assert_same(wanted, _plain(raw), "documents[]")
        if "_id" in wanted:
            assert_same(wanted["_id"], document_id(raw), "documents[]._id")
        else:  # as decode's document has none
            with pytest.raises(KeyError):
                document_id(raw)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes())
def test_property_decode_raw_gives_what_decode_gives(envelope: Envelope) -> None:
    data = encode(envelope)
    got = decode_raw(data)
    assert all(type(d) is RawDocument for d in
               [got.document] * (got.document is not None) + (got.documents or []))
    assert_same_decoding(data)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(documents(), min_size=1, max_size=5), _TIMESTAMPS,
       st.sampled_from(["snapshot_batch", "change", "dependency", "fence"]))
def test_property_decode_raw_reads_what_the_producers_write(docs: list[dict[str, Any]],
                                                            ts: Timestamp, form: str) -> None:
    encoder = events.RawEncoder("m", "app", "users")
    if form == "snapshot_batch":
        _, data = encoder.snapshot_batch(docs)
    elif form == "change":
        _, data = encoder.change({"_id": {"_data": "82"}, "operationType": "replace",
                                  "documentKey": {"_id": docs[0]["_id"]},
                                  "fullDocument": docs[0], "clusterTime": ts})
    elif form == "dependency":
        _, data = encoder.dependency(docs[0]["_id"], "orders", ts)
    else:
        data = encode(Envelope.fence("m", "app", "users", "f-1"))
    assert_same_decoding(data)


_V1 = json.loads((ROOT / "schemas" / "envelope.v1.avsc").read_text())
_V1_HEADER = b"\xc3\x01" + bytes.fromhex(fastavro.schema.fingerprint(
    fastavro.schema.to_parsing_canonical_form(_V1), "CRC-64-AVRO"))
_V1_SCHEMA = fastavro.parse_schema(_V1)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes())
def test_property_records_of_the_previous_schema_decode_as_decode_reads_them(
        envelope: Envelope) -> None:
    assume(envelope.source is not EventSource.DEPENDENCY)  # no such symbol in version 1
    out = io.BytesIO()
    out.write(_V1_HEADER)
    fastavro.schemaless_writer(out, _V1_SCHEMA, {
        "migration": envelope.migration, "source": envelope.source.value,
        "operation": envelope.operation.value, "database": envelope.database,
        "collection": envelope.collection, "key": key_bytes(envelope.key),
        "document": None if envelope.document is None else events.encode_document(
            envelope.document),
        "cluster_time": None, "resume_token": None, "emitted_at": envelope.emitted_at,
        "fence_id": envelope.fence_id,
        "documents": None if envelope.documents is None else [
            events.encode_document(d) for d in envelope.documents]})
    assert_same_decoding(out.getvalue())


def assert_same_or_read_fails(data: bytes) -> None:
    """:func:`assert_same_decoding`, but for the one case where ``decode_raw`` hands on what
    ``decode`` calls poison: a document framed right (length prefix, terminator) whose BSON is
    invalid inside. Reading that document must then fail."""
    try:
        got = decode_raw(data)
    except PoisonRecord:
        got = None
    try:
        decode(data)
    except PoisonRecord as exc:
        if got is not None and str(exc).startswith("invalid BSON in document"):
            raw = [got.document] if got.documents is None else got.documents
            with pytest.raises(InvalidBSON):
                for document in raw:
                    dict(document)
            return
    assert_same_decoding(data)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes(), st.data())
def test_property_corrupt_records_are_poison_exactly_when_decode_says_so(
        envelope: Envelope, data: st.DataObject) -> None:
    good = encode(envelope)
    mutated = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "drop"]))
        if how == "flip":
            mutated[at] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            del mutated[at:]
        elif how == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        else:
            del mutated[at]
        if not mutated:
            break
    assert_same_or_read_fails(bytes(mutated))


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=64))
def test_property_any_body_after_a_valid_header_decodes_as_decode_decodes(body: bytes) -> None:
    assert_same_or_read_fails(b"\xc3\x01" + events.SCHEMA_FINGERPRINT + body)


@pytest.mark.parametrize("value", [None, b"", b"\xc3\x01", b"junk" * 4, bytearray(b"\xc3\x01"),
                                   encode(Envelope.fence("m", "d", "c", "f")) + b"\x00"],
                         # The fence's bytes hold the time it was made: named by their place,
                         # the ids are the same in every pytest-xdist worker.
                         ids=["none", "empty", "header", "junk", "bytearray", "trailing-byte"])
def test_poison_values_are_the_same_poison(value: Any) -> None:
    with pytest.raises(PoisonRecord) as want:
        decode(value)
    with pytest.raises(PoisonRecord) as got:
        decode_raw(value)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("document", [
    {"_id": ObjectId("65f1a2b3c4d5e6f708192a3b"), "a": 1},
    {"_id": 7, "a": 1},
    {"_id": -(2**31)},
    {"_id": Int64(7)},
    {"_id": 7.0},
    {"_id": True},
    {"_id": "7"},
    {"a": 1, "_id": 7},  # _id not first: read from the decoded document
    {"a": {"_id": 1}, "_id": ObjectId("65f1a2b3c4d5e6f708192a3b")},
])
def test_document_id_is_the_decoded_documents_id_of_the_same_type(document: dict) -> None:
    raw = RawDocument(events.encode_document(document),
                      CODEC_OPTIONS.with_options(document_class=RawDocument))
    assert_same(document["_id"], document_id(raw))
    assert_same(document["_id"], document_id(document))


def test_a_raw_document_reads_as_the_dict_decode_gives() -> None:
    document = {"_id": 1, "sub": {"a": [1, {"b": 2}]}, "u": bson.Binary(b"x" * 16, 4)}
    _, data = events.RawEncoder("m", "app", "users").snapshot_batch([document])
    got = decode_raw(data).documents
    assert got is not None
    assert_same(decode(data).documents, [dict(d) for d in got])
    assert type(got[0]["sub"]) is dict  # not a raw sub-document: the transform may change it


def test_a_document_framed_right_but_invalid_inside_is_handed_on_and_fails_when_read() -> None:
    good = events.encode_document({"_id": 2, "a": "xyz"})
    bad = good.replace(b"\x04\x00\x00\x00xyz", b"\x09\x00\x00\x00xyz")  # string overruns
    record = encode(Envelope("m", EventSource.BACKFILL, Operation.SNAPSHOT, "app", "users", 1,
                             None, None, None, 5, None, [{"_id": 1}, {"_id": 2, "a": "xyz"}]))
    record = record.replace(good, bad)
    with pytest.raises(PoisonRecord, match="invalid BSON in documents"):
        decode(record)
    got = decode_raw(record).documents
    assert got is not None and dict(got[0]) == {"_id": 1}
    assert document_id(got[1]) == 2  # read from its bytes
    with pytest.raises(InvalidBSON):
        dict(got[1])


@pytest.mark.parametrize("form", ["change", "batch", "fence"])
def test_every_single_byte_substitution_decodes_as_decode_decodes(form: str) -> None:
    """Every byte of a record replaced by each of a few values (union branches, enum indexes,
    lengths and varints all pass through them) gives decode's envelope or decode's poison."""
    if form == "change":
        envelope = dataclasses.replace(
            Envelope.fence("m", "app", "c", "f"), source=EventSource.CHANGE,
            operation=Operation.UPDATE, key=7, document={"_id": 7, "a": [1, "x"]},
            cluster_time=Timestamp(5, 1), resume_token={"_data": "82"}, fence_id=None,
            dependency="orders")
    elif form == "batch":
        envelope = Envelope("m", EventSource.BACKFILL, Operation.SNAPSHOT, "app", "c", 1, None,
                            None, None, 300, None, [{"_id": 1, "a": 2.5}, {"_id": 2}])
    else:
        envelope = Envelope.fence("m", "app", "c", "f")
    data = encode(envelope)
    for at in range(len(data)):
        for value in (0x00, 0x01, 0x02, 0x03, 0x04, 0x7F, 0x80, 0xFF):
            mutated = bytearray(data)
            mutated[at] = value
            assert_same_or_read_fails(bytes(mutated))
