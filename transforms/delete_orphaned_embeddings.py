"""Pattern: cleaning up orphaned documents — an embedding no chunk points at is deleted.

An embedding is an orphan when no ``chunks`` document has ``embeddingId`` equal to its
``_id``. The application creates an embedding *before* the chunk that points at it, so a
brand-new embedding looks orphaned for a moment; with the always-on consumer the transform runs
right after that insert. Embeddings younger than ``GRACE`` (by ``createdAt``, else by their
ObjectId's time) are therefore left alone; a later ``verify``/``apply`` picks them up if they are
still orphaned then.

The transform reads ``chunks``, so it declares it: ``depends_on={"chunks": "embeddingId"}``.
A chunk inserted, re-pointed or deleted while the migration runs makes the embeddings it
names, before and after the change, due again: an embedding whose last chunk goes during the
window is looked at again and deleted (see "Migrations that read other collections" in
docs/writing-migrations.md).

Deploy 1: the application never attaches a chunk to an embedding older than ``GRACE`` that
has no chunk (such an embedding may be deleted by then).
Migration: DELETE each orphaned embedding older than ``GRACE``. The look-up uses an index on
``chunks.embeddingId``, created once per process when missing.
Deploy 2: nothing to change in the schema; code that tolerated dangling embeddings can go.
"""

import datetime as dt

from bson import ObjectId

from cdc_migrator import DELETE, migration

GRACE = dt.timedelta(minutes=15)

_indexed: set[tuple[str, bool]] = set()


def _ensure_embedding_index(ctx) -> None:
    key = (ctx.db.name, bool(ctx.dry_run))
    if key not in _indexed:
        ctx.db["chunks"].create_index("embeddingId")
        _indexed.add(key)


def _created_at(doc) -> dt.datetime | None:
    created = doc.get("createdAt")
    if isinstance(created, dt.datetime):
        return created if created.tzinfo else created.replace(tzinfo=dt.UTC)
    if isinstance(doc["_id"], ObjectId):
        return doc["_id"].generation_time
    return None


@migration(collection="embeddings", depends_on={"chunks": "embeddingId"})
def delete_orphaned_embeddings(doc, ctx):
    created = _created_at(doc)
    if created is not None and dt.datetime.now(dt.UTC) - created < GRACE:
        return None
    _ensure_embedding_index(ctx)
    if ctx.db["chunks"].find_one({"embeddingId": doc["_id"]}, {"_id": 1}) is None:
        return DELETE
    return None
