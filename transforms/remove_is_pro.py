"""Pattern: deleting a field — ``isPro`` is dropped from archived teams.

Runs on ``legacy_teams`` (teams archived before plans existed, kept read-only for reports),
where ``isPro`` carries nothing anyone still needs. On the live ``teams`` collection the flag
is *converted* rather than dropped: see ``convert_is_pro_to_plan``, which removes ``isPro`` in
the same patch that writes ``plan``. Running a plain removal on ``teams`` before that conversion
would lose the information.

Deploy 1: the application stops reading ``isPro`` and stops writing it (optional in its schema).
Migration: remove ``isPro`` (UNSET) wherever it is present, whatever its value (None too).
Deploy 2: remove ``isPro`` from the schema entirely.
"""

from cdc_migrator import UNSET, migration


@migration(collection="legacy_teams")
def remove_is_pro(doc, ctx):
    if "isPro" in doc:
        return {"isPro": UNSET}
    return None
