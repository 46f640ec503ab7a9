"""Pattern: adding a required field — every user gets a ``role``.

Deploy 1 (before the migration): the application accepts users with and without ``role``
(``role`` optional in its schema) and writes ``role`` on every user it creates or edits.
Migration: ``role`` missing or None becomes ``"user"``; ``"admin"`` and ``"user"`` stay.
Deploy 2 (after ``verify`` passes / ``cutover``): the application may rely on ``role`` being
present (make it required).
"""

from cdc_migrator import migration


@migration(collection="users", contract_schema="users.contract.json")
def add_default_role(doc, ctx):
    if doc.get("role") is None:
        return {"role": "user"}
    return None
