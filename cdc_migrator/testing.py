"""Oracles for tests: the in-memory meaning of what the tool sends to MongoDB and Kafka.

Tests (the project's, and a user's of their own transforms) use these to say what a guarded
write or an envelope should be; the tool itself never calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import bson
from bson.timestamp import Timestamp

from .base.codec import CODEC_OPTIONS
from .core.events import (
    CHANGE_OPERATIONS,
    Envelope,
    EventSource,
    Operation,
    encode_document,
    now_ms,
)
from .core.patch import Outcome, same_value


def apply_to(doc: Mapping[str, Any], outcome: Outcome) -> dict[str, Any] | None:
    """The document as it is after ``outcome`` is written (None once deleted). Pure."""
    if outcome.kind == "delete":
        return None
    new = dict(doc)
    if outcome.kind == "update":
        new.update(outcome.set)
        for name in outcome.unset:
            new.pop(name, None)
    return new


def matches_guard(doc: Mapping[str, Any] | None, guard: Mapping[str, Any]) -> bool:
    """Whether MongoDB would match ``doc`` with a guard of
    :func:`~cdc_migrator.core.patch.guard_filter`, evaluated in memory."""
    if doc is None or not same_value(doc.get("_id"), guard["_id"]):
        return False
    for name, cond in guard.items():
        if name in ("_id", "$expr"):
            continue
        if "$eq" in cond:  # {$eq: v, $not: {$type: "array"}}: a plain value, pinned
            if name not in doc or not same_value(doc[name], cond["$eq"]):
                return False
        elif cond["$exists"] != (name in doc):
            return False
    expr = guard.get("$expr")
    if expr is None:
        return True
    for condition in expr.get("$and", [expr]):
        (operator, (ref, operand)), = condition.items()
        if isinstance(ref, dict) and "$type" in ref:  # {$eq or $ne: [{$type: F}, "missing"]}
            if (_field_of(ref["$type"]) in doc) != (operator == "$ne"):
                return False
        else:
            name = _field_of(ref)
            if name not in doc or not same_value(doc[name], operand["$literal"]):
                return False
    return True


def _field_of(ref: Any) -> str:
    return ref["$getField"]["field"]["$literal"] if isinstance(ref, dict) else ref[1:]


def snapshot_envelope(
    migration: str,
    database: str,
    collection: str,
    document: Mapping[str, Any],
    *,
    cluster_time: Timestamp | None = None,
) -> Envelope:
    """A backfill read of ``document`` (which must have an ``_id``).

    ``cluster_time`` is optional: pass the read's ``operationTime`` / ``atClusterTime`` if
    the scanner knows it. Raises ValueError if the document has no ``_id``.
    """
    if not isinstance(document, Mapping):
        raise ValueError(f"snapshot document must be a mapping, got {type(document).__name__}")
    if "_id" not in document:
        raise ValueError("snapshot document has no _id")
    return Envelope(
        migration=migration,
        source=EventSource.BACKFILL,
        operation=Operation.SNAPSHOT,
        database=database,
        collection=collection,
        key=document["_id"],
        document=as_plain_dict(document),
        cluster_time=cluster_time,
        resume_token=None,
        emitted_at=now_ms(),
        fence_id=None,
    )

def change_envelope(
    migration: str,
    database: str,
    collection: str,
    change_event: Mapping[str, Any],
) -> Envelope:
    """Map one pymongo change stream event to an envelope.

    Uses ``operationType`` (insert, update, replace or delete), ``documentKey._id`` (any
    shard-key fields in ``documentKey`` are dropped), ``fullDocument`` (None for deletes,
    and for updates unless the stream uses ``full_document="updateLookup"`` and the document
    still exists), ``clusterTime`` and ``_id`` (the resume token). ``database`` and
    ``collection`` name the namespace the event came from (normally ``change_event["ns"]``).

    Raises ValueError for other operation types (drop, rename, invalidate, ...): the
    tailer must handle those itself.
    """
    op = change_event.get("operationType")
    operation = CHANGE_OPERATIONS.get(op)  # type: ignore[arg-type]
    if operation is None:
        raise ValueError(
            f"change event operationType {op!r} has no envelope; "
            "only insert, update, replace and delete do"
        )
    document_key = change_event.get("documentKey")
    if not isinstance(document_key, Mapping) or "_id" not in document_key:
        raise ValueError(f"{op} change event has no documentKey._id")
    document = None if operation is Operation.DELETE else change_event.get("fullDocument")
    if document is not None and not isinstance(document, Mapping):
        raise ValueError(f"fullDocument must be a mapping, got {type(document).__name__}")
    cluster_time = change_event.get("clusterTime")
    if cluster_time is not None and not isinstance(cluster_time, Timestamp):
        raise ValueError(
            f"clusterTime must be a bson.Timestamp, got {type(cluster_time).__name__}"
        )
    token = change_event.get("_id")
    if token is not None and not isinstance(token, Mapping):
        raise ValueError(f"resume token (_id) must be a mapping, got {type(token).__name__}")
    return Envelope(
        migration=migration,
        source=EventSource.CHANGE,
        operation=operation,
        database=database,
        collection=collection,
        key=document_key["_id"],
        document=as_plain_dict(document),
        cluster_time=cluster_time,
        resume_token=as_plain_dict(token),
        emitted_at=now_ms(),
        fence_id=None,
    )


def as_plain_dict(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``value`` as :func:`~cdc_migrator.core.events.decode` gives it back: a plain dict."""
    if value is None or type(value) is dict:
        return value
    # Normalise other mappings (SON, RawBSONDocument, ...) to what decode() will return.
    return bson.decode(encode_document(value), CODEC_OPTIONS)
