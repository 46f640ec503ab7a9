"""Apply a migration to a batch of documents with guarded bulk writes.

Used by ``apply`` (documents from a scan) and by the transform consumer (documents named by
events). Each document is migrated from the state it has in the database at write time: a
write whose guard misses is retried after re-reading the document, and a document that no
longer exists is skipped, so nothing the application wrote is overwritten and nothing deleted
comes back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.son import SON
from pymongo import DeleteOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DocumentTooLarge, OperationFailure, WriteConcernError

from ..base import refusals
from ..base.codec import CODEC_OPTIONS
from ..base.identity import id_key
from ..base.messages import first_line, message_of
from ..base.retry import service_of
from ..core.patch import Outcome, decide
from ..core.rawdoc import document
from ..migration import Migration, filter_fields

MAX_ATTEMPTS = 20
# MongoDB's largest statement of a write (BSONObjMaxInternalSize: 16 MiB plus 16 KiB).
MAX_STATEMENT_BYTES = 16 * 1024 * 1024 + 16 * 1024
#: Binary comparison for guards and re-reads. Without it MongoDB compares strings with the
#: collection's default collation: under a case-insensitive one a guard pinning "Bob" matches
#: "BOB", and a patch computed from the stale value would overwrite the application's write.
SIMPLE_COLLATION = {"locale": "simple"}
# MongoDB's limits of one write command: statements (maxWriteBatchSize), and bytes of a command
# sent as one document, less room for the command's other fields (session, cluster time...).
MAX_WRITE_BATCH = 100_000
MAX_COMMAND_STATEMENT_BYTES = 16 * 1024 * 1024 - 16 * 1024
# The end of a guarded statement: binary comparison (upsert and multi left out: false), and a
# delete's limit of one document.
_UPDATE_TAIL = b"\x03collation\x00" + bson.encode(SIMPLE_COLLATION)
_DELETE_TAIL = b"\x10limit\x00\x01\x00\x00\x00" + _UPDATE_TAIL
_UPDATE_END = _UPDATE_TAIL + b"\x00"
_UPDATE_FIXED = 4 + len(b"\x03q\x00\x03u\x00") + len(_UPDATE_END)


@dataclass
class Failure:
    """A document whose transform raised; it was left as it was."""

    id: Any
    error: str
    traceback: str = ""


@dataclass
class BatchResult:
    """Counts of one applied batch."""

    seen: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    missing: int = 0
    retried: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def applied(self) -> int:
        return self.updated + self.deleted

    def add(self, other: BatchResult) -> None:
        for name in ("seen", "updated", "deleted", "unchanged", "missing", "retried"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.extend(other.failures)

    def counts(self) -> dict[str, int]:
        return {
            "applied": self.applied, "updated": self.updated, "deleted": self.deleted,
            "unchanged": self.unchanged, "failed": self.failed, "retried": self.retried,
        }


@dataclass
class Decided:
    """A batch decided and not yet written (see :meth:`Applier.decide_documents`)."""

    result: BatchResult
    #: A write per pending outcome: a driver operation, or the BSON statement of a raw one.
    ops: list[UpdateOne | DeleteOne | bytes]
    pending: list[Outcome]


class Applier:
    """Migrates documents of one collection; writes are guarded and idempotent."""

    def __init__(self, migration: Migration, collection: Collection, ctx: Any,
                 shard_key: Sequence[str] = ()) -> None:
        self.migration = migration
        self.collection = collection
        self.ctx = ctx
        #: The fields of the collection's shard key (sharded cluster): every guarded write and
        #: re-read pins them, so that mongos sends it to one shard.
        self.shard_key = tuple(shard_key)
        fields = filter_fields(migration.filter) if migration.filter else None
        # The filter's fields but _id, which every guard pins.
        self._filter_fields = fields - {"_id"} if fields is not None else None
        #: Seconds the last bulk write took (for the throttle's ``max_write_latency``).
        self.last_write_seconds: float | None = None
        self._raw_filter = (bson.encode(migration.filter, codec_options=CODEC_OPTIONS)
                            if migration.filter else b"")

    def _filter_implied(self, guard: AbstractSet[str]) -> bool:
        """Whether the guard alone keeps the write inside the migration's filter.

        Every document decided here matched the filter when it was read (a scan or a read
        with the filter, a backfill snapshot, or a change event the tailer's stream let through
        on its filter). If the filter is about fields only, and the guard pins every one of
        them, a write whose guard matches finds them as they were read: still inside. The
        filter is then left out of the write (for the server, one condition less per write).
        """
        fields = self._filter_fields
        return fields is not None and fields <= guard

    def apply_documents(self, docs: Iterable[Mapping[str, Any]]) -> BatchResult:
        """Migrate documents read just now (e.g. by a scan); misses are re-read and retried."""
        return self.write(self.decide_documents(docs))

    def decide_documents(self, docs: Iterable[Mapping[str, Any]]) -> Decided:
        """The first half of :meth:`apply_documents`: run the transform on documents read just
        now and make their guarded writes, writing nothing. :meth:`write` writes them; in
        between, another batch may be decided (``apply`` decides the next batch while this one
        is written)."""
        docs = list(docs)
        result = BatchResult(seen=len(docs))
        ops, pending = self._decide(docs, result, 1)
        return Decided(result, ops, pending)

    def write(self, decided: Decided) -> BatchResult:
        """The second half of :meth:`apply_documents`: the writes of ``decided``; misses are
        re-read, decided again and retried. ``decided`` is left as it was, so that a write
        interrupted by a lost connection can be retried with it."""
        result = dataclasses.replace(decided.result, failures=list(decided.result.failures))
        self._write_decided(decided.ops, decided.pending, result)
        return result

    def apply_ids(
        self, ids: Iterable[Any], images: Mapping[Any, Mapping[str, Any] | None] | None = None
    ) -> BatchResult:
        """Migrate the documents with these ids from their current state.

        ``images`` may hold a document image per id (keyed by
        :func:`~cdc_migrator.base.identity.id_key`, e.g. carried by an event); it is tried
        first and the database is read only for ids without one or whose guard missed. Ids
        MongoDB takes as one (``1`` and ``1.0``) are one document, ids it tells apart (``1``
        and ``True``) are two. An id whose document does not
        exist is counted as ``missing`` and skipped.
        """
        return self.write(self.decide_ids(ids, images))

    def decide_ids(
        self, ids: Iterable[Any], images: Mapping[Any, Mapping[str, Any] | None] | None = None
    ) -> Decided:
        """The first half of :meth:`apply_ids`: read what has no image, decide, write nothing
        (see :meth:`decide_documents`)."""
        unique = {id_key(i): i for i in ids}
        result = BatchResult(seen=len(unique))
        images = images or {}
        docs = [image for k in unique if (image := images.get(k)) is not None]
        unknown = [i for k, i in unique.items() if images.get(k) is None]
        if unknown:
            docs += self._read(unknown)
        result.missing += len(unique) - len(docs)
        return Decided(result, *self._decide(docs, result, 1))

    def _decide(self, docs: list[Mapping[str, Any]], result: BatchResult, attempt: int
                ) -> tuple[list[UpdateOne | DeleteOne | bytes], list[Outcome]]:
        """The writes of ``docs`` and the outcomes they carry out; no-ops, failures and
        refusals counted in ``result``."""
        ops: list[UpdateOne | DeleteOne | bytes] = []
        pending: list[Outcome] = []
        for outcome in [decide(self.migration, d, self.ctx, self.shard_key) for d in docs]:
            kind = outcome.kind
            if kind == "noop":
                # On a retry a no-op means our earlier write or the application's own
                # write already migrated the document: it was counted then.
                result.unchanged += attempt == 1
            elif kind == "error":
                result.failures.append(Failure(outcome.id, outcome.error, outcome.traceback))
            elif outcome.raw_guard:
                statement = self._statement(outcome)
                if len(statement) > MAX_STATEMENT_BYTES:
                    result.failures.append(Failure(outcome.id, _refusal_for_size(len(statement))))
                else:
                    ops.append(statement)
                    pending.append(outcome)
            elif (refusal := _too_large(outcome)) is not None:
                result.failures.append(Failure(outcome.id, refusal))
            else:
                ops.append(self._op(outcome))
                pending.append(outcome)
        return ops, pending

    def _write_decided(self, ops: list[UpdateOne | DeleteOne | bytes], pending: list[Outcome],
                       result: BatchResult) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if not ops:
                return
            written = time.monotonic()
            matched, deleted, rejected = self._write(ops, pending)
            self.last_write_seconds = time.monotonic() - written
            result.updated += matched
            result.deleted += deleted
            for index, message in rejected.items():
                # The server refused the write itself (e.g. a duplicate key): not a race.
                result.failures.append(Failure(pending[index].id, message))
            pending = [o for i, o in enumerate(pending) if i not in rejected]
            missed = len(pending) - matched - deleted
            if missed <= 0:
                return
            # Some guards missed: the application changed those documents in between. Re-read
            # them and decide again from their current state; deleted ones are skipped.
            result.retried += missed
            if attempt == MAX_ATTEMPTS:
                break
            ops, pending = self._decide(self._reread(pending), result, attempt + 1)
        for o in pending:
            result.failures.append(
                Failure(o.id, f"document kept changing; gave up after {MAX_ATTEMPTS} attempts"))

    def _op(self, outcome: Outcome) -> UpdateOne | DeleteOne:
        guard = self._guard(outcome)
        if outcome.kind == "delete":
            return DeleteOne(guard, collation=SIMPLE_COLLATION)
        return UpdateOne(guard, outcome.update, collation=SIMPLE_COLLATION)

    def _guard(self, outcome: Outcome) -> dict[str, Any]:
        """The filter of ``outcome``'s write: its guard, and the migration's filter unless the
        guard implies it."""
        if self.migration.filter and not self._filter_implied(outcome.guard.keys()):
            # A document that left the migration's subset since it was read is not migrated.
            return {"$and": [outcome.guard, self.migration.filter]}
        return outcome.guard

    def _statement(self, outcome: Outcome) -> bytes:
        """The BSON statement of a raw ``outcome``'s write, for an ``update`` or ``delete``
        command: its guard (and the migration's filter unless the guard implies it), its
        update, the simple collation."""
        guard = outcome.raw_guard
        if self._raw_filter and not self._filter_implied(outcome.guard_names):
            guard = document(b"\x04$and\x00" + document(
                b"\x030\x00" + guard + b"\x031\x00" + self._raw_filter))
        if outcome.kind == "delete":
            return document(b"\x03q\x00" + guard + _DELETE_TAIL)
        update = outcome.raw_update
        # One join: {q: guard, u: update, collation: simple}
        return b"".join(((len(guard) + len(update) + _UPDATE_FIXED).to_bytes(4, "little"),
                         b"\x03q\x00", guard, b"\x03u\x00", update, _UPDATE_END))

    def _write(self, ops: list[UpdateOne | DeleteOne | bytes], outcomes: list[Outcome]
               ) -> tuple[int, int, dict[int, str]]:
        """Matched and deleted counts, and the reason per refused op index (``outcomes`` are
        what the ops carry out, in the same order).

        A failure of the whole bulk that is not a lost connection is one document's problem
        until shown otherwise, whatever it is: the server's refusal, the driver's, or an error
        nobody expected (pymongo raises ``KeyError: 'code'`` on a write error without a code).
        The ops are split in halves, and again, until each failing one is alone; it is then
        written by itself and fails with its reason (a dead letter), and the others are
        written. Writes are guarded, so writing again one that took effect changes nothing.
        """
        try:
            if any(type(op) is bytes for op in ops):
                return self._commands([op if type(op) is bytes else self._encoded(o)
                                       for op, o in zip(ops, outcomes, strict=True)], outcomes)
            res = self.collection.bulk_write(ops, ordered=False)  # type: ignore[arg-type]
            return res.matched_count, res.deleted_count, {}
        except BulkWriteError as exc:
            details = exc.details
            rejected = {e["index"]: _refusal(e) for e in details.get("writeErrors", [])}
            return details.get("nMatched", 0), details.get("nRemoved", 0), rejected
        except Exception as exc:  # noqa: BLE001 - see above: split until the failing one
            if service_of(exc) is not None or refusals.explain(exc) is not None:
                raise  # transient (the caller's retries), or the connection refused for good
            if len(ops) == 1:
                return self._write_alone(outcomes[0])
        half = len(ops) // 2
        first = self._write(ops[:half], outcomes[:half])
        second = self._write(ops[half:], outcomes[half:])
        return (first[0] + second[0], first[1] + second[1],
                {**first[2], **{half + i: why for i, why in second[2].items()}})

    def _encoded(self, outcome: Outcome) -> bytes:
        """The BSON statement of a decoded ``outcome``'s write (in a batch with raw ones)."""
        statement: dict[str, Any] = {"q": self._guard(outcome)}
        if outcome.kind == "delete":
            statement["limit"] = 1
        else:
            statement["u"] = outcome.update
        statement["collation"] = SIMPLE_COLLATION
        return bson.encode(statement, codec_options=CODEC_OPTIONS)

    def _commands(self, statements: list[bytes], outcomes: list[Outcome]
                  ) -> tuple[int, int, dict[int, str]]:
        """Write BSON statements with unordered ``update``/``delete`` commands, each within
        MongoDB's limits: matched and deleted counts, the reason per refused statement."""
        matched = deleted = 0
        rejected: dict[int, str] = {}
        for verb, chunk in _chunks(statements, outcomes):
            if verb == "alone":  # a statement only the driver's document sequences carry
                alone = self._write_alone(outcomes[chunk[0]])
                matched, deleted = matched + alone[0], deleted + alone[1]
                rejected.update((chunk[0], why) for why in alone[2].values())
                continue
            command = SON([(verb, self.collection.name),
                           (verb + "s", [RawBSONDocument(statements[i]) for i in chunk]),
                           ("ordered", False)])
            if not self.collection.write_concern.is_server_default:
                command["writeConcern"] = self.collection.write_concern.document
            reply = self.collection.database.command(command, codec_options=CODEC_OPTIONS)
            if verb == "update":
                matched += reply.get("n", 0)
            else:
                deleted += reply.get("n", 0)
            for error in reply.get("writeErrors", ()):
                rejected[chunk[error["index"]]] = _refusal(error)
            concern = reply.get("writeConcernError")
            if concern is not None:
                failure = WriteConcernError(concern.get("errmsg", ""), concern.get("code"), concern)
                if service_of(failure) is not None:
                    raise failure  # the caller's retries: the guarded writes are idempotent
        return matched, deleted, rejected

    def _write_alone(self, outcome: Outcome) -> tuple[int, int, dict[int, str]]:
        """The write of one document by itself (``update_one``/``delete_one``, which read a
        write error without a code that the bulk API does not, and send a statement larger
        than a command may be): its counts, or its reason."""
        if outcome.raw_guard:
            guard = bson.decode(_statement_filter(self._statement(outcome)), CODEC_OPTIONS)
            update = bson.decode(outcome.raw_update, CODEC_OPTIONS)
        else:
            guard, update = self._guard(outcome), outcome.update
        try:
            if outcome.kind == "delete":
                return 0, self.collection.delete_one(
                    guard, collation=SIMPLE_COLLATION).deleted_count, {}
            return self.collection.update_one(guard, update,
                                              collation=SIMPLE_COLLATION).matched_count, 0, {}
        except Exception as exc:  # noqa: BLE001 - this document's dead letter says why
            if service_of(exc) is not None or refusals.explain(exc) is not None:
                raise
            return 0, 0, {0: _refusal(exc)}

    def _reread(self, outcomes: list[Outcome]) -> list[Mapping[str, Any]]:
        """The documents of outcomes whose guards missed, as they are now: by ``_id`` and, on
        a sharded collection, the shard key they had (one shard each). A document whose shard
        key changed meanwhile is not found, as if deleted: that change has an event of its
        own, which brings it back."""
        if not self.shard_key:
            return self._read([o.id for o in outcomes])
        return self._read([o.id for o in outcomes],
                          [{"_id": o.id, **o.shard_key} for o in outcomes])

    def _read(self, ids: list[Any],
              targeted: list[dict[str, Any]] | None = None) -> list[Mapping[str, Any]]:
        query: dict[str, Any] = {"$or": targeted} if targeted else {"_id": {"$in": ids}}
        if self.migration.filter:
            query = {"$and": [query, self.migration.filter]}
        return list(self.collection.find(query, collation=SIMPLE_COLLATION))


def _chunks(statements: list[bytes], outcomes: list[Outcome]
            ) -> Iterable[tuple[str, list[int]]]:
    """The commands (``update`` or ``delete``) that carry ``statements``, as their indices:
    at most :data:`MAX_WRITE_BATCH` statements and :data:`MAX_COMMAND_STATEMENT_BYTES` each.
    A larger statement is ``alone``: a command's body would exceed what MongoDB reads (the
    local server drops the connection), and it is written by itself."""
    for verb in ("update", "delete"):
        chunk: list[int] = []
        size = 0
        for i, outcome in enumerate(outcomes):
            if (outcome.kind == "delete") != (verb == "delete"):
                continue
            # An array element's overhead: its type byte and a key of at most 6 digits.
            length = len(statements[i]) + 8
            if length > MAX_COMMAND_STATEMENT_BYTES:
                yield "alone", [i]
                continue
            if chunk and (len(chunk) == MAX_WRITE_BATCH
                          or size + length > MAX_COMMAND_STATEMENT_BYTES):
                yield verb, chunk
                chunk, size = [], 0
            chunk.append(i)
            size += length
        if chunk:
            yield verb, chunk


def _statement_filter(statement: bytes) -> bytes:
    """The ``q`` document of a BSON statement (its first element)."""
    start = 7  # length, type byte, "q" and its terminator
    return statement[start:start + int.from_bytes(statement[start:start + 4], "little")]


def _refusal_for_size(size: int) -> str:
    return (f"write refused: the guarded update is {size:,} bytes, larger than MongoDB accepts "
            f"for one statement ({MAX_STATEMENT_BYTES:,}); its filter pins every field the "
            "transform read, so read fewer large fields")


def _too_large(outcome: Outcome) -> str | None:
    """Why MongoDB would refuse the guarded write of ``outcome`` for its size, or None.

    One statement of a write is a BSON document of at most ``MAX_STATEMENT_BYTES``. The guard
    pins the value of every field the transform read, so a transform that reads a large field
    and writes another can need more, though the document it makes fits in 16 MiB. (MongoDB
    would refuse the statement; the local test server drops the connection instead.) The
    statement is encoded for its size only when a cheap upper bound of it does not fit: the
    driver encodes it again to send it.
    """
    bound = size_bound(outcome)
    if bound is not None and bound <= MAX_STATEMENT_BYTES:
        return None
    size = len(bson.encode({"q": outcome.guard, "u": outcome.update},
                           codec_options=CODEC_OPTIONS))
    if size <= MAX_STATEMENT_BYTES:
        return None
    return _refusal_for_size(size)


# Bytes that bound, in BSON, one element's type, a key's terminator and a value of a fixed-size
# type (at most 16 bytes: Decimal128 is the largest), or a string's length and terminator.
_ELEMENT = 32
_FIXED_SIZE = frozenset({bool, int, float, type(None), ObjectId, dt.datetime})


def size_bound(outcome: Outcome) -> int | None:
    """An upper bound of the encoded size of ``outcome``'s guarded statement, or None when it
    holds a value the bound does not know (a sub-document, an array, ``$expr``...).

    A character of a ``str`` is at most 4 bytes of UTF-8; a key is bounded like a string; a
    guard's condition (``{$exists: b}``, ``{$eq: v, $not: {$type: "array"}}``) adds at most
    ``4 * _ELEMENT`` to its value.
    """
    total = 8 * _ELEMENT  # the statement, its "q" and "u", "$set" and "$unset"
    for name, condition in outcome.guard.items():
        if name == "$expr":
            return None
        total += 4 * len(name) + _ELEMENT
        if name == "_id":
            value = condition
        elif type(condition) is dict and len(condition) <= 2:
            total += 4 * _ELEMENT
            value = condition.get("$eq")
        else:
            return None
        kind = type(value)
        if kind is str:
            total += 4 * len(value) + _ELEMENT
        elif kind in _FIXED_SIZE:
            total += _ELEMENT
        else:
            return None
    for name, value in outcome.set.items():
        kind = type(value)
        if kind is str:
            total += 4 * (len(name) + len(value)) + 2 * _ELEMENT
        elif kind in _FIXED_SIZE:
            total += 4 * len(name) + 2 * _ELEMENT
        elif kind is bytes:
            total += 4 * len(name) + len(value) + 2 * _ELEMENT
        else:
            return None
    for name in outcome.unset:
        total += 4 * len(name) + 2 * _ELEMENT
    return total


def _refusal(error: Exception | Mapping[str, Any]) -> str:
    """The one-line reason a single document's guarded write was refused: by the server (an
    error, or a write error of a bulk reply, with or without its code), by the driver, or
    failed with any other error (its type and text)."""
    if isinstance(error, Mapping):
        code, text = error.get("code"), str(error.get("errmsg") or "no message")
    elif isinstance(error, DocumentTooLarge):
        return f"write refused: {message_of(error)}"
    elif isinstance(error, OperationFailure):
        code, text = error.code, message_of(error)
    else:
        return f"write failed: {first_line(error)}"
    return f"write refused ({'no code' if code is None else code}): {text}"
