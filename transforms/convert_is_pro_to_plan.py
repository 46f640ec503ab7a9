"""Pattern: changing a field's type — boolean ``isPro`` becomes the enum ``plan``.

A new field is created rather than ``isPro`` changed in place, and the old field is removed in
the same patch. Removing ``isPro`` during the window fits the **dual read** sequence:

Deploy 1: the application reads both formats, preferring the new one
(``plan`` if present, else ``"pro" if isPro else "basic"``), and writes only ``plan``.
Migration: ``plan`` missing -> ``plan = "pro" if isPro else "basic"`` and ``isPro`` removed, in
one guarded patch. A team that already has ``plan`` (written by Deploy 1) keeps it, and a stale
``isPro`` left beside it is removed: ``plan`` is the truth once present.
Deploy 2: the application reads and writes only ``plan``; ``isPro`` leaves the schema and ``plan``
becomes required.

With **dual write** instead (Deploy 1 writes ``isPro`` and ``plan`` but still reads ``isPro``), the
migration must not remove ``isPro`` while that code runs: backfill ``plan`` only, switch reads to
``plan`` in Deploy 2, and remove ``isPro`` afterwards with a migration like ``remove_is_pro``.
"""

from cdc_migrator import UNSET, migration


@migration(collection="teams")
def convert_is_pro_to_plan(doc, ctx):
    if "plan" not in doc:
        return {"plan": "pro" if doc.get("isPro") else "basic", "isPro": UNSET}
    if "isPro" in doc:
        return {"isPro": UNSET}
    return None
