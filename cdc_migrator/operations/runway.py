"""The runway: how long the server keeps change history, against where the tailer stands.

A tailer resumes from its saved resume point. Once the server's history (on MongoDB the oplog,
a capped collection) no longer reaches back to that point, the change stream cannot resume
and the migration needs a new backfill. The window is measured as ``rs.printReplicationInfo()``
measures it: the first and last entries of ``local.oplog.rs``. The local test server answers
the same query from its change history, so one code path serves both.

``local`` cannot be read through mongos: on a sharded cluster each shard's oplog is read from
its own members (the hosts ``config.shards`` lists), and the stream, which needs every shard's
history, has the shortest window and the latest start among them. Where the oplog cannot be
read (a user without ``clusterMonitor``, a managed tier that keeps it to itself, a shard out
of reach) the window is unknown, with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from ..base.messages import message_of
from ..base.progress import format_duration
from ..base.topology import CLUSTER_MONITOR, UNAUTHORIZED, ShardConnector, is_mongos, shards
from ..core.state import HEARTBEAT_STALE_AFTER

#: Warn once the tailer's resume point has aged through this share of the history window.
WARN_AT_SHARE = 0.5


@dataclass
class HistoryWindow:
    """The oldest and newest entries of the server's change history (epoch seconds)."""

    oldest: float
    newest: float
    shards: int = 0  # through mongos: the shards read; 0: one replica set

    @property
    def seconds(self) -> float:
        return max(0.0, self.newest - self.oldest)


def history_window(client: MongoClient) -> tuple[HistoryWindow | None, str | None]:
    """The history window of the replica set ``client`` talks to, or None and why it could
    not be read."""
    oplog = client.local["oplog.rs"]
    try:
        ends = [next(iter(oplog.find({}, {"ts": 1}, sort=[("$natural", order)], limit=1)), None)
                for order in (1, -1)]
    except OperationFailure as exc:
        hint = f"; {CLUSTER_MONITOR}" if exc.code == UNAUTHORIZED else \
            " (a managed tier may keep it to itself)"
        return None, f"local.oplog.rs unreadable: {message_of(exc, 160)}{hint}"
    except PyMongoError as exc:
        return None, f"local.oplog.rs unreadable: {message_of(exc, 160)}"
    first, last = ends
    if first is None or last is None or not hasattr(first.get("ts"), "time"):
        return None, "local.oplog.rs is empty or absent (not a replica set member?)"
    return HistoryWindow(float(first["ts"].time), float(last["ts"].time)), None


def cluster_window(client: MongoClient, connect: ShardConnector
                   ) -> tuple[HistoryWindow | None, str | None]:
    """The history window a change stream of the deployment ``client`` talks to has: its own
    oplog's, or through mongos the shards' together (the latest start, the shortest length);
    or None and why it could not be read."""
    try:
        if not is_mongos(client):
            return history_window(client)
        listed = shards(client)
    except PyMongoError as exc:
        return None, f"config.shards unreadable: {message_of(exc, 160)}; {CLUSTER_MONITOR}"
    windows = []
    for shard in listed:
        try:
            window, unknown = history_window(connect(shard.hosts, shard.replica_set))
        except PyMongoError as exc:
            window, unknown = None, message_of(exc, 160)
        if window is None:
            return None, f"shard {shard.id} ({shard.hosts}): {unknown}"
        windows.append(window)
    if not windows:
        return None, "through mongos, and config.shards lists no shard"
    oldest = max(w.oldest for w in windows)
    return HistoryWindow(oldest, oldest + min(w.seconds for w in windows), len(windows)), None


def assess(window: HistoryWindow, position_time: float | None, backfill_eta: float | None,
           now: float | None = None) -> dict[str, Any]:
    """The runway of a tailer whose resume point is at ``position_time``, with warnings.

    The runway is how much longer the resume point stays inside the history if the window
    keeps its length: the window minus the resume point's age. A running tailer keeps its
    resume point seconds old (its heartbeat); a stopped one's ages until the runway is gone.
    """
    now = time.time() if now is None else now
    age = None if position_time is None else max(0.0, now - position_time)
    runway = None if age is None else window.seconds - age
    warnings = []
    # Oplog timestamps count whole seconds: a resume point in the oldest entry's second may be
    # before it, and is counted as lost.
    if position_time is not None and position_time < window.oldest + 1:
        warnings.append("the tailer's resume point is older than the server's change history: "
                        "it cannot resume (history lost); `reset` and run again, or use "
                        "--on-history-lost rebackfill")
    elif age is not None and runway is not None and age > HEARTBEAT_STALE_AFTER \
            and age > WARN_AT_SHARE * window.seconds:
        warnings.append(f"the tailer's resume point is {format_duration(age)} old and the "
                        f"server keeps {format_duration(window.seconds)} of change history: "
                        f"it runs out in about {format_duration(max(0.0, runway))}; start the "
                        "tailer")
    if backfill_eta is not None and runway is not None and backfill_eta > runway:
        warnings.append(f"the backfill needs about {format_duration(backfill_eta)}, longer than "
                        f"the runway ({format_duration(max(0.0, runway))}): should the tailer "
                        "stop meanwhile, the history runs out first; keep it running, or give "
                        "the server a larger oplog")
    return {"window_seconds": round(window.seconds, 1), "oldest": window.oldest,
            "shards": window.shards,
            "resume_point_age_seconds": None if age is None else round(age, 1),
            "runway_seconds": None if runway is None else round(runway, 1),
            "backfill_eta_seconds": backfill_eta, "warnings": warnings}
