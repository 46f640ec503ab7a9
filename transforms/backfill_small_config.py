"""Pattern: the small-collection shortcut — ``smallConfig.newField`` defaults to ``"default"``.

Meant for ``cdc-migrator apply backfill_small_config``: a collection of a few thousand documents
at most, scanned and patched in one process with no Kafka pipeline. ``apply`` does not see
documents written after its scan passed them, so the application must already write ``newField``
on every document it creates or edits (Deploy 1); ``verify`` then proves nothing was left behind.

Deploy 1: the application writes ``newField`` and accepts documents without it.
Migration: ``newField`` missing -> ``"default"``. A present value, None included, is kept: only
a missing field is a document to migrate.
Deploy 2: the application relies on ``newField``.
"""

from cdc_migrator import migration


@migration(collection="smallConfig")
def backfill_small_config(doc, ctx):
    if "newField" not in doc:
        return {"newField": "default"}
    return None
