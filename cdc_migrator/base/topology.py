"""The deployment as the tool must know it: a replica set's members that count for replication
lag, a sharded cluster's shards, and what refused to tell.

Replication lag is how far the slowest *counting* secondary is behind the primary
(``replSetGetStatus``). Which members count comes from ``replSetGetConfig``: a delayed member
(``secondaryDelaySecs``, before 5.0 ``slaveDelay``) is behind by design, a hidden one serves no
reads, an arbiter holds no data and a non-voting one takes no part in the majority; none of
them is waited for. ``replSetGetStatus`` lists hidden and delayed members as secondaries like
any other, so only the configuration tells them apart.

Through mongos there is no replica set status: each shard's is read from its own members (the
hosts in ``config.shards``), connected to with the same credentials and options, where the
user may. A refusal (no ``clusterMonitor``, a managed tier that keeps the command to itself,
mongos) is not an outage: :class:`Lag` says the lag is unknown, why, and what would fix it;
the caller decides whether to run without the bound.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo.errors import OperationFailure, PyMongoError

from .messages import message_of

log = logging.getLogger("cdc_migrator.topology")

#: replSetGetStatus on a server that is not in a replica set.
NO_REPLICATION = 76
#: MongoDB's Unauthorized: the user lacks the privilege.
UNAUTHORIZED = 13
#: What ``hello`` says on a mongos.
MONGOS = "isdbgrid"
#: The role that holds replSetGetStatus, replSetGetConfig and read on ``local`` and ``config``.
CLUSTER_MONITOR = "grant the user the clusterMonitor role (on admin)"

#: Connects to one shard's members: (hosts "h1:p,h2:p", replica set name or None) -> client.
ShardConnector = Callable[[str, "str | None"], pymongo.MongoClient]


@dataclass(frozen=True)
class Lag:
    """Replication lag as read now: ``seconds`` behind (None and no ``unknown``: not a replica
    set, nothing to bound), or why it is ``unknown`` and the ``fix``."""

    seconds: float | None = None
    unknown: str | None = None
    fix: str | None = None


@dataclass(frozen=True)
class Shard:
    """One shard of a sharded cluster, as ``config.shards`` lists it."""

    id: str
    hosts: str
    replica_set: str | None

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> Shard:
        """``host`` is ``"rs/h1:p,h2:p"`` (a replica set shard) or ``"h:p"``."""
        host = str(doc.get("host") or "")
        name, slash, hosts = host.partition("/")
        return cls(str(doc.get("_id")), hosts if slash else host, name if slash else None)


def is_mongos(client: pymongo.MongoClient) -> bool:
    """Whether ``client`` talks to a mongos (a sharded cluster's router)."""
    return client.admin.command("hello").get("msg") == MONGOS


def counting_members(config: Mapping[str, Any]) -> set[Any]:
    """The ``_id`` s of the members whose lag counts: data-bearing, visible, not delayed,
    voting."""
    counted = set()
    for member in config.get("members") or []:
        delay = member.get("secondaryDelaySecs", member.get("slaveDelay", 0)) or 0
        if member.get("arbiterOnly") or member.get("hidden") or delay or \
                member.get("votes", 1) == 0:
            continue
        counted.add(member.get("_id"))
    return counted


def lag_of(status: Mapping[str, Any], counted: Iterable[Any]) -> float | None:
    """Seconds the slowest counting secondary is behind the primary (``replSetGetStatus``'s
    ``optimeDate`` s); None when none is there to compare."""
    members = status.get("members") or []
    ids = set(counted)
    primary = next((m for m in members if m.get("state") == 1), None)
    secondaries = [m for m in members if m.get("state") == 2 and m.get("_id") in ids
                   and isinstance(m.get("optimeDate"), dt.datetime)]
    if primary is None or not isinstance(primary.get("optimeDate"), dt.datetime) \
            or not secondaries:
        return None
    newest = primary["optimeDate"]
    return max(0.0, max((newest - m["optimeDate"]).total_seconds() for m in secondaries))


def refused(what: str, exc: OperationFailure) -> tuple[str, str]:
    """Why a command was refused, and what would fix it, each in a phrase."""
    details = exc.details or {}
    name = f" {details.get('codeName')}" if details.get("codeName") else ""
    reason = f"{what} refused ({exc.code}{name}: {message_of(exc, 160)})" if exc.code \
        else f"{what} refused ({message_of(exc, 160)})"
    if exc.code == UNAUTHORIZED:
        return reason, CLUSTER_MONITOR
    return reason, "this deployment keeps it to itself (a managed tier may): ask its operator"


def replica_set_lag(client: pymongo.MongoClient) -> Lag:
    """The lag of the replica set ``client`` talks to (its primary's view)."""
    try:
        status = client.admin.command("replSetGetStatus")
    except OperationFailure as exc:
        if exc.code == NO_REPLICATION:
            return Lag()
        reason, fix = refused("replSetGetStatus", exc)
        return Lag(unknown=reason, fix=fix)
    try:
        config = client.admin.command("replSetGetConfig")["config"]
    except OperationFailure as exc:  # which members count is only in the configuration
        reason, fix = refused("replSetGetConfig", exc)
        return Lag(unknown=reason, fix=fix)
    return Lag(seconds=lag_of(status, counting_members(config)))


def shards(client: pymongo.MongoClient) -> list[Shard]:
    """The shards ``config.shards`` lists (through mongos)."""
    return [Shard.parse(doc) for doc in client.config.shards.find({}, {"host": 1})]


def sharded_lag(client: pymongo.MongoClient, connect: ShardConnector) -> Lag:
    """The largest lag over the shards of the cluster behind the mongos ``client``."""
    try:
        listed = shards(client)
    except OperationFailure as exc:
        reason, fix = refused("reading config.shards", exc)
        return Lag(unknown=f"through mongos the lag is read from each shard, and {reason}",
                   fix=CLUSTER_MONITOR if exc.code == UNAUTHORIZED else fix)
    if not listed:
        return Lag(unknown="through mongos the lag is read from each shard, and config.shards "
                           "lists none",
                   fix="check that the MongoDB URI names the cluster's mongos")
    worst: float | None = None
    for shard in listed:
        try:
            lag = replica_set_lag(connect(shard.hosts, shard.replica_set))
        except PyMongoError as exc:
            return Lag(unknown=f"shard {shard.id} ({shard.hosts}) cannot be read: "
                               f"{message_of(exc, 160)}",
                       fix="let this machine reach every shard's members with the same user")
        if lag.unknown is not None:
            return Lag(unknown=f"shard {shard.id}: {lag.unknown}", fix=lag.fix)
        if lag.seconds is not None:
            worst = lag.seconds if worst is None else max(worst, lag.seconds)
    return Lag(seconds=worst)


class LagReader:
    """Reads the replication lag of the deployment ``client`` talks to, again at each call."""

    def __init__(self, client: pymongo.MongoClient, connect: ShardConnector) -> None:
        self.client, self.connect = client, connect
        self._mongos: bool | None = None

    def __call__(self) -> Lag:
        if self._mongos is None:
            self._mongos = is_mongos(self.client)
        if self._mongos:
            return sharded_lag(self.client, self.connect)
        return replica_set_lag(self.client)


@dataclass(frozen=True)
class Chunk:
    """One chunk of a sharded collection: ``[min, max)`` of its shard key, on ``shard``."""

    min: Mapping[str, Any]
    max: Mapping[str, Any]
    shard: str


@dataclass(frozen=True)
class ShardedCollection:
    """A collection sharded on ``key`` (``config.collections``), with its chunks in order."""

    key: Mapping[str, Any]
    chunks: tuple[Chunk, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """The shard key's fields (paths), in order: what a targeted write pins."""
        return tuple(self.key)

    @property
    def ranged_on_id(self) -> bool:
        """Whether the key starts with ``_id``, ranged (not hashed): an ``_id`` range is then a
        range of chunks, and the chunks' ``_id`` bounds say which shard holds it."""
        first, order = next(iter(self.key.items()))
        return first == "_id" and order in (1, -1, 1.0, -1.0)

    def shard_boundaries(self) -> list[Any]:
        """The ``_id`` s where the shard changes from one chunk to the next (for a key ranged on
        ``_id``): cut there, each range of ``_id`` is read from one shard."""
        cuts = []
        for before, after in zip(self.chunks, self.chunks[1:], strict=False):
            if after.shard != before.shard:
                cuts.append(after.min.get("_id"))
        return cuts


def sharded_collection(client: pymongo.MongoClient, namespace: str) -> ShardedCollection | None:
    """How ``namespace`` is sharded (through mongos), or None when it is not (or ``client``
    is no mongos). ``config.collections`` lists it with its key, unless dropped or (8.0)
    tracked unsharded; its chunks are keyed by its ``uuid`` (5.0+) or its name (up to 4.4).
    Raises OperationFailure when ``config`` cannot be read."""
    if not is_mongos(client):
        return None
    config = client.config
    entry = config.collections.find_one({"_id": namespace})
    if entry is None or entry.get("dropped") or entry.get("unsplittable") or not entry.get("key"):
        return None
    keyed = {"uuid": entry["uuid"]} if entry.get("uuid") is not None else {"ns": namespace}
    found = list(config.chunks.find(keyed, {"min": 1, "max": 1, "shard": 1}, sort=[("min", 1)]))
    if not found and "uuid" in keyed:
        found = list(config.chunks.find({"ns": namespace}, sort=[("min", 1)]))
    chunks = tuple(Chunk(c["min"], c["max"], str(c.get("shard"))) for c in found)
    return ShardedCollection(dict(entry["key"]), chunks)


def shard_key(client: pymongo.MongoClient, namespace: str) -> tuple[str, ...]:
    """The fields of ``namespace`` 's shard key, for targeted writes; () when it is not sharded
    (or ``client`` is no mongos), and, with a warning, when ``config`` cannot be read: writes
    then pin ``_id`` alone, which mongos sends to every shard (before 7.1) or through its
    slower two-phase path (7.1+)."""
    try:
        sharded = sharded_collection(client, namespace)
    except OperationFailure as exc:
        log.warning("the shard key of %s cannot be read from config.collections (%s): guarded "
                    "writes pin _id alone and go to every shard; %s", namespace,
                    message_of(exc, 160), CLUSTER_MONITOR)
        return ()
    return sharded.fields if sharded is not None else ()


def version(client: pymongo.MongoClient) -> tuple[int, ...]:
    """The server's version (``buildInfo``; through mongos, the mongos's)."""
    info = client.admin.command("buildInfo")
    reported = info.get("versionArray") or [
        int(p) for p in str(info.get("version") or "0").split("-")[0].split(".") if p.isdigit()]
    return tuple(int(p) for p in reported[:3])


def splits_large_events(client: pymongo.MongoClient) -> bool:
    """Whether change streams take ``$changeStreamSplitLargeEvent``: MongoDB 6.0.9 and later
    of the 6.0 series, and 7.0 on (not the 6.1 to 6.3 rapid releases)."""
    found = version(client)
    return found >= (7, 0) or (6, 0, 9) <= found < (6, 1)
