"""The history of the migrations: what became of each one, kept for good.

One document per event in the tool's collection ``cdc_migrator_history`` of the migrated
database, appended by the state store's named operations (:class:`~.state.StateStore`) as they
change a migration's phase: armed, backfilled, cut over, reverting, reverted, cancelled, reset,
accepted, re-armed after lost change history. Each entry says when, from which host and tool
version, and with which code (the fingerprint); a cutover keeps its counts, an acceptance the
fingerprint it replaced. ``reset`` forgets a migration's state but not its history.

The stored layout (one document per entry)::

    _id (ObjectId: the order of the entries), migration, collection, event, at, host,
    version, fingerprint, details {counts | previous | phase | reason | scanned ...}
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import metadata
from typing import Any

from pymongo.database import Database

from ..base.naming import HISTORY_COLLECTION


class Event(StrEnum):
    """What happened to a migration."""

    ARMED = "armed"
    BACKFILLED = "backfilled"
    CUT_OVER = "cut_over"
    REVERTING = "reverting"
    REVERTED = "reverted"
    CANCELLED = "cancelled"
    RESET = "reset"
    ACCEPTED = "accepted"
    REARMED = "rearmed"

    @property
    def label(self) -> str:
        """How ``history`` shows the event."""
        return _LABELS.get(self, self.value)


_LABELS = {Event.CUT_OVER: "cut over", Event.REARMED: "re-armed"}


def tool_version() -> str:
    """The version of cdc-migrator this process runs."""
    try:
        return metadata.version("cdc-migrator")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@dataclass
class Entry:
    """One event of a migration's history."""

    migration: str
    collection: str | None
    event: Event
    at: dt.datetime
    host: str
    version: str
    fingerprint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Entry:
        return cls(migration=doc["migration"], collection=doc.get("collection"),
                   event=Event(doc["event"]), at=doc["at"], host=doc.get("host") or "?",
                   version=doc.get("version") or "?", fingerprint=doc.get("fingerprint"),
                   details=dict(doc.get("details") or {}))

    def as_dict(self) -> dict[str, Any]:
        return {"migration": self.migration, "collection": self.collection,
                "event": self.event.value, "at": self.at, "host": self.host,
                "version": self.version, "fingerprint": self.fingerprint,
                "details": self.details}


class History:
    """The history collection of one database: entries appended, read in their order."""

    def __init__(self, db: Database) -> None:
        self.collection = db[HISTORY_COLLECTION]

    def record(self, migration: str, collection: str | None, event: Event, *,
               fingerprint: str | None = None, **details: Any) -> None:
        self.collection.insert_one({
            "migration": migration, "collection": collection, "event": event.value,
            "at": dt.datetime.now(dt.UTC), "host": socket.gethostname(),
            "version": tool_version(), "fingerprint": fingerprint,
            "details": {k: v for k, v in details.items() if v is not None}})

    def entries(self, collection: str | None = None) -> list[Entry]:
        """Every entry (of the migrations of ``collection``), oldest first."""
        query = {} if collection is None else {"collection": collection}
        return [Entry.from_document(d) for d in self.collection.find(query).sort("_id", 1)]
