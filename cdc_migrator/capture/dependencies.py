"""Changes to the collections a migration depends on become events for the documents they affect.

A migration declares the other collections its transform reads (``depends_on``). The tailer
follows them in its own change stream, from the same armed point and the same resume token as
the migrated collection, and hands each of their changes to :class:`DependencyFollower`, which
names the migrated documents the change affects. Each becomes a dependency event on the
migration's topic, keyed by that document's ``_id``: ordering, idempotency and the fence then
work as for the document's own events, and the consumer reads the document as it is.

A reference (``{"chunks": "embeddingId"}``) affects the documents the changed document names
*after* the change (its image, or the updated value of the field) and *before* it (the value a
delete or an overwrite took away). The value before comes from the change stream's pre-image
(``fullDocumentBeforeChange``) when the collection has pre-images enabled
(``changeStreamPreAndPostImages``) and the event carries one; otherwise from the *reference map*
kept here, in the migration's database: for each document of the other collection, the ids its
field named as of the last event the tailer forwarded. Pre-images expire (with the oplog, or
``expireAfterSeconds``) and can be turned off, so the map is kept for every reference, pre-images
or not: a missing pre-image falls back to it. The map is seeded by one scan of the other
collection when capture is armed (before any backfill reads), and saved only after the broker
acknowledged the events it reflects, so a tailer that crashes replays them with the values from
before.

A function (``{"users": posts_of}``) gets the changed document (after the change; for a delete,
its pre-image, or ``{"_id": ...}`` alone where there is none) and returns the affected ids.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo import DeleteOne, UpdateOne
from pymongo.database import Database

from ..base.codec import CODEC_OPTIONS
from ..base.identity import id_key
from ..base.naming import REFERENCES_COLLECTION
from ..core.context import make_context
from ..core.events import key_bytes
from ..errors import CaptureStopped
from ..migration import Dependency, Migration

log = logging.getLogger("cdc_migrator.dependencies")

_CHANGES = ("insert", "update", "replace", "delete")
_UNCHANGED = object()  # an update that did not touch the reference field
SEED_BATCH = 1000


def pre_images_enabled(db: Database, collection: str) -> bool:
    """Whether ``collection`` keeps change-stream pre-images (``changeStreamPreAndPostImages``
    set by ``create`` or ``collMod``)."""
    for info in db.list_collections():
        if info.get("name") == collection:
            options = info.get("options") or {}
            return bool((options.get("changeStreamPreAndPostImages") or {}).get("enabled"))
    return False


def _entry_id(migration: str, collection: str, doc_id: Any) -> dict[str, Any]:
    return {"m": migration, "c": collection, "d": doc_id}


def _seeded_id(migration: str, collection: str) -> dict[str, Any]:
    return {"m": migration, "c": collection, "seeded": True}


def references(value: Any) -> list[Any]:
    """The ids a reference field's value names: the value, or each element of an array;
    none for null or a missing field."""
    if value is None:
        return []
    if isinstance(value, list):
        return [v for v in value if v is not None and not isinstance(v, list)]
    return [value]


def _map_collections(migration: Migration) -> list[Dependency]:
    """The reference dependencies, which keep the reference map (with pre-images too: one
    may be missing)."""
    return [d for d in migration.depends_on.values() if d.field is not None]


def seed(db: Database, migration: Migration) -> int:
    """Fill the reference map from the dependency collections as they are now (once per
    migration and collection; an entry the tailer wrote already is kept). Called when capture
    is armed, before the backfill may read: a document's later changes then find the value
    they overwrite. Returns the entries written."""
    store = db[REFERENCES_COLLECTION]
    written = 0
    for dependency in _map_collections(migration):
        marker = _seeded_id(migration.name, dependency.collection)
        if store.find_one({"_id": marker}, {"_id": 1}) is not None:
            continue
        field = dependency.field
        assert field is not None
        # Only the _id and the field are read. A document changed while this reads has an
        # event after the armed point, which brings its entry up to date.
        cursor = db[dependency.collection].find({}, {field: 1}, batch_size=SEED_BATCH)
        ops: list[UpdateOne] = []
        for d in cursor:
            ops.append(UpdateOne(
                {"_id": _entry_id(migration.name, dependency.collection, d["_id"])},
                {"$setOnInsert": {"refs": references(d.get(field))}}, upsert=True))
            if len(ops) >= SEED_BATCH:
                store.bulk_write(ops, ordered=False)
                written, ops = written + len(ops), []
        if ops:
            store.bulk_write(ops, ordered=False)
            written += len(ops)
        store.update_one({"_id": marker}, {"$set": {"field": field}}, upsert=True)
        log.info("reference map of %s seeded from %s.%s", migration.name,
                 dependency.collection, field)
    return written


def forget(db: Database, migration: str) -> None:
    """Drop a migration's reference map (it is seeded again when capture is armed again)."""
    db[REFERENCES_COLLECTION].delete_many({"_id.m": migration})


class DependencyFollower:
    """Names the migrated documents a change of a dependency collection affects."""

    def __init__(self, db: Database, migration: Migration) -> None:
        self.migration = migration
        self.dependencies = migration.depends_on
        self.store = db[REFERENCES_COLLECTION]
        self.pre_images = {name: pre_images_enabled(db, name) for name in self.dependencies}
        # For the function form: the real database, reads recorded (not warned about).
        self.ctx = make_context(db, migration.name)
        # Reference map updates of events not yet acknowledged by the broker, by entry:
        # the ids named now, or None for a deleted document.
        self._pending: dict[tuple[str, Hashable], tuple[Any, list[Any] | None]] = {}
        self.missing_pre_images = 0

    @property
    def collections(self) -> list[str]:
        return list(self.dependencies)

    @property
    def wants_pre_images(self) -> bool:
        return any(self.pre_images.values())

    def affected(self, change: Any) -> list[Any]:
        """The ``_id`` values of the migrated documents ``change`` affects (each once, as
        MongoDB tells ids apart). Raises CaptureStopped when a dependency function fails."""
        if isinstance(change, RawBSONDocument):
            change = bson.decode(change.raw, CODEC_OPTIONS)
        op = change.get("operationType")
        collection = (change.get("ns") or {}).get("coll")
        dependency = self.dependencies.get(collection)  # type: ignore[arg-type]
        if dependency is None or op not in _CHANGES:
            return []
        doc_id = (change.get("documentKey") or {}).get("_id")
        after = None if op == "delete" else change.get("fullDocument")
        before = change.get("fullDocumentBeforeChange")
        if before is None and op != "insert" and self.pre_images.get(dependency.collection):
            # Enabled, yet none: expired, turned off since, or written before they were on.
            self.missing_pre_images += 1
            log.warning("no pre-image for the %s of %s %r: %s", op, dependency.collection,
                        doc_id, "the reference map stands in" if dependency.field is not None
                        else "the documents it named before the change are not known")
        if dependency.field is not None:
            ids = self._referenced(dependency, op, doc_id, after, before, change)
        else:
            ids = self._called(dependency, doc_id, after, before)
        unique: dict[Any, Any] = {}
        for i in ids:
            unique.setdefault(id_key(i), i)
        return list(unique.values())

    def _referenced(self, dependency: Dependency, op: str, doc_id: Any,
                    after: Mapping[str, Any] | None, before: Mapping[str, Any] | None,
                    change: Mapping[str, Any]) -> list[Any]:
        field = dependency.field
        assert field is not None
        now: Any
        if op in ("insert", "replace"):
            now = references((after or {}).get(field))
        elif op == "delete":
            now = []
        else:
            # The update's own description holds the value as of this event; the looked-up
            # image may be later (or gone).
            description = change.get("updateDescription") or {}
            updated = description.get("updatedFields") or {}
            if field in updated:
                now = references(updated[field])
            elif field in (description.get("removedFields") or []):
                now = []
            else:
                now = _UNCHANGED
        if before is not None:
            was = references(before.get(field))
        else:  # no pre-images, or one missing (expired, turned off)
            was = self._mapped(dependency.collection, doc_id)
        later = references(after.get(field)) if after is not None else []
        if now is _UNCHANGED:
            # Not named in the description: untouched, or, on MongoDB, elements appended to an
            # array of references (reported as paths inside it, which the stream leaves out).
            # The looked-up image holds those; keeping both in the map errs on the side of an
            # extra event, never a missed one.
            now = list({id_key(i): i for i in [*was, *later]}.values())
        ids = list(was) + list(now) + later  # the image is later than the event: maybe more
        if op != "insert" or now:
            self._pending[(dependency.collection, id_key(doc_id))] = (
                doc_id, None if op == "delete" else list(now))
        return ids

    def _mapped(self, collection: str, doc_id: Any) -> list[Any]:
        pending = self._pending.get((collection, id_key(doc_id)))
        if pending is not None:
            return list(pending[1] or [])
        entry = self.store.find_one({"_id": _entry_id(self.migration.name, collection, doc_id)})
        return list((entry or {}).get("refs") or [])

    def _called(self, dependency: Dependency, doc_id: Any, after: Mapping[str, Any] | None,
                before: Mapping[str, Any] | None) -> list[Any]:
        images = [after if after is not None else (before or {"_id": doc_id})]
        if before is not None and after is not None:
            images.append(before)
        ids: list[Any] = []
        fn = dependency.affected
        assert fn is not None
        for image in images:
            try:
                found = fn(image, self.ctx)
                named = [] if found is None else list(_iterable(found))
                for i in named:
                    key_bytes(i)  # raises for a value that cannot be an _id
                ids += named
            except Exception as exc:  # user code: capture stops at this event, nothing is lost
                raise CaptureStopped(
                    f"depends_on[{dependency.collection!r}] of {self.migration.name}: "
                    f"{getattr(fn, '__name__', 'the function')}() raised on "
                    f"{dependency.collection} document {doc_id!r}: {type(exc).__name__}: "
                    f"{exc}; fix it and start the tailer again: it resumes before this "
                    "change") from None
        return ids

    def save(self) -> None:
        """Write the reference map updates of the events the broker acknowledged."""
        if not self._pending:
            return
        ops: list[UpdateOne | DeleteOne] = []
        for (collection, _), (doc_id, refs) in self._pending.items():
            entry = {"_id": _entry_id(self.migration.name, collection, doc_id)}
            ops.append(DeleteOne(entry) if refs is None
                       else UpdateOne(entry, {"$set": {"refs": refs}}, upsert=True))
        self.store.bulk_write(ops, ordered=False)
        self._pending.clear()

    def forget_pending(self) -> None:
        """The events in hand were not acknowledged: they are read again from the saved
        position, against the map as it was saved."""
        self._pending.clear()


def _iterable(found: Any) -> Iterable[Any]:
    if isinstance(found, (str, bytes, Mapping)) or not isinstance(found, Iterable):
        raise TypeError(f"it must return an iterable of _id values, not {type(found).__name__}")
    return found
