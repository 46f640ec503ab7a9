"""The ``ctx`` a transform receives."""

from __future__ import annotations

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


@dataclass
class Context:
    """Passed to every transform call.

    ``db`` is the pymongo Database of the migrated collection, for look-ups and for writes to
    other collections. In a dry run (``dry_run`` true) writes through ``ctx.db`` are not made
    but recorded in ``side_effects``.
    """

    db: Any
    migration: str
    dry_run: bool = False
    side_effects: list[str] = field(default_factory=list)


def make_context(db: Database, migration: str, dry_run: bool = False) -> Context:
    """A context whose ``db`` is real, or, for a dry run, one that records writes instead."""
    ctx = Context(db=db, migration=migration, dry_run=dry_run)
    if dry_run:
        ctx.db = _DryRunDatabase(db, ctx.side_effects)
    return ctx


class _DryRunDatabase:
    """Reads pass through to the real database; writes are recorded and skipped."""

    def __init__(self, db: Database, log: list[str]) -> None:
        self._db = db
        self._log = log

    def __getitem__(self, name: str) -> _DryRunCollection:
        return _DryRunCollection(self._db[name], self._log)

    def get_collection(self, name: str, **kwargs: Any) -> _DryRunCollection:
        return _DryRunCollection(self._db.get_collection(name, **kwargs), self._log)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._db, name)
        if isinstance(attr, Collection):
            return _DryRunCollection(attr, self._log)
        return attr


class _DryRunCollection:
    def __init__(self, collection: Collection, log: list[str]) -> None:
        self._collection = collection
        self._log = log

    def __getattr__(self, name: str) -> Any:
        if name in _WRITE_METHODS:
            def skipped(*args: Any, **kwargs: Any) -> SimpleNamespace:
                brief = ", ".join(repr(a) for a in args)
                self._log.append(f"{self._collection.name}.{name}({brief})")
                first = args[0] if args else None
                inserted = first.get("_id") if isinstance(first, dict) else None
                return SimpleNamespace(acknowledged=False, inserted_id=inserted,
                                       matched_count=0, modified_count=0, deleted_count=0,
                                       upserted_id=None)
            return skipped
        return getattr(self._collection, name)
