"""Unit tests for cdc_migrator.core.events: the Avro event envelope, and records of the schema's
earlier version. No Kafka, no MongoDB."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import re
import struct
import time
import uuid
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import bson
import fastavro
import pytest
from bson import SON, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.binary import Binary, BinaryVectorDtype
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from fastavro.schema import parse_schema, to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_migrator.core import events
from cdc_migrator.core.events import (
    CODEC_OPTIONS,
    SCHEMA_FINGERPRINT,
    Envelope,
    EventSource,
    Operation,
    PoisonRecord,
    decode,
    decode_key,
    encode,
    key_bytes,
)
from cdc_migrator.testing import change_envelope, snapshot_envelope

from ..harness import ROOT, examples

SCHEMA_FILE = ROOT / "schemas" / "envelope.avsc"  # the one people read and edit
SCHEMA_JSON = json.loads(SCHEMA_FILE.read_text())
# Parsed independently of the module, straight from the .avsc (logical type included).
SCHEMA = parse_schema(SCHEMA_JSON)
HEADER = b"\xc3\x01" + SCHEMA_FINGERPRINT

# Datetime range in BSON milliseconds; outside it DATETIME_AUTO gives DatetimeMS.
MIN_DATETIME_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_DATETIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


# --------------------------------------------------------------------------- helpers


def assert_same(expected: Any, actual: Any, path: str = "$") -> None:
    """Equal by value AND Python type, recursively, with dict key order (== checks neither)."""
    assert type(actual) is type(expected), (
        f"{path}: type {type(actual).__name__} != {type(expected).__name__}"
    )
    if isinstance(expected, dict):
        assert list(actual) == list(expected), (
            f"{path}: key order {list(actual)} != {list(expected)}"
        )
        for k in expected:
            assert_same(expected[k], actual[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{path}[{i}]")
    elif isinstance(expected, float):  # bit-exact: NaN, -0.0
        assert struct.pack("<d", actual) == struct.pack("<d", expected), f"{path}: {actual!r}"
    elif isinstance(expected, Code):
        assert str(actual) == str(expected), path
        assert_same(expected.scope, actual.scope, f"{path}.$scope")
    elif isinstance(expected, DBRef):
        assert_same(dict(expected.as_doc()), dict(actual.as_doc()), f"{path}.$dbref")
    elif isinstance(expected, datetime):
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        assert actual.utcoffset() == expected.utcoffset(), path
    elif isinstance(expected, Regex):
        assert (actual.pattern, actual.flags) == (expected.pattern, expected.flags), path
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def assert_same_envelope(expected: Envelope, actual: Envelope) -> None:
    for f in dataclasses.fields(Envelope):
        assert_same(getattr(expected, f.name), getattr(actual, f.name), f.name)


def make(**overrides: Any) -> Envelope:
    fields = dict(
        migration="users-v2",
        source=EventSource.CHANGE,
        operation=Operation.UPDATE,
        database="app",
        collection="users",
        key=ObjectId("65f1a2b3c4d5e6f708192a3b"),
        document={"_id": ObjectId("65f1a2b3c4d5e6f708192a3b"), "name": "Ada"},
        cluster_time=Timestamp(1_718_000_000, 7),
        resume_token={"_data": "8266A1B2C3000000072B022C0100296E5A1004"},
        emitted_at=1_718_000_000_123,
        fence_id=None,
    )
    fields.update(overrides)
    return Envelope(**fields)


def raw_record(**overrides: Any) -> dict[str, Any]:
    """A valid Avro record dict for the schema (bytes fields already BSON), with overrides."""
    record = {
        "migration": "m",
        "source": "change",
        "operation": "insert",
        "database": "app",
        "collection": "users",
        "key": key_bytes(1),
        "document": bson.encode({"_id": 1, "x": "y"}),
        "cluster_time": 5,
        "resume_token": bson.encode({"_data": "82"}),
        "emitted_at": 1_700_000_000_000,
        "fence_id": None,
    }
    record.update(overrides)
    return record


def write_raw(record: dict[str, Any], header: bytes = HEADER) -> bytes:
    out = io.BytesIO()
    out.write(header)
    fastavro.schemaless_writer(out, SCHEMA, record)
    return out.getvalue()


def crc64_avro(data: bytes) -> int:
    """Independent implementation of the Avro spec's CRC-64-AVRO (Rabin) fingerprint."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


# --------------------------------------------------------------------------- every BSON type

OID = ObjectId("65f1a2b3c4d5e6f708192a3b")
UUID4 = uuid.UUID("6c8b1e2a-3f4d-4e5f-8a9b-0c1d2e3f4a5b")

ALL_TYPES: dict[str, Any] = {
    "first": "a field before _id: top-level order must survive",
    "_id": OID,
    "double": 3.141592653589793,
    "double_neg_zero": -0.0,
    "double_inf": math.inf,
    "double_ninf": -math.inf,
    "double_nan": math.nan,
    "double_tiny": 5e-324,
    "string": "héllo wörld ✓ 𝄞 中文",
    "string_with_nul": "a\x00b",
    "string_empty": "",
    "document": {"z": 1, "a": 2, "m": {"y": None, "b": [1, {"c": "d"}]}},
    "document_empty": {},
    "array": [1, "two", 3.0, None, True, {"x": []}, [[]]],
    "array_empty": [],
    "binary_generic": b"\x00\x01\xfe\xff",
    "binary_generic_empty": b"",
    "binary_function": Binary(b"\x01\x02", 1),
    "binary_old": Binary(b"old binary", 2),
    "binary_uuid_legacy": Binary(UUID4.bytes, 3),
    "uuid": UUID4,
    "binary_md5": Binary(bytes(range(16)), 5),
    "binary_encrypted": Binary(b"\x01ciphertext", 6),
    "binary_column": Binary(b"compressed", 7),
    "binary_sensitive": Binary(b"secret", 8),
    "binary_vector": Binary.from_vector([1, -2, 3], BinaryVectorDtype.INT8),
    "binary_user_defined": Binary(b"custom", 0x80),
    "binary_user_defined_max": Binary(b"custom", 0xFF),
    "objectid": ObjectId("000000000000000000000000"),
    "bool_true": True,
    "bool_false": False,
    "datetime": datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=UTC),
    "datetime_epoch": datetime(1970, 1, 1, tzinfo=UTC),
    "datetime_pre_epoch": datetime(1969, 7, 20, 20, 17, 40, 1000, tzinfo=UTC),
    "datetime_min": datetime(1, 1, 1, tzinfo=UTC),
    "datetime_max": datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    "date_just_after_max": DatetimeMS(MAX_DATETIME_MS + 1),
    "date_just_before_min": DatetimeMS(MIN_DATETIME_MS - 1),
    "date_int64_max": DatetimeMS(2**63 - 1),
    "date_int64_min": DatetimeMS(-(2**63)),
    "null": None,
    "regex": Regex("^a.*b$", "imsux"),
    "regex_no_flags": Regex("[0-9]+", 0),
    "code": Code("function () { return 1; }"),
    "code_with_scope": Code("function () { return x; }", {"x": 1, "nested": {"y": [1, 2]}}),
    "code_with_empty_scope": Code("f()", {}),
    "int32": 42,
    "int32_min": -(2**31),
    "int32_max": 2**31 - 1,
    "timestamp": Timestamp(1_718_000_000, 7),
    "timestamp_zero": Timestamp(0, 0),
    "timestamp_max": Timestamp(2**32 - 1, 2**32 - 1),
    "int64": Int64(2**40),
    "int64_small": Int64(5),
    "int64_min": Int64(-(2**63)),
    "int64_max": Int64(2**63 - 1),
    "decimal": Decimal128("1234.5678"),
    "decimal_nan": Decimal128("NaN"),
    "decimal_neg_zero": Decimal128("-0"),
    "decimal_neg_inf": Decimal128("-Infinity"),
    "decimal_max": Decimal128("9.999999999999999999999999999999999E+6144"),
    "decimal_min_exponent": Decimal128("1E-6176"),
    "minkey": MinKey(),
    "maxkey": MaxKey(),
    "dbref": DBRef("users", OID),
    "dbref_full": DBRef("users", 5, "otherdb", extra="x", more={"n": 1}),
    "dollar and dot keys": {"$set": 1, "a.b": 2, "": 3},
}


def test_all_types_document_round_trips_by_value_type_and_order() -> None:
    env = make(document=ALL_TYPES)
    got = decode(encode(env))
    assert_same(ALL_TYPES, got.document)
    assert list(got.document)[:2] == ["first", "_id"]
    assert_same_envelope(env, got)


@pytest.mark.parametrize("name", list(ALL_TYPES))
def test_each_bson_type_round_trips_as_key_and_value(name: str) -> None:
    value = ALL_TYPES[name]
    got = decode(encode(make(key=value, document={"v": value})))
    assert_same(value, got.document["v"])
    assert_same(value, got.key)
    assert_same(value, decode_key(key_bytes(value)))


def test_all_types_survive_in_nested_documents_and_arrays() -> None:
    doc = {"nested": {"level2": dict(ALL_TYPES)}, "array": list(ALL_TYPES.values())}
    assert_same(doc, decode(encode(make(document=doc))).document)


def test_wire_form_is_stable_under_re_encoding() -> None:
    data = encode(make(document=ALL_TYPES))
    assert encode(decode(data)) == data


def test_driver_decoded_forms() -> None:
    # Documented driver behaviour callers rely on: inputs that are not the canonical decoded
    # type come back as the canonical one, with the same BSON.
    doc = {
        "binary_subtype4": Binary(UUID4.bytes, 4),
        "binary_subtype0": Binary(b"x", 0),
        "big_int": 2**40,
        "son": SON([("b", 1), ("a", 2)]),
        "tuple": (1, 2),
    }
    got = decode(encode(make(document=doc))).document
    assert_same(UUID4, got["binary_subtype4"])
    assert_same(b"x", got["binary_subtype0"])
    assert_same(Int64(2**40), got["big_int"])
    assert_same({"b": 1, "a": 2}, got["son"])
    assert_same([1, 2], got["tuple"])


def test_decoded_datetimes_are_utc_aware() -> None:
    got = decode(encode(make(document={"d": datetime(2024, 1, 1, 12, tzinfo=UTC)}))).document
    assert got["d"].tzinfo is not None and got["d"].utcoffset().total_seconds() == 0


# --------------------------------------------------------------------------- keys

IDS: list[Any] = [
    ObjectId("65f1a2b3c4d5e6f708192a3b"),
    "user-42",
    "",
    42,
    -(2**31),
    Int64(42),
    Int64(2**62),
    3.5,
    UUID4,
    Binary(UUID4.bytes, 3),
    b"\x00raw",
    {"tenant": "acme", "id": 7},
    {"id": 7, "tenant": "acme"},
    datetime(2024, 5, 1, tzinfo=UTC),
    DatetimeMS(2**62),
    Decimal128("10.50"),
    Timestamp(1, 2),
    True,
    None,
    MinKey(),
    MaxKey(),
    Regex("^x", "i"),
]


def copy_of(value: Any) -> Any:
    """An equal value built independently (not the same object)."""
    return bson.decode(bson.encode({"v": value}, codec_options=CODEC_OPTIONS), CODEC_OPTIONS)["v"]


@pytest.mark.parametrize("_id", IDS, ids=repr)
def test_ids_round_trip_as_keys(_id: Any) -> None:
    kb = key_bytes(_id)
    assert_same(_id, decode_key(kb))
    assert kb == key_bytes(copy_of(_id)), "equal ids must give equal key bytes"
    assert bson.decode(kb, codec_options=CODEC_OPTIONS) == {"_id": _id}
    env = make(key=_id, document={"_id": _id, "v": 1})
    data = encode(env)
    got = decode(data)
    assert_same(_id, got.key)
    assert_same(env.document, got.document)
    # The key field inside the record is exactly the Kafka record key.
    body = fastavro.schemaless_reader(io.BytesIO(data[10:]), SCHEMA)
    assert body["key"] == kb


def test_key_bytes_golden_and_type_sensitive() -> None:
    assert key_bytes("a") == b"\x10\x00\x00\x00\x02_id\x00\x02\x00\x00\x00a\x00\x00"
    # Distinct BSON types are distinct keys, as are compound ids in a different field order
    # (MongoDB also treats those as different _id values).
    assert len({key_bytes(1), key_bytes(Int64(1)), key_bytes(1.0), key_bytes(True)}) == 4
    assert key_bytes({"a": 1, "b": 2}) != key_bytes({"b": 2, "a": 1})
    assert key_bytes(ObjectId(str(OID))) == key_bytes(OID)


def test_key_bytes_rejects_unencodable_ids() -> None:
    with pytest.raises(ValueError, match="not BSON-encodable"):
        key_bytes(2**64)
    with pytest.raises(ValueError, match="not BSON-encodable"):
        key_bytes(object())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        None,
        b"\x05\x00\x00\x00",
        b"garbage bytes!",
        bson.encode({"x": 1}),
        bson.encode({"_id": 1, "x": 2}),
        bson.encode({}),
        key_bytes(1)[:-1],
    ],
    ids=repr,
)
def test_decode_key_rejects_non_keys(data: Any) -> None:
    with pytest.raises(PoisonRecord):
        decode_key(data)


# --------------------------------------------------------------------------- wire format


def test_header_is_single_object_encoding_with_crc64_avro_fingerprint() -> None:
    # Check the independent CRC against the Avro spec's test vector for "null".
    assert crc64_avro(b'"null"') == 7195948357588979594
    canonical = to_parsing_canonical_form(SCHEMA_JSON)
    expected_fp = crc64_avro(canonical.encode()).to_bytes(8, "little")
    data = encode(make())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected_fp == SCHEMA_FINGERPRINT


def test_body_is_standard_avro_readable_by_plain_fastavro() -> None:
    env = make()
    data = encode(env)
    body = fastavro.schemaless_reader(io.BytesIO(data[10:]), SCHEMA)
    assert body["migration"] == "users-v2"
    assert body["source"] == "change" and body["operation"] == "update"
    assert body["emitted_at"] == datetime(2024, 6, 10, 6, 13, 20, 123000, tzinfo=UTC)
    assert body["cluster_time"] == (1_718_000_000 << 32) | 7
    assert bson.decode(body["resume_token"]) == env.resume_token
    assert bson.decode(body["document"], CODEC_OPTIONS) == env.document


def test_decodes_records_written_by_plain_fastavro_with_logical_type() -> None:
    when = datetime(2024, 6, 10, 6, 13, 20, 123000, tzinfo=UTC)
    got = decode(write_raw(raw_record(emitted_at=when, fence_id="f1", source="fence")))
    assert got.emitted_at == 1_718_000_000_123
    assert got.source is EventSource.FENCE and got.fence_id == "f1"
    assert got.operation is Operation.INSERT
    assert got.key == 1 and got.document == {"_id": 1, "x": "y"}
    assert got.cluster_time == Timestamp(0, 5)


@pytest.mark.parametrize(
    "ts",
    [
        Timestamp(0, 0),
        Timestamp(1, 0),
        Timestamp(0, 1),
        Timestamp(2**31 - 1, 2**32 - 1),
        Timestamp(2**31, 0),
        Timestamp(2**32 - 1, 2**32 - 1),
        Timestamp(1_718_000_000, 42),
    ],
    ids=repr,
)
def test_cluster_time_packing(ts: Timestamp) -> None:
    data = encode(make(cluster_time=ts))
    assert decode(data).cluster_time == ts
    packed = fastavro.schemaless_reader(io.BytesIO(data[10:]), SCHEMA)["cluster_time"]
    assert -(2**63) <= packed < 2**63
    assert packed & (2**64 - 1) == (ts.time << 32) | ts.inc


def test_optional_fields_null() -> None:
    env = make(document=None, cluster_time=None, resume_token=None, fence_id=None)
    assert_same_envelope(env, decode(encode(env)))


def test_decoded_field_types() -> None:
    got = decode(encode(make(fence_id="f")))
    assert got.source is EventSource.CHANGE and got.operation is Operation.UPDATE
    assert type(got.emitted_at) is int and type(got.cluster_time) is Timestamp
    assert type(got.resume_token) is dict and type(got.document) is dict
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.migration = "other"  # type: ignore[misc]


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode(make())
    assert decode(bytearray(data)) == decode(memoryview(data)) == decode(data)


@pytest.mark.parametrize(
    "change",
    [
        {"migration": None},
        {"database": b"app"},
        {"source": "bogus"},
        {"operation": "upsert"},
        {"emitted_at": 1.5},
        {"emitted_at": 2**63},
        {"key": 2**64},
        {"key": object()},
        {"document": [1, 2]},
        {"document": {"x": object()}},
        {"document": {"bad\x00key": 1}},
        {"resume_token": "token"},
        {"cluster_time": 123},
        {"fence_id": 5},
    ],
    # An object()'s repr holds its address, which differs from process to process: the ids
    # must be the same in every pytest-xdist worker (`make unit` runs several).
    ids=lambda change: re.sub(r" at 0x[0-9a-f]+", "", repr(change)),
)
def test_encode_rejects_envelopes_that_do_not_fit(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cannot encode envelope"):
        encode(make(**change))


# --------------------------------------------------------------------------- poison records


def assert_poison(data: Any, match: str | None = None) -> PoisonRecord:
    with pytest.raises(PoisonRecord) as info:
        decode(data)
    reason = str(info.value)
    assert reason and "\n" not in reason and len(reason) <= 300, reason
    if match:
        assert re.search(match, reason), reason
    assert isinstance(info.value, ValueError)
    return info.value


def test_poison_empty_and_none() -> None:
    assert_poison(b"", "empty")
    assert_poison(None, "NoneType")
    assert_poison("text", "str")


def test_poison_random_bytes() -> None:
    rng = random.Random(20240610)
    for size in (1, 2, 9, 10, 11, 50, 1000):
        for _ in range(20):
            assert_poison(rng.randbytes(size))


def test_poison_wrong_marker() -> None:
    data = encode(make())
    assert_poison(b"\xc3\x02" + data[2:], "marker c302")
    assert_poison(b"Obj\x01" + data[4:], "marker")
    assert_poison(json.dumps({"migration": "m"}).encode(), "marker")
    assert_poison(bson.encode({"_id": 1, "padding": "xxxxxxxx"}), "marker")


def test_poison_unknown_fingerprint() -> None:
    data = encode(make())
    for i in range(2, 10):
        mutated = bytearray(data)
        mutated[i] ^= 0x01
        assert_poison(bytes(mutated), "unknown schema fingerprint")


def test_poison_every_truncation() -> None:
    data = encode(make(document=ALL_TYPES, fence_id="f"))
    for n in range(len(data)):
        assert_poison(data[:n])


def test_poison_trailing_bytes() -> None:
    assert_poison(encode(make()) + b"\x00", "1 trailing bytes")
    assert_poison(encode(make()) * 2, "trailing bytes")


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("document", b"definitely not BSON", "invalid BSON in document"),
        ("document", bson.encode({"a": 1})[:-1], "invalid BSON in document"),
        ("document", bson.encode({"a": 1}) + b"\x00", "invalid BSON in document"),
        ("document", b"", "invalid BSON in document"),
        ("document", b"\x0c\x00\x00\x00\x02a\x00\x02\x00\x00\x00\xff\x00\x00", "invalid BSON"),
        ("key", b"not bson", "invalid BSON in key"),
        ("key", bson.encode({"id": 1}), "key field is not"),
        ("key", bson.encode({"_id": 1, "extra": 2}), "key field is not"),
        ("key", bson.encode({}), "key field is not"),
        ("resume_token", b"\x01\x02\x03", "invalid BSON in resume_token"),
    ],
)
def test_poison_bad_bson_inside_a_valid_avro_record(field: str, value: bytes, match: str) -> None:
    assert_poison(write_raw(raw_record(**{field: value})), match)


def test_poison_bad_avro_values() -> None:
    good = write_raw(raw_record(migration="m"))
    # Body starts: migration = len 1 (zigzag 0x02) 'm', then the source enum index (zigzag).
    assert good[10:13] == b"\x02m\x02"
    bad_enum = good[:12] + b"\x0a" + good[13:]  # index 5: EventSource has 3 symbols
    assert_poison(bad_enum, "malformed Avro body")
    bad_utf8 = good[:11] + b"\xff" + good[12:]
    assert_poison(bad_utf8, "malformed Avro body")
    negative_len = good[:10] + b"\x01" + good[11:]  # zigzag -1
    assert_poison(negative_len)
    huge_len = good[:10] + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + good[11:]
    assert_poison(huge_len)


def test_every_single_byte_mutation_is_an_envelope_or_poison() -> None:
    data = encode(make(document={"_id": 1, "a": [1, 2.5, "x"]}, fence_id="f"))
    for i in range(len(data)):
        for xor in (0x01, 0x80, 0xFF):
            mutated = bytearray(data)
            mutated[i] ^= xor
            try:
                decode(bytes(mutated))
            except PoisonRecord:
                pass


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_body_after_a_valid_header(body: bytes) -> None:
    try:
        got = decode(HEADER + body)
    except PoisonRecord:
        return
    assert isinstance(got, Envelope)


# --------------------------------------------------------------------------- constructors


def now_ms() -> int:
    return time.time_ns() // 1_000_000


RESUME_TOKEN = {
    "_data": "8266670B40000000012B022C0100296E5A1004A5093ABB38FE4B9EA67F01BB1A96D812463C5F6964"
    "003C36356631613262336334643565366637303831393261336200000004"
}
USER_ID = ObjectId("65f1a2b3c4d5e6f708192a3b")
FULL_DOCUMENT = {
    "_id": USER_ID,
    "email": "ada@example.com",
    "name": {"first": "Ada", "last": "Lovelace"},
    "created": datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    "balance": Decimal128("1234.56"),
    "tags": ["admin", "beta"],
}


def change_event(operation_type: str, **extra: Any) -> dict[str, Any]:
    """A change event shaped like pymongo's ChangeStream yields it (MongoDB 6+/7)."""
    event = {
        "_id": RESUME_TOKEN,
        "operationType": operation_type,
        "clusterTime": Timestamp(1_718_000_000, 3),
        "wallTime": datetime(2024, 6, 10, 6, 13, 20, 456000, tzinfo=UTC),
        "ns": {"db": "app", "coll": "users"},
        "documentKey": {"_id": USER_ID},
    }
    event.update(extra)
    return event


CHANGE_CASES = {
    "insert": (change_event("insert", fullDocument=FULL_DOCUMENT), FULL_DOCUMENT),
    "update_with_lookup": (
        change_event(
            "update",
            updateDescription={
                "updatedFields": {"email": "ada@example.com"},
                "removedFields": ["legacy"],
                "truncatedArrays": [],
            },
            fullDocument=FULL_DOCUMENT,
        ),
        FULL_DOCUMENT,
    ),
    "update_without_lookup": (
        change_event(
            "update",
            updateDescription={
                "updatedFields": {"n": 2},
                "removedFields": [],
                "truncatedArrays": [],
            },
        ),
        None,
    ),
    "update_lookup_found_nothing": (change_event("update", fullDocument=None), None),
    "replace": (change_event("replace", fullDocument=FULL_DOCUMENT), FULL_DOCUMENT),
    "delete": (change_event("delete"), None),
    "delete_with_pre_image": (
        change_event("delete", fullDocumentBeforeChange=FULL_DOCUMENT),
        None,
    ),
}


@pytest.mark.parametrize("case", list(CHANGE_CASES))
def test_change_maps_each_operation_type(case: str) -> None:
    event, expected_document = CHANGE_CASES[case]
    before = now_ms()
    env = change_envelope("users-v2", "app", "users", event)
    after = now_ms()
    assert env.migration == "users-v2"
    assert env.source is EventSource.CHANGE
    assert env.operation is Operation(event["operationType"])
    assert (env.database, env.collection) == ("app", "users")
    assert_same(USER_ID, env.key)
    assert_same(expected_document, env.document)
    assert env.cluster_time == Timestamp(1_718_000_000, 3)
    assert_same(RESUME_TOKEN, env.resume_token)
    assert before <= env.emitted_at <= after
    assert env.fence_id is None
    assert_same_envelope(env, decode(encode(env)))


def test_change_takes_only_id_from_a_sharded_document_key() -> None:
    event = change_event("delete", documentKey={"region": "eu", "_id": "user-1"})
    env = change_envelope("m", "app", "users", event)
    assert env.key == "user-1"
    assert decode_key(key_bytes(env.key)) == "user-1"


def test_change_accepts_raw_bson_events() -> None:
    event = RawBSONDocument(
        bson.encode(
            change_event("insert", fullDocument=FULL_DOCUMENT), codec_options=CODEC_OPTIONS
        ),
        CODEC_OPTIONS.with_options(document_class=RawBSONDocument),
    )
    env = change_envelope("m", "app", "users", event)
    assert type(env.document) is dict and type(env.resume_token) is dict
    assert_same(FULL_DOCUMENT, env.document)
    assert_same(RESUME_TOKEN, env.resume_token)
    assert_same_envelope(env, decode(encode(env)))


@pytest.mark.parametrize(
    "event",
    [
        change_event("drop"),
        change_event("rename", to={"db": "app", "coll": "users2"}),
        change_event("dropDatabase"),
        change_event("invalidate"),
        {"operationType": None},
        {},
    ],
    ids=lambda e: repr(e.get("operationType")),
)
def test_change_rejects_unsupported_operation_types(event: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="operationType"):
        change_envelope("m", "app", "users", event)


def test_change_rejects_malformed_events() -> None:
    with pytest.raises(ValueError, match="documentKey"):
        change_envelope("m", "app", "users", {"operationType": "insert", "fullDocument": {}})
    with pytest.raises(ValueError, match="clusterTime"):
        change_envelope("m", "app", "users", change_event("delete", clusterTime=12))
    with pytest.raises(ValueError, match="resume token"):
        change_envelope("m", "app", "users", change_event("delete", _id="token"))
    with pytest.raises(ValueError, match="fullDocument"):
        change_envelope("m", "app", "users", change_event("insert", fullDocument=[1]))


def test_snapshot() -> None:
    doc = {"name": "Ada", "_id": USER_ID, "n": Int64(3)}  # _id deliberately not first
    before = now_ms()
    env = snapshot_envelope("users-v2", "app", "users", doc)
    after = now_ms()
    assert env.source is EventSource.BACKFILL and env.operation is Operation.SNAPSHOT
    assert_same(USER_ID, env.key)
    assert env.document is doc
    assert env.cluster_time is None and env.resume_token is None and env.fence_id is None
    assert before <= env.emitted_at <= after
    got = decode(encode(env))
    assert_same_envelope(env, got)
    assert list(got.document) == ["name", "_id", "n"]


def test_snapshot_with_cluster_time_and_other_mappings() -> None:
    son = SON([("_id", 1), ("z", {"b": 1, "a": 2})])
    env = snapshot_envelope("m", "app", "users", son, cluster_time=Timestamp(9, 1))
    assert type(env.document) is dict
    assert_same({"_id": 1, "z": {"b": 1, "a": 2}}, env.document)
    assert decode(encode(env)).cluster_time == Timestamp(9, 1)
    raw = RawBSONDocument(bson.encode({"_id": "r", "x": [1]}))
    assert_same({"_id": "r", "x": [1]}, snapshot_envelope("m", "a", "b", raw).document)


def test_snapshot_requires_an_id() -> None:
    with pytest.raises(ValueError, match="_id"):
        snapshot_envelope("m", "app", "users", {"name": "no id"})
    with pytest.raises(ValueError, match="mapping"):
        snapshot_envelope("m", "app", "users", [("_id", 1)])  # type: ignore[arg-type]


def test_fence() -> None:
    before = now_ms()
    env = Envelope.fence("users-v2", "app", "users", "cutover-0001")
    after = now_ms()
    assert env.source is EventSource.FENCE and env.operation is Operation.FENCE
    assert env.fence_id == "cutover-0001" and env.key == "cutover-0001"
    assert env.document is None and env.cluster_time is None and env.resume_token is None
    assert before <= env.emitted_at <= after
    assert_same_envelope(env, decode(encode(env)))
    with pytest.raises(ValueError, match="fence_id"):
        Envelope.fence("m", "app", "users", 7)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- schema file


def test_the_package_reads_the_schema_file_people_edit_not_a_copy() -> None:
    resource = resources.files("cdc_migrator").joinpath(events.SCHEMA_RESOURCE)
    # In a checkout the package's resource is a link to schemas/envelope.avsc: one source,
    # which the build copies into the wheel (test_install checks the installed wheel).
    assert Path(str(resource)).resolve() == SCHEMA_FILE.resolve()


def test_schema_file_matches_design() -> None:
    assert SCHEMA_JSON["name"] == "Envelope" and SCHEMA_JSON["namespace"] == "cdc_migrator"
    assert SCHEMA_JSON["doc"]
    by_name = {f["name"]: f for f in SCHEMA_JSON["fields"]}
    assert list(by_name) == [f.name for f in dataclasses.fields(Envelope)]
    for field in SCHEMA_JSON["fields"]:
        assert field.get("doc"), f"{field['name']} has no doc"
    assert by_name["source"]["type"]["name"] == "EventSource"
    assert by_name["source"]["type"]["symbols"] == ["backfill", "change", "fence", "dependency"]
    assert by_name["operation"]["type"]["name"] == "Operation"
    assert by_name["operation"]["type"]["symbols"] == [
        "insert",
        "update",
        "replace",
        "delete",
        "snapshot",
        "fence",
    ]
    assert by_name["key"]["type"] == "bytes"
    assert by_name["document"]["type"] == ["null", "bytes"]
    assert by_name["cluster_time"]["type"] == ["null", "long"]
    assert by_name["resume_token"]["type"] == ["null", "bytes"]
    assert by_name["emitted_at"]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert by_name["fence_id"]["type"] == ["null", "string"]
    for name in ("migration", "database", "collection"):
        assert by_name[name]["type"] == "string"


# --------------------------------------------------------------------------- property tests

_FIELD_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10).filter(
    lambda k: k not in ("$ref", "$id", "$db")  # a {$ref, $id} sub-document decodes as a DBRef
)
_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
_CSTRING = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(),
    _TEXT,
    st.binary(max_size=32),
    st.builds(
        Binary, st.binary(max_size=32), st.sampled_from([1, 2, 3, 5, 6, 7, 8, 9, 0x80, 0xFF])
    ),
    st.uuids(),
    st.binary(min_size=12, max_size=12).map(ObjectId),
    st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31, 23, 59, 59, 999000),
        timezones=st.just(UTC),
    ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    st.one_of(
        st.integers(-(2**63), MIN_DATETIME_MS - 1), st.integers(MAX_DATETIME_MS + 1, 2**63 - 1)
    ).map(DatetimeMS),
    st.binary(min_size=16, max_size=16).map(Decimal128.from_bid),
    st.builds(Regex, _CSTRING, st.sets(st.sampled_from("ilmsux")).map("".join)),
    st.builds(Code, _TEXT),
    st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.just(MinKey()),
    st.just(MaxKey()),
    st.builds(
        DBRef,
        _TEXT,
        st.one_of(
            st.integers(-(2**31), 2**31 - 1),
            _TEXT,
            st.binary(min_size=12, max_size=12).map(ObjectId),
        ),
        st.none() | _TEXT,
    ),
)

_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_FIELD_NAMES, children, max_size=4),
        st.builds(Code, _TEXT, st.dictionaries(_FIELD_NAMES, children, max_size=3)),
    ),
    max_leaves=25,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document with an _id somewhere (not necessarily first) among arbitrary fields."""
    fields = draw(st.dictionaries(_FIELD_NAMES, _VALUES, max_size=8))
    fields.pop("_id", None)
    items = list(fields.items())
    _id = draw(_SCALARS.filter(lambda v: not isinstance(v, (list, Regex))))
    items.insert(draw(st.integers(0, len(items))), ("_id", _id))
    return dict(items)


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents(),
    st.none() | st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
def test_property_arbitrary_documents_round_trip(doc: dict[str, Any], ts: Timestamp | None) -> None:
    env = snapshot_envelope("m", "db", "coll", doc, cluster_time=ts)
    data = encode(env)
    got = decode(data)
    assert_same(doc, got.document)
    assert_same(doc["_id"], got.key)
    assert_same_envelope(env, got)
    assert encode(got) == data
    assert key_bytes(got.key) == key_bytes(doc["_id"])


@settings(max_examples=examples(200), deadline=None)
@given(_VALUES)
def test_property_arbitrary_ids_round_trip_as_keys(_id: Any) -> None:
    kb = key_bytes(_id)
    assert_same(_id, decode_key(kb))
    assert key_bytes(copy_of(_id)) == kb


# --------------------------------------------------------------------------- RawEncoder


def _raw(doc: dict[str, Any]) -> RawBSONDocument:
    """``doc`` as the driver hands it over when reading with RawBSONDocument (order kept)."""
    return RawBSONDocument(events.encode_document(doc),
                           CODEC_OPTIONS.with_options(document_class=RawBSONDocument))


def _same_as_encode(value: bytes, envelope: Envelope) -> None:
    """``value`` is what encode() gives for ``envelope`` (emitted_at taken from ``value``)."""
    got = decode(value)
    assert encode(dataclasses.replace(envelope, emitted_at=got.emitted_at)) == value


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_raw_encoder_snapshot_is_byte_for_byte_encode(doc: dict[str, Any]) -> None:
    encoder = events.RawEncoder("users-v2", "app", "users")
    expected = snapshot_envelope("users-v2", "app", "users", doc)
    for form in (doc, _raw(doc)):
        key, value = encoder.snapshot(form)
        assert key == key_bytes(doc["_id"])
        _same_as_encode(value, expected)


def test_raw_encoder_snapshot_of_objectid_documents_and_bad_input() -> None:
    encoder = events.RawEncoder("m", "app", "users")
    doc = {"_id": ObjectId(), "name": "Ada", "tags": ["a"], "nested": {"b": 1, "a": 2}}
    key, value = encoder.snapshot(_raw(doc))
    assert key == key_bytes(doc["_id"])
    got = decode(value)
    assert_same(doc, got.document)
    assert got.source is EventSource.BACKFILL and got.operation is Operation.SNAPSHOT
    with pytest.raises(ValueError, match="_id"):
        encoder.snapshot(_raw({"name": "no id"}))
    with pytest.raises(ValueError, match="_id"):
        encoder.snapshot({"name": "no id"})


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(documents(), min_size=1, max_size=6))
def test_raw_encoder_snapshot_batch_is_byte_for_byte_encode(docs: list[dict[str, Any]]) -> None:
    """A backfill batch: one record, several documents; every document comes back exact."""
    encoder = events.RawEncoder("users-v2", "app", "users")
    expected = dataclasses.replace(snapshot_envelope("users-v2", "app", "users", docs[0]),
                                   document=None, documents=docs)
    for forms in (docs, [_raw(d) for d in docs]):
        key, value = encoder.snapshot_batch(forms)
        assert key == key_bytes(docs[0]["_id"])
        _same_as_encode(value, expected)
        got = decode(value)
        assert got.document is None and got.operation is Operation.SNAPSHOT
        assert len(got.documents) == len(docs)
        for want, have in zip(docs, got.documents, strict=True):
            assert_same(want, have)


def test_snapshot_batch_refusals_and_poison() -> None:
    encoder = events.RawEncoder("m", "app", "users")
    with pytest.raises(ValueError, match="at least one"):
        encoder.snapshot_batch([])
    with pytest.raises(ValueError, match="_id"):
        encoder.snapshot_batch([{"name": "no id"}])
    _, value = encoder.snapshot_batch([{"_id": 1}, {"_id": 2, "a": "x"}])
    # Corrupt the second document's BSON length prefix: the whole record is poison.
    at = value.rindex(bson.encode({"_id": 2, "a": "x"}))
    bad = value[:at] + b"\xff" + value[at + 1:]
    assert_poison(bad, "invalid BSON in documents")


@pytest.mark.parametrize("case", list(CHANGE_CASES))
def test_raw_encoder_change_is_byte_for_byte_encode(case: str) -> None:
    event, _ = CHANGE_CASES[case]
    encoder = events.RawEncoder("users-v2", "app", "users")
    expected = change_envelope("users-v2", "app", "users", event)
    raw_event = RawBSONDocument(bson.encode(event, codec_options=CODEC_OPTIONS),
                                CODEC_OPTIONS.with_options(document_class=RawBSONDocument))
    for form in (event, raw_event):
        key, value = encoder.change(form)
        assert key == key_bytes(USER_ID)
        _same_as_encode(value, expected)


def test_raw_encoder_change_keys_and_refusals() -> None:
    encoder = events.RawEncoder("m", "app", "users")
    oid = ObjectId()
    key, _ = encoder.change(_raw({"_id": {"_data": "82"}, "operationType": "delete",
                                  "documentKey": {"_id": oid}}))
    assert key == key_bytes(oid)
    sharded = change_event("delete", documentKey={"region": "eu", "_id": "user-1"})
    assert encoder.change(sharded)[0] == key_bytes("user-1")
    for bad in (change_event("drop"), change_event("invalidate"), {}):
        with pytest.raises(ValueError, match="operationType"):
            encoder.change(bad)
    with pytest.raises(ValueError, match="documentKey"):
        encoder.change({"operationType": "insert", "fullDocument": {}})
    with pytest.raises(ValueError, match="cannot encode envelope"):
        encoder.change(change_event("delete", clusterTime=12))
    with pytest.raises(ValueError, match="fullDocument"):
        encoder.change(change_event("insert", fullDocument=[1]))


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, -65, 2**31, -(2**31) - 1,
                                   2**63 - 1, -(2**63)])
def test_avro_long_is_avros_encoding(value: int) -> None:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", value)
    assert events._avro_long(value) == out.getvalue()


# --------------------------------------------------------------------------- partitions


# A backfill record written by the version before schema 2 (schemas/envelope.v1.avsc), as it
# may still be on a topic during a rolling upgrade: {"_id": 1, "a": 2} and {"_id": 2}.
V1_BATCH = bytes.fromhex(
    "c301b37cbf29d5255d04026d00080661707006656d621c0e000000105f69640001000000000000008289cf90"
    "c6680002042a15000000105f6964000100000010610002000000001c0e000000105f696400020000000000")


def test_records_of_the_previous_schema_still_decode():
    envelope = events.decode(V1_BATCH)
    assert envelope.documents == [{"_id": 1, "a": 2}, {"_id": 2}]
    assert envelope.key == 1 and envelope.source == "backfill" and envelope.dependency is None
    assert envelope.emitted_at == 1796119061057
    assert V1_BATCH[2:10] != events.SCHEMA_FINGERPRINT  # it really is the older schema


def test_a_record_written_with_the_v1_schema_file_decodes_and_unknown_ones_stay_poison():
    v1 = json.loads((ROOT / "schemas" / "envelope.v1.avsc").read_text())
    schema = fastavro.parse_schema(v1)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, {
        "migration": "m", "source": "change", "operation": "delete", "database": "app",
        "collection": "c", "key": events.key_bytes(ObjectId("6b0e9a101e1178fee7def4c3")),
        "document": None, "cluster_time": None, "resume_token": None, "emitted_at": 5,
        "fence_id": None, "documents": None})
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(
        fastavro.schema.to_parsing_canonical_form(v1), "CRC-64-AVRO"))
    envelope = events.decode(b"\xc3\x01" + fingerprint + out.getvalue())
    assert envelope.operation == "delete" and envelope.key == ObjectId("6b0e9a101e1178fee7def4c3")
    assert envelope.dependency is None
    with pytest.raises(events.PoisonRecord, match="unknown schema fingerprint"):
        events.decode(b"\xc3\x01" + b"\x01" * 8 + out.getvalue())


# --------------------------------------------------------------------------- change batches


def _batch_events() -> list[dict[str, Any]]:
    """Change events as the tailer batches them: every operation, odd ``_id`` types, and a
    document image holding every kind of value ``documents()`` would draw."""
    return [
        change_event("insert", fullDocument=FULL_DOCUMENT),
        change_event("update", fullDocument=None, documentKey={"_id": uuid.UUID(int=7)},
                     clusterTime=Timestamp(1_718_000_001, 1)),
        change_event("delete", documentKey={"_id": Decimal128("1.5")},
                     clusterTime=Timestamp(1_718_000_002, 9)),
        change_event("replace", fullDocument={"_id": "é", "a.b": [1, {"$c": None}]},
                     documentKey={"_id": "é"}, clusterTime=Timestamp(1_718_000_003, 2)),
    ]


def test_a_change_batch_carries_each_event_as_its_own_record_would():
    encoder = events.RawEncoder("users-v2", "app", "users")
    alone = [encoder.change(e) for e in _batch_events()]
    value = encoder.change_batch(alone[0][0], Operation.INSERT, [v for _, v in alone])
    for read in (decode, events.decode_raw):
        got = read(value)
        assert got.source is EventSource.CHANGE and got.operation is Operation.INSERT
        assert got.key == USER_ID and got.changes is not None
        assert got.document is None and got.cluster_time is None and got.documents is None
        assert len(got.changes) == len(alone)
        for (_, single), change in zip(alone, got.changes, strict=True):
            want = decode(single)
            assert change.changes is None
            assert (change.operation, change.cluster_time, change.resume_token) == \
                (want.operation, want.cluster_time, want.resume_token)
            assert_same(want.key, change.key)
            assert_same(want.document, None if change.document is None else dict(change.document))
    # The same bytes as encode() gives the envelope (emitted_at aside).
    _same_as_encode(value, dataclasses.replace(
        decode(value), changes=[decode(v) for _, v in alone]))


def test_a_change_batch_of_something_else_than_single_changes_is_poison():
    encoder = events.RawEncoder("m", "app", "users")
    key, change = encoder.change(change_event("insert", fullDocument=FULL_DOCUMENT))
    _, snapshot = encoder.snapshot({"_id": 1})
    nested = encoder.change_batch(key, Operation.INSERT, [change, change])
    for items, reason in (([change, snapshot], "event 1 of a change batch: a backfill"),
                          ([nested, change], "event 0 of a change batch: a change event"),
                          ([change, b"\x00" * 20], "event 1 .*not Avro single-object")):
        value = encoder.change_batch(key, Operation.INSERT, items)
        for read in (decode, events.decode_raw):
            with pytest.raises(events.PoisonRecord, match=reason):
                read(value)
    with pytest.raises(ValueError, match="at least one"):
        encoder.change_batch(key, Operation.INSERT, [])


def test_a_record_written_with_the_v2_schema_file_still_decodes():
    """Version 2 (before change batches): a dependency event, as a tailer of the previous
    release leaves it on the topic during a rolling upgrade."""
    v2 = json.loads((ROOT / "schemas" / "envelope.v2.avsc").read_text())
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(v2), {
        "migration": "m", "source": "dependency", "operation": "update", "database": "app",
        "collection": "c", "key": events.key_bytes(uuid.UUID(int=3)), "document": None,
        "cluster_time": None, "resume_token": None, "emitted_at": 5, "fence_id": None,
        "documents": None, "dependency": "users"})
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(
        fastavro.schema.to_parsing_canonical_form(v2), "CRC-64-AVRO"))
    assert fingerprint != events.SCHEMA_FINGERPRINT
    for read in (decode, events.decode_raw):
        envelope = read(b"\xc3\x01" + fingerprint + out.getvalue())
        assert envelope.dependency == "users" and envelope.changes is None
        assert envelope.key == uuid.UUID(int=3)
