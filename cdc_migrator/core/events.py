"""The event envelope: what goes on the migration topic, and how it is (de)serialised.

Every event for one MongoDB document, whether the backfill scanner read it or the change-stream
tailer saw it change, is an :class:`Envelope`. On the wire it is Avro Single Object Encoding
of the ``cdc_migrator.Envelope`` record in ``schemas/envelope.avsc`` (shipped inside the package
as the resource ``cdc_migrator/envelope.avsc``):

* ``0xC3 0x01`` (the single-object marker),
* the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form,
* the schemaless Avro binary body.

The Kafka record key is :func:`key_bytes` of the document's ``_id`` (the BSON document
``{"_id": <id>}``), so every event for one document lands on one partition, in order.

BSON values (key, document, resume token) are encoded and decoded with the tool's one codec
policy (:data:`cdc_migrator.base.codec.CODEC_OPTIONS`, re-exported here), so every BSON type the
driver supports survives a round trip with its value, its Python type and the document's key
order intact (dates outside Python's ``datetime`` range come back as :class:`bson.DatetimeMS`;
subtype-4 UUIDs are :class:`uuid.UUID`).

Typical use::

    key, value = RawEncoder("m1", "app", "users").snapshot(doc)
    producer.send(topic, key=key, value=value)
    ...
    try:
        event = decode(record.value)
    except PoisonRecord as exc:
        dead_letter(record, reason=str(exc))
"""

from __future__ import annotations

import json
import time
from collections.abc import ItemsView, Iterator, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from importlib import resources
from io import BytesIO
from typing import Any, cast

import bson
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from ..base.codec import CODEC_OPTIONS
from ..base.messages import first_line
from ..errors import PoisonRecord

__all__ = [
    "CODEC_OPTIONS",
    "SCHEMA_FINGERPRINT",
    "SCHEMA_RESOURCE",
    "Envelope",
    "EventSource",
    "Operation",
    "PoisonRecord",
    "RawDocument",
    "RawEncoder",
    "decode",
    "decode_raw",
    "decode_key",
    "encode",
    "key_bytes",
]

#: The envelope schema, a resource of this package. In a checkout it is a link to
#: ``schemas/envelope.avsc``, the one copy people read and edit; a built package holds the file.
SCHEMA_RESOURCE = "envelope.avsc"
#: Earlier versions of the schema, kept so that records they wrote still decode (Avro schema
#: resolution: a record is read with the schema that wrote it, found by its fingerprint, into
#: today's). A rolling upgrade leaves such records on the topic; an unknown fingerprint is
#: still a poison record.
OLD_SCHEMA_RESOURCES = ("envelope.v1.avsc", "envelope.v2.avsc")


_MARKER = b"\xc3\x01"
_HEADER_LEN = 10
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1


class EventSource(StrEnum):
    """Which producer emitted an event (Avro enum ``cdc_migrator.EventSource``)."""

    BACKFILL = "backfill"
    CHANGE = "change"
    FENCE = "fence"
    #: A change to a document of a collection the migration depends on (``depends_on``), for
    #: one migrated document it affects.
    DEPENDENCY = "dependency"


class Operation(StrEnum):
    """What happened to the document (Avro enum ``cdc_migrator.Operation``)."""

    INSERT = "insert"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    SNAPSHOT = "snapshot"
    FENCE = "fence"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One migration event, decoded.

    The producers write envelopes straight from raw BSON (:class:`RawEncoder`); :meth:`fence`
    builds a fence. (``cdc_migrator.testing`` builds snapshot and change envelopes for tests.)

    Attributes:
        migration: name of the migration the event belongs to.
        source: which producer emitted it.
        operation: what happened; ``snapshot`` for backfill reads, ``fence`` for fences.
        database: database of the source namespace.
        collection: collection of the source namespace.
        key: the document's ``_id`` value (any BSON type); for a fence, the fence id.
        document: the full document (key order preserved; a :class:`RawDocument` from
            :func:`decode_raw`), or None for deletes, fences and
            updates whose full document is unknown (no ``updateLookup``, or already deleted).
        cluster_time: MongoDB cluster time of the change (or of the snapshot read, if known).
        resume_token: the change stream resume token (the change event's ``_id``); pass it to
            ``watch(resume_after=...)``. None for backfill and fence events.
        emitted_at: wall-clock milliseconds since the Unix epoch when the event was built.
        fence_id: the fence's id on fence events, None otherwise.
        documents: a backfill batch: several documents of one partition (``document`` is then
            None and ``key`` the first one's ``_id``); None for every other event.
        dependency: on dependency events, the collection whose change made the document due
            again; None for every other event (and for records of schema version 1).
        changes: a change batch of the tailer: several change events of one partition, in
            stream order, each as it would be alone (``key`` is the first one's; ``document``,
            ``cluster_time`` and ``resume_token`` are None); None for every other event (and
            for records of schema versions 1 and 2).
    """

    migration: str
    source: EventSource
    operation: Operation
    database: str
    collection: str
    key: Any
    document: Mapping[str, Any] | None
    cluster_time: Timestamp | None
    resume_token: dict[str, Any] | None
    emitted_at: int
    fence_id: str | None
    documents: list[Mapping[str, Any]] | None = None
    dependency: str | None = None
    changes: list[Envelope] | None = None

    @classmethod
    def fence(cls, migration: str, database: str, collection: str, fence_id: str) -> Envelope:
        """A fence marker with id ``fence_id``; its ``key`` is ``fence_id`` too.

        The tailer sends one to every partition of the topic, naming each partition
        explicitly, with an empty record key (the key decides no partition here).
        """
        if not isinstance(fence_id, str):
            raise ValueError(f"fence_id must be a str, got {type(fence_id).__name__}")
        return cls(
            migration=migration,
            source=EventSource.FENCE,
            operation=Operation.FENCE,
            database=database,
            collection=collection,
            key=fence_id,
            document=None,
            cluster_time=None,
            resume_token=None,
            emitted_at=now_ms(),
            fence_id=fence_id,
        )


CHANGE_OPERATIONS: dict[str, Operation] = {
    op.value: op for op in (Operation.INSERT, Operation.UPDATE, Operation.REPLACE, Operation.DELETE)
}
_SOURCES: dict[str, EventSource] = {s.value: s for s in EventSource}
_OPERATIONS: dict[str, Operation] = {o.value: o for o in Operation}


# --------------------------------------------------------------------------- schema


def _load_schema(resource: str = SCHEMA_RESOURCE) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        resources.files("cdc_migrator").joinpath(resource).read_text(encoding="utf-8"))
    return schema


_SCHEMA_JSON: dict[str, Any] = _load_schema()
_CANONICAL_FORM: str = to_parsing_canonical_form(_SCHEMA_JSON)
#: The 8 fingerprint bytes that follow the marker: CRC-64-AVRO of the Parsing Canonical Form,
#: little-endian.
SCHEMA_FINGERPRINT: bytes = bytes.fromhex(fingerprint(_CANONICAL_FORM, "CRC-64-AVRO"))
_HEADER: bytes = _MARKER + SCHEMA_FINGERPRINT


def _without_logical_types(schema: dict[str, Any]) -> dict[str, Any]:
    # Logical types are not part of the Parsing Canonical Form, so the stripped schema
    # describes exactly the same bytes. Using it for both directions keeps emitted_at a plain
    # int (no datetime round trip, no OverflowError on absurd values) and skips fastavro's
    # logical-type hooks on the hot path.
    copy = json.loads(json.dumps(schema))
    for field in copy["fields"]:
        if isinstance(field["type"], dict) and "logicalType" in field["type"]:
            field["type"] = field["type"]["type"]
    return copy


_CODEC_SCHEMA_JSON = _without_logical_types(_SCHEMA_JSON)
_CODEC_SCHEMA = parse_schema(_CODEC_SCHEMA_JSON)


def _old_writer_schemas() -> dict[bytes, Any]:
    """The parsed writer schema of each earlier version, by its fingerprint bytes."""
    found = {}
    for resource in OLD_SCHEMA_RESOURCES:
        old = _without_logical_types(_load_schema(resource))
        found[bytes.fromhex(fingerprint(to_parsing_canonical_form(old), "CRC-64-AVRO"))] = \
            parse_schema(old)
    return found


#: Fingerprints of the earlier schema versions whose records still decode, and their schemas.
OLD_SCHEMAS: dict[bytes, Any] = _old_writer_schemas()


def _check_schema() -> None:
    problems = []
    if _SCHEMA_JSON.get("namespace") != "cdc_migrator" or _SCHEMA_JSON.get("name") != "Envelope":
        problems.append("record is not cdc_migrator.Envelope")
    names = [f["name"] for f in _SCHEMA_JSON["fields"]]
    if names != [f.name for f in fields(Envelope)]:
        problems.append(f"fields {names} do not match the Envelope dataclass")
    enums = {
        f["type"]["name"]: f["type"]["symbols"]
        for f in _SCHEMA_JSON["fields"]
        if isinstance(f["type"], dict) and f["type"].get("type") == "enum"
    }
    for enum in (EventSource, Operation):
        if enums.get(enum.__name__) != [m.value for m in enum]:
            problems.append(f"enum {enum.__name__} symbols do not match the Python enum")
    if to_parsing_canonical_form(_CODEC_SCHEMA_JSON) != _CANONICAL_FORM:
        problems.append("stripping logical types changed the canonical form")
    if problems:
        raise RuntimeError(f"cdc_migrator/{SCHEMA_RESOURCE}: " + "; ".join(problems))


_check_schema()


# --------------------------------------------------------------------------- helpers


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_document(document: Mapping[str, Any]) -> bytes:
    # bson.encode() moves a top-level "_id" to the front; a nested document keeps its key
    # order, so encode {"": document} and cut the embedded document out:
    # int32 length, 0x03, "" + NUL, <document>, NUL.
    if type(document) is not dict and not isinstance(document, Mapping):
        raise TypeError(f"expected a mapping, got {type(document).__name__}")
    return _bson_encode({"": document}, False, CODEC_OPTIONS)[6:-1]


_bson_encode = bson.encode
_bson_decode = bson.decode


def _pack_timestamp(ts: Timestamp) -> int:
    if type(ts) is not Timestamp:
        raise TypeError(f"cluster_time must be a bson.Timestamp, got {type(ts).__name__}")
    packed = (ts.time << 32) | ts.inc
    return packed - (1 << 64) if packed >= 1 << 63 else packed


def _unpack_timestamp(value: int) -> Timestamp:
    value &= _U64
    return Timestamp(value >> 32, value & _U32)


# --------------------------------------------------------------------------- public API


def key_bytes(_id: Any) -> bytes:
    """The Kafka record key for a document id: BSON of ``{"_id": _id}``.

    Deterministic: equal ids of the same BSON type give equal bytes (note ``1``, ``Int64(1)``
    and ``1.0`` are different BSON types). Raises ValueError if ``_id`` is not BSON-encodable.
    """
    try:
        return _bson_encode({"_id": _id}, False, CODEC_OPTIONS)
    except (BSONError, OverflowError, TypeError, ValueError) as exc:
        raise ValueError(f"_id is not BSON-encodable: {first_line(exc, 200)}") from exc


def decode_key(data: bytes) -> Any:
    """The ``_id`` value from a record key made by :func:`key_bytes`.

    Raises PoisonRecord if ``data`` is not a BSON document with exactly the one field ``_id``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PoisonRecord(f"key is {type(data).__name__}, not bytes")
    return _decode_key(data, "key")


def _decode_key(data: bytes, what: str) -> Any:
    try:
        doc = _bson_decode(data, CODEC_OPTIONS)
    except Exception as exc:  # any decoding failure means a bad record
        raise PoisonRecord(f"invalid BSON in {what}: {first_line(exc, 200)}") from exc
    if len(doc) != 1 or "_id" not in doc:
        raise PoisonRecord(f"{what} is not a BSON document {{_id: ...}}: fields {list(doc)[:5]}")
    return doc["_id"]


def encode(envelope: Envelope) -> bytes:
    """Serialise ``envelope`` to its wire form (single-object-encoded Avro).

    Raises ValueError if a field does not fit the schema (wrong type, unknown enum symbol,
    long out of range) or the key, document or resume token is not BSON-encodable.
    """
    e = envelope
    try:
        document = e.document
        token = e.resume_token
        ts = e.cluster_time
        fence_id = e.fence_id
        emitted_at = e.emitted_at
        if type(emitted_at) is not int:
            raise TypeError(f"emitted_at must be int milliseconds, got {type(emitted_at).__name__}")
        if e.source not in _SOURCES or e.operation not in _OPERATIONS:
            raise ValueError(f"unknown source/operation {e.source!r}/{e.operation!r}")
        # Union values are given in fastavro's (branch, value) tuple notation: it skips the
        # per-branch type probing.
        record = {
            "migration": e.migration,
            "source": e.source,
            "operation": e.operation,
            "database": e.database,
            "collection": e.collection,
            "key": _bson_encode({"_id": e.key}, False, CODEC_OPTIONS),
            "document": None if document is None else ("bytes", encode_document(document)),
            "cluster_time": None if ts is None else ("long", _pack_timestamp(ts)),
            "resume_token": None if token is None else ("bytes", encode_document(token)),
            "emitted_at": emitted_at,
            "fence_id": None if fence_id is None else ("string", fence_id),
            "documents": None if e.documents is None else (
                "array", [encode_document(d) for d in e.documents]),
            "dependency": None if e.dependency is None else ("string", e.dependency),
            "changes": None if e.changes is None else (
                "array", [encode(change) for change in e.changes]),
        }
        out = BytesIO()
        out.write(_HEADER)
        schemaless_writer(out, _CODEC_SCHEMA, record)
    except (BSONError, AttributeError, OverflowError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot encode envelope: {first_line(exc, 200)}") from exc
    return out.getvalue()


def decode(data: bytes) -> Envelope:
    """Parse a record value made by :func:`encode`.

    Raises PoisonRecord (a ValueError) with a one-line reason if ``data`` is not exactly one
    valid record of this schema: not bytes (e.g. a None tombstone), empty, wrong marker,
    unknown schema fingerprint, truncated or malformed Avro body, trailing bytes, or invalid
    BSON in the key, document or resume token.
    """
    writer = _CODEC_SCHEMA
    if type(data) is not bytes or not data.startswith(_HEADER):
        data = _check_header(data)
        writer = OLD_SCHEMAS.get(data[2:_HEADER_LEN], _CODEC_SCHEMA)
    body = BytesIO(data)
    body.seek(_HEADER_LEN)
    try:
        # The schema is a record: the reader gives a dict of its fields. A record of an
        # earlier version is resolved into today's schema (new fields get their defaults).
        rec = cast(dict[str, Any], schemaless_reader(
            body, writer, None if writer is _CODEC_SCHEMA else _CODEC_SCHEMA))
    except Exception as exc:  # fastavro raises EOFError, IndexError, UnicodeDecodeError, ...
        raise PoisonRecord(f"truncated or malformed Avro body: {first_line(exc, 200)}") from exc
    if body.tell() != len(data):
        raise PoisonRecord(f"{len(data) - body.tell()} trailing bytes after the Avro body")

    key = _decode_key(rec["key"], "key field")
    document = rec["document"]
    if document is not None:
        try:
            document = _bson_decode(document, CODEC_OPTIONS)
        except Exception as exc:  # any BSON decoding failure means a bad record
            raise PoisonRecord(f"invalid BSON in document: {first_line(exc, 200)}") from exc
    token = rec["resume_token"]
    if token is not None:
        try:
            token = _bson_decode(token, CODEC_OPTIONS)
        except Exception as exc:
            raise PoisonRecord(f"invalid BSON in resume_token: {first_line(exc, 200)}") from exc
    documents = rec["documents"]
    if documents is not None:
        try:
            documents = [_bson_decode(d, CODEC_OPTIONS) for d in documents]
        except Exception as exc:
            raise PoisonRecord(f"invalid BSON in documents: {first_line(exc, 200)}") from exc
    changes = rec["changes"]
    if changes is not None:
        changes = [_batched_change(item, i) for i, item in enumerate(changes)]
    ts = rec["cluster_time"]
    return Envelope(
        rec["migration"],
        _SOURCES[rec["source"]],
        _OPERATIONS[rec["operation"]],
        rec["database"],
        rec["collection"],
        key,
        document,
        None if ts is None else _unpack_timestamp(ts),
        token,
        rec["emitted_at"],
        rec["fence_id"],
        documents,
        rec["dependency"],
        changes,
    )


def _batched_change(item: bytes, index: int) -> Envelope:
    """Event ``index`` of a change batch, which must be a change event alone (a batch holds no
    batches, backfill documents, fences or dependency events)."""
    try:
        change = decode(item)
    except PoisonRecord as exc:
        raise PoisonRecord(f"event {index} of a change batch: {exc}") from None
    if not _single_change(change):
        raise PoisonRecord(f"event {index} of a change batch: a {change.source.value} event, "
                           "not a single change")
    return change


class RawDocument(RawBSONDocument):
    """A document kept as its BSON bytes (``raw``), as :func:`decode_raw` hands it on.

    Reading it as a mapping decodes it once, whole, with :data:`CODEC_OPTIONS`: the values are
    exactly those :func:`decode` gives (sub-documents plain dicts, not raw documents). A reader
    that understands raw BSON takes ``raw`` instead and decodes only what it needs.
    """

    __slots__ = ("_fields",)

    @staticmethod
    def _inflate_bson(bson_bytes: bytes | memoryview, codec_options: Any) -> dict[str, Any]:
        return cast(dict[str, Any], _bson_decode(bson_bytes, CODEC_OPTIONS))

    # Reads go to the decoded dict at C speed: an applier reading the document as a mapping
    # (``in``, ``get``, ``[]``) does so a dozen times per document.
    def _decoded(self) -> dict[str, Any]:
        try:
            return self._fields
        except AttributeError:
            self._fields: dict[str, Any] = _bson_decode(self.raw, CODEC_OPTIONS)
            return self._fields

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._decoded()

    def get(self, key: str, default: Any = None) -> Any:
        return self._decoded().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def items(self) -> ItemsView[str, Any]:
        return self._decoded().items()


_RAW_OPTIONS: Any = CODEC_OPTIONS.with_options(document_class=RawDocument)
_SOURCE_LIST = list(EventSource)
_OPERATION_LIST = list(Operation)


def decode_raw(data: bytes) -> Envelope:
    """:func:`decode`, leaving the documents as :class:`RawDocument` (their BSON bytes).

    The consumer's path: the Avro body of today's schema is read in place, without a record
    dict, and a document is only checked for its framing (length prefix, terminator), not
    decoded; its ``_id`` is read from its bytes by :func:`document_id`. Anything else (an
    earlier schema version, a malformed or truncated body, bad framing or invalid BSON in the
    key or resume token) is handed to :func:`decode`: the same envelope, or the same
    :class:`PoisonRecord`. A document whose BSON is framed right but invalid inside fails
    when it is read (``bson.errors.InvalidBSON``); :func:`decode` of the record then says
    why it is poison.
    """
    if type(data) is not bytes or not data.startswith(_HEADER):
        return decode(data)
    try:
        return _read_body(data)
    except (ValueError, IndexError, BSONError):  # anything unusual: decode's verdict
        return decode(data)


def _read_body(data: bytes) -> Envelope:
    read = _Reader(data)
    migration = read.string()
    source = _SOURCE_LIST[read.index()]
    operation = _OPERATION_LIST[read.index()]
    database, collection = read.string(), read.string()
    key = read.blob()
    document = read.document() if read.branch() else None
    ts = _unpack_timestamp(read.long()) if read.branch() else None
    token = read.blob() if read.branch() else None
    emitted_at = read.long()
    fence_id = read.string() if read.branch() else None
    documents = read.documents() if read.branch() else None
    dependency = read.string() if read.branch() else None
    changes = [_raw_change(item) for item in read.blobs()] if read.branch() else None
    if read.pos != len(data):
        raise ValueError("trailing bytes")
    doc_id = _bson_decode(key, CODEC_OPTIONS)
    if len(doc_id) != 1 or "_id" not in doc_id:
        raise ValueError("not a key")
    return Envelope(
        migration, source, operation, database, collection, doc_id["_id"], document, ts,
        None if token is None else _bson_decode(token, CODEC_OPTIONS), emitted_at, fence_id,
        documents, dependency, changes)


def _raw_change(item: bytes) -> Envelope:
    """An event of a change batch, as :func:`decode_raw` gives it; anything unusual raises
    ValueError, for :func:`decode` to give its verdict on the whole record."""
    change = decode_raw(item)
    if not _single_change(change):
        raise ValueError("not a single change")
    return change


def _single_change(envelope: Envelope) -> bool:
    """Whether ``envelope`` is one change event, as a change batch may hold."""
    return envelope.source == EventSource.CHANGE and envelope.changes is None \
        and envelope.documents is None


class _Reader:
    """Avro binary values of today's schema, read from ``data`` at ``pos``."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, _HEADER_LEN

    def long(self) -> int:
        data, pos = self.data, self.pos
        byte = data[pos]
        if byte < 0x80:  # most values here: a length, an enum index, a union branch
            self.pos = pos + 1
            return (byte >> 1) ^ -(byte & 1)
        n, shift = byte & 0x7F, 7
        while byte & 0x80:
            if shift > 63:  # longer than any long: fastavro decides what it is
                raise ValueError("varint too long")
            pos += 1
            byte = data[pos]
            n |= (byte & 0x7F) << shift
            shift += 7
        self.pos = pos + 1
        return (n >> 1) ^ -(n & 1)

    def index(self) -> int:
        n = self.long()
        if n < 0:
            raise ValueError("negative enum index")
        return n

    def branch(self) -> bool:
        """Which branch of a ``["null", X]`` union follows: False for null, True for X."""
        pos = self.pos
        byte = self.data[pos]
        if byte & 0xFD:  # only 0 (zig-zag 0: null) and 2 (zig-zag 1: the other branch)
            raise ValueError("no such union branch")
        self.pos = pos + 1
        return byte == 2

    def blob(self) -> bytes:
        size = self.long()
        start, end = self.pos, self.pos + size
        if size < 0 or end > len(self.data):
            raise ValueError("bad length")
        self.pos = end
        return self.data[start:end]

    def string(self) -> str:
        return self.blob().decode("utf-8")

    def document(self) -> RawDocument:
        raw = self.blob()
        if len(raw) < 5 or int.from_bytes(raw[:4], "little") != len(raw) or raw[-1]:
            raise ValueError("not framed as a BSON document")
        return RawDocument(raw, _RAW_OPTIONS)

    def documents(self) -> list[Mapping[str, Any]]:
        found: list[Mapping[str, Any]] = []
        while count := self.long():
            if count < 0:  # a block with its size in bytes: rare enough for fastavro
                raise ValueError("sized block")
            found += [self.document() for _ in range(count)]
        return found

    def blobs(self) -> list[bytes]:
        found: list[bytes] = []
        while count := self.long():
            if count < 0:
                raise ValueError("sized block")
            found += [self.blob() for _ in range(count)]
        return found


def _avro_long(value: int) -> bytes:
    """Avro's binary encoding of a long: zig-zag, then a little-endian base-128 varint."""
    if not -(1 << 63) <= value < 1 << 63:
        raise OverflowError(f"{value} does not fit an Avro long")
    n = ((value << 1) ^ (value >> 63)) & _U64
    if n < 0x80:
        return _SMALL_LONGS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_LONGS = [bytes([n]) for n in range(0x80)]


def _avro_bytes(data: bytes) -> bytes:
    return _avro_long(len(data)) + data


def _avro_string(text: str) -> bytes:
    if type(text) is not str:
        raise TypeError(f"expected a str, got {type(text).__name__}")
    return _avro_bytes(text.encode("utf-8"))


def _union_branch(field_name: str, branch: str) -> bytes:
    """The encoded index of ``branch`` in the union type of ``field_name``."""
    for f in _CODEC_SCHEMA_JSON["fields"]:
        if f["name"] == field_name:
            return _avro_long(f["type"].index(branch))
    raise KeyError(field_name)


def _enum_index(enum: type[StrEnum], member: StrEnum) -> bytes:
    for f in _CODEC_SCHEMA_JSON["fields"]:
        if isinstance(f["type"], dict) and f["type"].get("name") == enum.__name__:
            return _avro_long(f["type"]["symbols"].index(member.value))
    raise KeyError(enum.__name__)


_NULL = _union_branch("document", "null")
_DOCUMENT = _union_branch("document", "bytes")
_CLUSTER_TIME = _union_branch("cluster_time", "long")
_RESUME_TOKEN = _union_branch("resume_token", "bytes")
_DOCUMENTS = _avro_long(1)  # the array branch of the documents union
_DEPENDENCY = _union_branch("dependency", "string")
_CHANGES = _avro_long(1)  # the array branch of the changes union
# The key of a document whose _id is an ObjectId, and which starts with it (as every document
# MongoDB stores does): {"_id": <12 bytes>} as BSON is these bytes around the id.
_OID_ID_ELEMENT = b"\x07_id\x00"
_OID_KEY_HEAD = b"\x16\x00\x00\x00" + _OID_ID_ELEMENT


class RawEncoder:
    """Encodes snapshot and change events straight from raw BSON, for one namespace.

    The producers' fast path: a document read as :class:`~bson.raw_bson.RawBSONDocument`
    (a scan, a change stream) goes on the wire as the bytes MongoDB sent, never decoded into
    Python objects and encoded again, and the Avro body is written here without a record dict.
    The result is what :func:`encode` gives for the same envelope (byte for byte, for documents
    whose BSON survives a decode/encode round trip; for the others the raw bytes are the more
    exact), and :func:`decode` reads it back. Mappings that are not raw are encoded as
    :func:`encode` would.
    """

    def __init__(self, migration: str, database: str, collection: str) -> None:
        tail = _avro_string(database) + _avro_string(collection)
        head = _HEADER + _avro_string(migration)
        self._snapshot = (head + _enum_index(EventSource, EventSource.BACKFILL)
                          + _enum_index(Operation, Operation.SNAPSHOT) + tail)
        self._change = {op: head + _enum_index(EventSource, EventSource.CHANGE)
                        + _enum_index(Operation, op) + tail for op in CHANGE_OPERATIONS.values()}
        self._dependency = (head + _enum_index(EventSource, EventSource.DEPENDENCY)
                            + _enum_index(Operation, Operation.UPDATE) + tail)

    @staticmethod
    def key_of(document: Mapping[str, Any]) -> bytes:
        """The record key of ``document`` (:func:`key_bytes` of its ``_id``)."""
        raw = _raw_bytes(document)
        if raw is not None and raw[4:9] == _OID_ID_ELEMENT:
            return _OID_KEY_HEAD + raw[9:21] + b"\x00"
        if not isinstance(document, Mapping) or "_id" not in document:
            raise ValueError("snapshot document has no _id")
        return key_bytes(document["_id"])

    def snapshot(self, document: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """``(record key, record value)`` of a backfill read of ``document``."""
        key = self.key_of(document)
        raw = _raw_bytes(document)
        if raw is None:
            raw = encode_document(document)
        return key, b"".join((self._snapshot, _avro_bytes(key), _DOCUMENT, _avro_bytes(raw),
                              _NULL, _NULL, _avro_long(now_ms()), _NULL, _NULL, _NULL, _NULL))

    def snapshot_key(self, document: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """``(record key, record value)`` of a backfill read of ``document`` that carries its
        ``_id`` alone (no document image): the consumer reads the document from MongoDB. For
        a document too large for the topic."""
        key = self.key_of(document)
        return key, b"".join((self._snapshot, _avro_bytes(key), _NULL, _NULL, _NULL,
                              _avro_long(now_ms()), _NULL, _NULL, _NULL, _NULL))

    def snapshot_batch(self, documents: list[Mapping[str, Any]]) -> tuple[bytes, bytes]:
        """``(record key, record value)`` of a backfill batch of ``documents`` (at least one):
        one record for documents that all belong to one partition (the caller groups them).
        The key is the first document's."""
        if not documents:
            raise ValueError("a snapshot batch needs at least one document")
        key = self.key_of(documents[0])
        parts = [self._snapshot, _avro_bytes(key), _NULL, _NULL, _NULL,
                 _avro_long(now_ms()), _NULL, _DOCUMENTS, _avro_long(len(documents))]
        for document in documents:
            parts.append(_avro_bytes(_document_bytes(document, "snapshot document")))
        parts.append(b"\x00")  # the end of the array's blocks
        parts += (_NULL, _NULL)  # dependency, changes
        return key, b"".join(parts)

    def change(self, change_event: Mapping[str, Any], *,
               with_document: bool = True) -> tuple[bytes, bytes]:
        """``(record key, record value)`` of a change stream event (insert, update, replace or
        delete; anything else raises ValueError).

        Without ``with_document`` the envelope carries no document image, as for an update
        without ``updateLookup``: the consumer reads the document from MongoDB."""
        op = change_event.get("operationType")
        operation = CHANGE_OPERATIONS.get(op)  # type: ignore[arg-type]
        if operation is None:
            raise ValueError(f"change event operationType {op!r} has no envelope; "
                             "only insert, update, replace and delete do")
        document_key = change_event.get("documentKey")
        if not isinstance(document_key, Mapping) or "_id" not in document_key:
            raise ValueError(f"{op} change event has no documentKey._id")
        raw_key = _raw_bytes(document_key)
        if raw_key is not None and len(raw_key) == 22 and raw_key[4:9] == _OID_ID_ELEMENT:
            key = raw_key  # {_id: ObjectId}, the document key of an unsharded collection
        else:
            key = key_bytes(document_key["_id"])
        document = None if operation is Operation.DELETE or not with_document \
            else change_event.get("fullDocument")
        ts = change_event.get("clusterTime")
        token = change_event.get("_id")
        try:
            parts = [self._change[operation], _avro_bytes(key)]
            if document is None:
                parts.append(_NULL)
            else:
                parts += (_DOCUMENT, _avro_bytes(_document_bytes(document, "fullDocument")))
            parts += (_NULL,) if ts is None else (_CLUSTER_TIME, _avro_long(_pack_timestamp(ts)))
            if token is None:
                parts.append(_NULL)
            else:
                parts += (_RESUME_TOKEN, _avro_bytes(_document_bytes(token, "resume token")))
        except (BSONError, OverflowError, TypeError) as exc:
            raise ValueError(f"cannot encode envelope: {first_line(exc, 200)}") from exc
        parts += (_avro_long(now_ms()), _NULL, _NULL, _NULL, _NULL)
        return key, b"".join(parts)

    def change_batch(self, key: bytes, operation: Operation, values: list[bytes]) -> bytes:
        """The record value of a change batch (see :attr:`Envelope.changes`): ``values`` are
        the records :meth:`change` made of the events, the first of which has ``key`` and
        ``operation``."""
        if not values:
            raise ValueError("a change batch needs at least one event")
        parts = [self._change[operation], _avro_bytes(key), _NULL, _NULL,
                 _NULL, _avro_long(now_ms()), _NULL, _NULL, _NULL, _CHANGES,
                 _avro_long(len(values))]
        parts += [_avro_bytes(value) for value in values]
        parts.append(b"\x00")  # the end of the array's blocks
        return b"".join(parts)

    def dependency(self, affected_id: Any, collection: str,
                   cluster_time: Timestamp | None) -> tuple[bytes, bytes]:
        """``(record key, record value)`` of a dependency event: a change to a document of
        ``collection`` (a declared dependency) made the migrated document ``affected_id`` due
        again. It carries no document image: the consumer reads the document."""
        key = key_bytes(affected_id)
        parts = [self._dependency, _avro_bytes(key), _NULL]
        parts += (_NULL,) if cluster_time is None else (
            _CLUSTER_TIME, _avro_long(_pack_timestamp(cluster_time)))
        parts += (_NULL, _avro_long(now_ms()), _NULL, _NULL, _DEPENDENCY,
                  _avro_string(collection), _NULL)
        return key, b"".join(parts)


def _raw_bytes(document: Any) -> bytes | None:
    return bytes(document.raw) if isinstance(document, RawBSONDocument) else None


def _document_bytes(document: Any, what: str) -> bytes:
    raw = _raw_bytes(document)
    if raw is not None:
        return raw
    if not isinstance(document, Mapping):
        raise ValueError(f"{what} must be a mapping, got {type(document).__name__}")
    return encode_document(document)


def _check_header(data: Any) -> bytes:
    """Slow path of decode(): return ``data`` as bytes if its header is ours, else raise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PoisonRecord(f"record value is {type(data).__name__}, not bytes")
    data = bytes(data)
    size = len(data)
    if size == 0:
        raise PoisonRecord("empty record value")
    if size < _HEADER_LEN:
        raise PoisonRecord(f"record value too short for a single-object header ({size} bytes)")
    if data[:2] != _MARKER:
        raise PoisonRecord(
            f"not Avro single-object encoding: marker {data[:2].hex()} (expected {_MARKER.hex()})"
        )
    if data[2:_HEADER_LEN] != SCHEMA_FINGERPRINT and data[2:_HEADER_LEN] not in OLD_SCHEMAS:
        raise PoisonRecord(
            f"unknown schema fingerprint {data[2:_HEADER_LEN].hex()} "
            f"(expected {SCHEMA_FINGERPRINT.hex()})"
        )
    return data
