"""The state of each migration, one document per migration in one state collection.

Fields: ``phase``, ``collection``, ``backfill`` (cursor, done, scanned, produced, total),
``apply`` (cursor of the in-process shortcut), ``tail`` (armed_at operation time, resume token,
produced), ``counts`` (applied, updated, deleted, unchanged, failed, retried), ``errors`` (the
last failures), ``paused``, timestamps. Counters are updated with ``$inc`` so several consumer
processes can share one document.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, cast

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database

DEFAULT_STATE_COLLECTION = "cdc_migrator_state"
MAX_ERRORS_KEPT = 50

# Phases, in the order a migration normally goes through them.
ARMED = "armed"
BACKFILLING = "backfilling"
CATCHING_UP = "catching up"
READY = "ready for cutover"
CUT_OVER = "cut over"
FAILED = "failed"
CANCELLED = "cancelled"
APPLYING = "applying"
APPLIED = "applied"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StateStore:
    """Reads and updates the state documents in ``db[collection_name]``."""

    def __init__(self, db: Database, collection_name: str = DEFAULT_STATE_COLLECTION) -> None:
        self.collection: Collection = db[collection_name]

    def get(self, name: str) -> dict[str, Any] | None:
        return self.collection.find_one({"_id": name})

    def all(self) -> list[dict[str, Any]]:
        return list(self.collection.find().sort("_id", 1))

    def ensure(self, name: str, collection: str) -> dict[str, Any]:
        """The state of ``name``, created when missing."""
        # An upsert that returns the document after it always returns one.
        return cast(dict[str, Any], self.collection.find_one_and_update(
            {"_id": name},
            {"$setOnInsert": {"collection": collection, "phase": None, "created_at": now(),
                              "counts": {}, "errors": [], "paused": False}},
            upsert=True, return_document=ReturnDocument.AFTER,
        ))

    def set(self, name: str, **fields: Any) -> None:
        """Set fields (dotted paths allowed, e.g. ``backfill.cursor``)."""
        fields["updated_at"] = now()
        self.collection.update_one({"_id": name}, {"$set": fields})

    def unset(self, name: str, *paths: str) -> None:
        self.collection.update_one({"_id": name}, {"$unset": {p: "" for p in paths},
                                                   "$set": {"updated_at": now()}})

    def add(self, name: str, counts: dict[str, int], errors: Iterable[dict[str, Any]] = (),
            *, where: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Increment counters under ``counts.`` and append failures, in one write.

        ``where`` adds conditions on the state document; False when they did not hold.
        """
        update: dict[str, Any] = {"$set": {"updated_at": now(), **fields}}
        inc = {f"counts.{k}": v for k, v in counts.items() if v}
        if inc:
            update["$inc"] = inc
        errors = list(errors)
        if errors:
            update["$push"] = {"errors": {"$each": errors, "$slice": -MAX_ERRORS_KEPT}}
            update["$set"]["last_error"] = errors[-1]
        return self.collection.update_one({"_id": name, **(where or {})}, update).matched_count > 0

    def rearm(self, name: str, armed_at: Any, recovery: dict[str, Any]) -> None:
        """Capture again from ``armed_at`` after the change history was lost: the resume token
        and the backfill are forgotten, the recovery is counted and kept."""
        self.collection.update_one({"_id": name}, {
            "$set": {"phase": ARMED, "tail.armed_at": armed_at, "tail.last_recovery": recovery,
                     "updated_at": now()},
            "$unset": {"tail.resume_token": "", "tail.position_time": "", "backfill": "",
                       "failure": ""},
            "$inc": {"tail.recoveries": 1},
        })

    def increment(self, name: str, path: str, n: int) -> None:
        self.collection.update_one({"_id": name}, {"$inc": {path: n}})

    def delete(self, name: str) -> None:
        self.collection.delete_one({"_id": name})


def stop_record(component: str, error: str, doc_id: Any = None) -> dict[str, Any]:
    """Why a piece (``consumer``, ``tailer``) stopped: kept under ``stopped.<component>`` and as
    ``last_error`` until the piece runs again, for ``status``, ``/readyz`` and the metrics."""
    return {"component": component, "error": error, "id": doc_id, "at": now()}


def failure_record(doc_id: Any, error: str, source: str) -> dict[str, Any]:
    return {"id": doc_id, "error": error, "source": source, "at": now()}
