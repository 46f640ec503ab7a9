"""Scanning a collection in ``_id`` order, in batches, resumable from the last ``_id`` seen.

The backfill scanner (documents into Kafka), the in-process ``apply`` and ``verify`` all read
the collection this way. One server cursor serves the scan while it reads steadily; the position
is the last ``_id`` read, and :func:`~cdc_migrator.base.bsontypes.after_filter` turns it back
into a query that also covers ``_id`` values of later BSON types (``$gt`` alone stays within
one type).

MongoDB kills a cursor left idle for 10 minutes (``cursorTimeoutMillis``); its next ``getMore``
fails with CursorNotFound (43). A scan therefore reopens its query after the last ``_id`` read
when its cursor was lost, and closes the cursor itself before it waits (a pause, a low rate):
it never holds a cursor that nothing reads.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.errors import OperationFailure

from .bsontypes import after_filter
from .messages import message_of
from .pacing import Pacer

T = TypeVar("T")

log = logging.getLogger("cdc_migrator.scanner")

#: The server error of a getMore whose cursor is gone (timed out, killed, or on a former primary).
CURSOR_NOT_FOUND = 43
#: A wait of the scan's own (the rate cap) longer than this closes the cursor first: well below
#: MongoDB's 10-minute idle timeout, and long enough that a reopen costs nothing in comparison.
RELEASE_BEFORE_WAIT = 60.0

def scan_filter(base: Mapping[str, Any] | None, after: Any = None, started: bool = False) -> dict:
    """Combine a migration's filter with the resume position (``started`` when one exists)."""
    parts = [dict(base)] if base else []
    if started:
        parts.append(after_filter(after))
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


class Scan:
    """The matching documents in ``_id`` order, ``batch_size`` at a time (iterate it once).

    With ``started`` the scan resumes after the ``_id`` ``after``. ``rate`` caps the documents
    read per second, to spare a production database. A lost cursor (CursorNotFound) is reopened
    after the last document read; :meth:`release` closes the cursor (the next batch reopens it)
    and :meth:`held` keeps it closed for a while. Any thread may call them.
    """

    def __init__(self, collection: Collection, base_filter: Mapping[str, Any] | None = None, *,
                 after: Any = None, started: bool = False, batch_size: int = 500,
                 rate: float | None = None) -> None:
        self.collection = collection
        self.base_filter = base_filter
        self.after = after
        self.started = started
        self.batch_size = batch_size
        self.rate = rate
        #: How often the cursor was found lost and the query reopened.
        self.reopened = 0
        self._cursor: Cursor | None = None
        self._exhausted = False
        self._held = False
        self._lock = threading.Lock()  # one reader of the cursor at a time, release included

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        pacer = Pacer()
        try:
            while True:
                batch = self._read_batch()
                if not batch:
                    return
                if self.rate:
                    self._pace(pacer, len(batch))
                yield batch
        finally:
            self.release()

    def _pace(self, pacer: Pacer, n: int) -> None:
        """Wait as long as the rate asks for ``n`` more documents, closing the cursor first
        when that is longer than :data:`RELEASE_BEFORE_WAIT`."""
        pacer.add(n)
        wait = pacer.wait_needed(self.rate)
        if wait > RELEASE_BEFORE_WAIT:
            self.release()
        while wait > 0:
            time.sleep(wait)
            wait = pacer.wait_needed(self.rate)

    def release(self) -> None:
        """Close the server cursor now; the scan goes on after the last document read."""
        with self._lock:
            self._close()

    close = release  # :func:`prefetched` closes what it iterated

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """While inside, no cursor stays open: the cursor is closed now, and a batch read
        meanwhile (e.g. by :func:`prefetched` reading ahead) closes its cursor after it."""
        with self._lock:
            self._held = True
            self._close()
        try:
            yield
        finally:
            self._held = False

    def _read_batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        # The position moves to the last document read, taken from it only when a query is
        # reopened after it and at the end of the batch: the _id of a RawBSONDocument (the
        # backfill's) is read by decoding the whole document, once a batch, not once a document.
        last: Any = None
        with self._lock:
            while len(batch) < self.batch_size and not self._exhausted:
                if self._cursor is None:
                    if last is not None:
                        self.after, self.started = last["_id"], True
                    self._cursor = self.collection.find(
                        scan_filter(self.base_filter, self.after, self.started),
                        sort=[("_id", 1)], batch_size=self.batch_size)
                try:
                    doc = next(self._cursor)
                except StopIteration:
                    self._exhausted = True
                    self._close()
                    break
                except OperationFailure as exc:
                    if exc.code != CURSOR_NOT_FOUND:
                        raise
                    # The server dropped the cursor (idle too long, killed, failover): the
                    # documents up to the last one read are in hand, so read on after it.
                    self._close()
                    self.reopened += 1
                    log.info("the scan of %s lost its cursor (%s); reopened after the last "
                             "document read", self.collection.name, message_of(exc))
                    continue
                batch.append(doc)
                last = doc
            if last is not None:
                self.after, self.started = last["_id"], True
            if self._held:
                self._close()
        return batch

    def _close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None


def scan(
    collection: Collection,
    base_filter: Mapping[str, Any] | None = None,
    *,
    after: Any = None,
    started: bool = False,
    batch_size: int = 500,
    rate: float | None = None,
) -> Scan:
    """The matching documents in ``_id`` order, ``batch_size`` at a time: see :class:`Scan`."""
    return Scan(collection, base_filter, after=after, started=started, batch_size=batch_size,
                rate=rate)


def prefetched(batches: Iterable[T], depth: int = 1) -> Iterator[T]:
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
