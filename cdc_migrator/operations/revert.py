"""What ``revert`` checks and changes before its reverse run (the run itself is wired in
:func:`cdc_migrator.pipeline.revert_pipeline`).

A revert is allowed only after cutover (or to finish one that was interrupted), and only for a
migration that declares its inverse. Cutover may have installed the contract schema as the
collection's validator, which would refuse every old-shape document the inverse writes back:
the expand schema, under which both shapes are valid, is put back first (no validator at all
when the migration names no expand schema).
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import OperationFailure

from ..base.messages import message_of
from ..base.settings import Settings
from ..core.state import MigrationState, Phase
from ..errors import Refused
from ..migration import Migration
from .cutover import NO_VALIDATORS_CODES, load_schema


def check_revertible(migration: Migration, state: MigrationState | None,
                     reverse_name_taken: bool) -> None:
    """Refuse (one line, nothing changed) a revert that cannot be done."""
    name = migration.name
    if migration.inverse is None:
        raise Refused(f"cannot revert {name}: it declares no inverse (add @{name}.down beside "
                      "it); nothing changed")
    if reverse_name_taken:
        raise Refused(f"cannot revert {name}: another migration is named {name}-revert, the "
                      "name of its reverse run; rename it; nothing changed")
    if state is None or state.phase not in (Phase.CUT_OVER, Phase.REVERTING, Phase.REVERTED):
        phase = "it has not started" if state is None else \
            f"it is {state.phase.label if state.phase else 'new'}"
        raise Refused(f"cannot revert {name}: it was never cut over ({phase}); nothing "
                      "changed")


def put_back_expand_schema(settings: Settings, migration: Migration, installed: str | None,
                           *, doing: str = "revert") -> str | None:
    """Replace the validator a cutover installed (``installed``: the schema it was, the
    contract for ``revert``, the old shape's for ``reset`` after a revert) by the expand
    schema, or none; a note of what was done, None when no validator was installed.
    ``doing`` names the command, for its refusal."""
    if installed is None:
        return None
    if migration.expand_schema:
        validator = {"$jsonSchema": load_schema(settings, migration.expand_schema)}
        what = f"expand schema {migration.expand_schema} put back as the validator"
    else:
        validator = {}
        what = f"validator {installed} removed (the migration names no expand schema)"
    try:
        settings.db.command("collMod", migration.collection, validator=validator,
                            validationLevel="strict" if validator else "off")
    except OperationFailure as exc:
        if exc.code in NO_VALIDATORS_CODES:
            return f"the server has no validators: no validator ({installed}) to take back"
        raise Refused(f"cannot {doing} {migration.name}: the server refused to put back the "
                      f"expand schema (collMod {exc.code}: {message_of(exc, 120)}); "
                      "nothing else changed") from None
    return what


def old_shape_note(old_shape: dict[str, Any] | None) -> str:
    """What enforces the old shape after a revert, in a sentence: the validator its reverse's
    cutover installed, or nothing (no ``old_schema``, or a server without validators)."""
    schema, enforced = (old_shape or {}).get("schema"), (old_shape or {}).get("enforced")
    if schema and enforced:
        return (f"the server refuses writes in the new shape: the old shape's schema {schema} "
                "is the validator")
    if schema and enforced is None:  # cut over by an earlier, interrupted revert
        return (f"the old shape's schema {schema} was applied by an earlier cutover of the "
                "revert; whether the server enforces it was not recorded")
    if schema:
        return (f"nothing enforces the old shape: {schema} was checked on every document, but "
                "the server has no validators, so writes in the new shape are not refused")
    return ("nothing enforces the old shape: the migration names no old_schema, so writes in "
            "the new shape are not refused (deploy old-shape writes first)")
