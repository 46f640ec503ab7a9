"""The ``ctx`` a transform receives."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database

_WRITE_METHODS = frozenset({
    "insert_one", "insert_many", "update_one", "update_many", "replace_one", "delete_one",
    "delete_many", "bulk_write", "find_one_and_update", "find_one_and_replace",
    "find_one_and_delete", "create_index", "create_indexes", "drop", "drop_index", "rename",
})
# What reads a collection's documents: a transform calling one of these depends on them.
_READ_METHODS = frozenset({
    "find", "find_one", "find_raw_batches", "aggregate", "aggregate_raw_batches",
    "count_documents", "estimated_document_count", "distinct", "watch",
    "find_one_and_update", "find_one_and_replace", "find_one_and_delete",
})

log = logging.getLogger("cdc_migrator.reads")


@dataclass
class Context:
    """Passed to every transform call.

    ``db`` is the pymongo Database of the migrated collection, for look-ups and for writes to
    other collections. In a dry run (``dry_run`` true) writes through ``ctx.db`` are not made
    but recorded in ``side_effects``.

    ``reads`` is the read-set: every collection whose documents the transform read through
    ``ctx.db`` (since the context was made, or the caller last cleared it). With ``declared``
    (the migrated collection and its ``depends_on``), the first read of any other collection
    is logged once as a warning, and kept in ``undeclared``: a change to it during the window
    makes no document due again.
    """

    db: Any
    migration: str
    dry_run: bool = False
    side_effects: list[str] = field(default_factory=list)
    reads: set[str] = field(default_factory=set)
    declared: frozenset[str] | None = None
    undeclared: set[str] = field(default_factory=set)

    def note_read(self, collection: str) -> None:
        self.reads.add(collection)
        if self.declared is not None and collection not in self.declared \
                and collection not in self.undeclared:
            self.undeclared.add(collection)
            if not self.dry_run:
                log.warning("migration %s reads collection %r, which it does not declare in "
                            "depends_on: a change to it during the window does not make the "
                            "documents it affects due again", self.migration, collection)


def make_context(db: Database, migration: str, dry_run: bool = False,
                 declared: Iterable[str] | None = None) -> Context:
    """A context whose ``db`` is real, or, for a dry run, one that records writes instead.
    Either way the collections read through it are recorded (see :class:`Context`)."""
    ctx = Context(db=db, migration=migration, dry_run=dry_run,
                  declared=None if declared is None else frozenset(declared))
    ctx.db = _RecordingDatabase(db, ctx, ctx.side_effects if dry_run else None)
    return ctx


class _RecordingDatabase:
    """Reads pass through to the real database and are recorded in the context's read-set;
    in a dry run (``log`` given) writes are recorded and skipped."""

    def __init__(self, db: Database, ctx: Context, log: list[str] | None) -> None:
        self._db = db
        self._ctx = ctx
        self._log = log

    def __getitem__(self, name: str) -> _RecordingCollection:
        return _RecordingCollection(self._db[name], self._ctx, self._log)

    def get_collection(self, name: str, **kwargs: Any) -> _RecordingCollection:
        return _RecordingCollection(self._db.get_collection(name, **kwargs), self._ctx,
                                    self._log)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._db, name)
        if isinstance(attr, Collection):
            return _RecordingCollection(attr, self._ctx, self._log)
        return attr


class _RecordingCollection:
    def __init__(self, collection: Collection, ctx: Context, log: list[str] | None) -> None:
        self._collection = collection
        self._ctx = ctx
        self._log = log

    def __getattr__(self, name: str) -> Any:
        if name in _READ_METHODS:
            self._ctx.note_read(self._collection.name)
        log = self._log
        if log is not None and name in _WRITE_METHODS:
            def skipped(*args: Any, **kwargs: Any) -> SimpleNamespace:
                brief = ", ".join(repr(a) for a in args)
                log.append(f"{self._collection.name}.{name}({brief})")
                first = args[0] if args else None
                inserted = first.get("_id") if isinstance(first, dict) else None
                return SimpleNamespace(acknowledged=False, inserted_id=inserted,
                                       matched_count=0, modified_count=0, deleted_count=0,
                                       upserted_id=None)
            return skipped
        return getattr(self._collection, name)
