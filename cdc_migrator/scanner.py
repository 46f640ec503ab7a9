"""Scanning a collection in ``_id`` order, in batches, resumable from the last ``_id`` seen.

The backfill scanner (documents into Kafka), the in-process ``apply`` and ``verify`` all read
the collection this way. One server cursor serves the whole scan; the position saved between
batches is the last ``_id``, and :func:`after_filter` turns it back into a query that also
covers ``_id`` values of later BSON types (``$gt`` alone stays within one type).
"""

from __future__ import annotations

import datetime as dt
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from bson import (
    Binary,
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
from pymongo.collection import Collection

T = TypeVar("T")

# MongoDB's comparison order of BSON types, as $type aliases. The deprecated symbol type
# (sorted with strings) is left out: drivers no longer write it.
_TYPE_ORDER: list[tuple[str, ...]] = [
    ("minKey",), ("null",), ("int", "long", "double", "decimal"), ("string",),
    ("object",), ("array",), ("binData",), ("objectId",), ("bool",), ("date",), ("timestamp",),
    ("regex",), ("maxKey",),
]


def _rank(value: Any) -> int:
    if isinstance(value, MinKey):
        return 0
    if value is None:
        return 1
    if isinstance(value, bool):
        return 8
    if isinstance(value, (int, float, Int64, Decimal128)):
        return 2
    if isinstance(value, str):
        return 3
    if isinstance(value, (Mapping, DBRef)):
        return 4
    if isinstance(value, (list, tuple)):
        return 5
    if isinstance(value, (bytes, Binary, uuid.UUID)):
        return 6
    if isinstance(value, ObjectId):
        return 7
    if isinstance(value, (dt.datetime, DatetimeMS)):
        return 9
    if isinstance(value, Timestamp):
        return 10
    if isinstance(value, (Regex, re.Pattern)):
        return 11
    if isinstance(value, MaxKey):
        return 12
    raise TypeError(f"unsupported _id type {type(value).__name__}")


def after_filter(last_id: Any) -> dict[str, Any]:
    """A query for the documents whose ``_id`` sorts after ``last_id`` in BSON order."""
    later = [alias for group in _TYPE_ORDER[_rank(last_id) + 1:] for alias in group]
    clauses: list[dict[str, Any]] = [{"_id": {"$gt": last_id}}]
    if later:
        clauses.append({"_id": {"$type": later}})
    return {"$or": clauses}


def scan_filter(base: Mapping[str, Any] | None, after: Any = None, started: bool = False) -> dict:
    """Combine a migration's filter with the resume position (``started`` when one exists)."""
    parts = [dict(base)] if base else []
    if started:
        parts.append(after_filter(after))
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


class RateLimiter:
    """Caps documents per second (``rate`` None or 0: no cap)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate or 0
        self._start = time.monotonic()
        self._count = 0

    def wait(self, n: int) -> None:
        if self.rate <= 0:
            return
        self._count += n
        ahead = self._count / self.rate - (time.monotonic() - self._start)
        if ahead > 0:
            time.sleep(ahead)


def scan(
    collection: Collection,
    base_filter: Mapping[str, Any] | None = None,
    *,
    after: Any = None,
    started: bool = False,
    batch_size: int = 500,
    rate: float | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the matching documents in ``_id`` order, ``batch_size`` at a time.

    With ``started`` the scan resumes after the ``_id`` ``after``. ``rate`` caps the documents
    read per second, to spare a production database.
    """
    limiter = RateLimiter(rate)
    query = scan_filter(base_filter, after, started)
    cursor = collection.find(query, sort=[("_id", 1)], batch_size=batch_size)
    try:
        batch: list[dict[str, Any]] = []
        for doc in cursor:
            batch.append(doc)
            if len(batch) >= batch_size:
                limiter.wait(len(batch))
                yield batch
                batch = []
        if batch:
            limiter.wait(len(batch))
            yield batch
    finally:
        cursor.close()


def prefetched(batches: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Iterate ``batches`` in a background thread, at most ``depth`` items ahead of the caller.

    Overlaps reading the next batch (a server round trip) with the caller's work on the current
    one. The caller sees the items in order; an error of the iteration is raised in the caller
    where it happened. Leaving the loop early (or closing this generator) stops the reader after
    the item it is reading, and the reader closes ``batches`` (a scan closes its cursor).
    """
    items: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: int, value: Any) -> bool:
        while not stop.is_set():
            try:
                items.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in batches:
                if not put(_ITEM, item):
                    return
            put(_END, None)
        except BaseException as exc:  # handed to the caller
            put(_ERROR, exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, daemon=True, name="prefetch")
    reader.start()
    try:
        while True:
            kind, value = items.get()
            if kind == _ITEM:
                yield value
            elif kind == _END:
                return
            else:
                raise value
    finally:
        stop.set()
        reader.join()


_ITEM, _END, _ERROR = 0, 1, 2


def count(collection: Collection, base_filter: Mapping[str, Any] | None = None) -> int:
    """Documents a scan will visit (cheap estimate when there is no filter)."""
    if not base_filter:
        return collection.estimated_document_count()
    return collection.count_documents(dict(base_filter))
