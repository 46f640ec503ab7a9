"""Points in the server's change history: where a change stream opened now starts, the time a
resume token stands for, and waiting until every write up to a time is majority-committed.

A change stream opened with no start point starts where the server is (MongoDB: one tick after
the primary's last applied write, ``getStartTimeForNewStream``; through mongos, the cluster
time), and its first reply's ``postBatchResumeToken`` names that point. It is the one point a
tool can take that the stream itself covers: a stream resumed after that token delivers every
write after it, majority-committed as change streams deliver them. ``ping``'s
``operationTime`` is no such point: on a replica set it is the node's last applied write, not
what is committed, and on mongos the cluster time.

That point can be past a write that is not committed yet (an oplog hole: a timestamp reserved
before, committed after): the stream never delivers that write, so whatever reads the
collection to cover what came before (the backfill's scan) must not read before every write up
to the point is committed. :func:`wait_committed` waits for that with a majority read after the
point (``readConcern: {level: "majority", afterClusterTime}``): the majority commit point cannot
pass an open hole.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from bson import Timestamp
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from ..errors import StopRequested

log = logging.getLogger("cdc_migrator.history")

#: MaxTimeMSExpired: the majority read's wait ran out (the point is not committed yet).
MAX_TIME_EXPIRED = 50
#: One wait of the majority read, in ms: it is asked again until the point is committed, so
#: that a stop request and the log line come in good time.
COMMIT_WAIT_MS = 1000
# The KeyString type byte of a Timestamp: a resume token's _data starts with its cluster time.
_TIMESTAMP_TYPE = "82"


def token_time(token: Any) -> Timestamp | None:
    """The cluster time a resume token stands for, or None when it does not say.

    MongoDB's token ``_data`` is a hex KeyString whose first value is the event's (or the
    high-water mark's) cluster time: type byte ``82``, then 8 bytes, seconds and increment. The
    token stays opaque otherwise.
    """
    data = token.get("_data") if hasattr(token, "get") else None
    if not isinstance(data, str) or len(data) < 18 or not data.startswith(_TIMESTAMP_TYPE):
        return None
    try:
        value = int(data[2:18], 16)
    except ValueError:
        return None
    return Timestamp(value >> 32, value & 0xFFFFFFFF)


def stream_start(db: Database, pipeline: Sequence[dict[str, Any]]) -> tuple[Any, Timestamp]:
    """Where a change stream of ``db`` opened now starts: its resume token and its time.

    The stream is opened with ``pipeline`` and closed at once; its first reply's
    ``postBatchResumeToken`` is the point. A token that does not tell its time (not MongoDB's
    format) is timed by a ``ping`` after the stream opened: no earlier than the stream's start.
    """
    # batchSize 0: the first reply carries no event, only the point. A server may still send
    # events (the local server does, under writes; pymongo caches no token for such a reply):
    # then the first event, or its batch's postBatchResumeToken, is a point the stream covers
    # from, later than where it opened, which the scan that starts after it covers.
    with db.watch(list(pipeline), max_await_time_ms=0, batch_size=0) as stream:
        token = stream.resume_token
        if token is None:
            stream.try_next()
            token = stream.resume_token
    if token is None:
        raise OperationFailure("the change stream's first reply has no postBatchResumeToken")
    at = token_time(token)
    if at is None:
        at = db.command("ping")["operationTime"]
    return token, at


def wait_committed(collection: Collection, at: Timestamp,
                   stop: threading.Event | None = None) -> None:
    """Return once every write up to ``at`` is majority-committed (so a read sees them all).

    A majority read of ``collection`` after ``at`` waits for that on the server, a second at a
    time; while it waits (an oplog hole before ``at``, secondaries behind) a line says so.
    Raises :class:`~cdc_migrator.errors.StopRequested` when ``stop`` is set meanwhile.
    """
    command = {"find": collection.name, "filter": {}, "projection": {"_id": 1}, "limit": 1,
               "singleBatch": True, "maxTimeMS": COMMIT_WAIT_MS,
               "readConcern": {"level": "majority", "afterClusterTime": at}}
    told = False
    while True:
        if stop is not None and stop.is_set():
            raise StopRequested("stopped while waiting for the writes before the armed point")
        try:
            collection.database.command(command)
            return
        except OperationFailure as exc:
            if exc.code != MAX_TIME_EXPIRED:
                raise
        if not told:
            told = True
            log.info("waiting until every write up to the armed point %s is majority-committed "
                     "(a write still in flight, or secondaries behind) before the scan reads", at)
