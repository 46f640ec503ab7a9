"""What ``revert`` checks and changes before its reverse run (the run itself is wired in
:func:`cdc_migrator.pipeline.revert_pipeline`).

A revert is allowed only after cutover (or to finish one that was interrupted), and only for a
migration that declares its inverse. Cutover may have installed the contract schema as the
collection's validator, which would refuse every old-shape document the inverse writes back:
the expand schema, under which both shapes are valid, is put back first (no validator at all
when the migration names no expand schema).
"""

from __future__ import annotations

from pymongo.errors import OperationFailure

from ..base.retry import message_of
from ..base.settings import Settings
from ..base.state import MigrationState, Phase
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


def put_back_expand_schema(settings: Settings, migration: Migration) -> str | None:
    """Replace the contract validator cutover installed by the expand schema (or none); a note
    of what was done, None when cutover installed no validator (no contract schema)."""
    if migration.contract_schema is None:
        return None
    if migration.expand_schema:
        validator = {"$jsonSchema": load_schema(settings, migration.expand_schema)}
        what = f"expand schema {migration.expand_schema} put back as the validator"
    else:
        validator = {}
        what = "contract validator removed (the migration names no expand schema)"
    try:
        settings.db.command("collMod", migration.collection, validator=validator,
                            validationLevel="strict" if validator else "off")
    except OperationFailure as exc:
        if exc.code in NO_VALIDATORS_CODES:
            return "the server has no validators: no contract validator to take back"
        raise Refused(f"cannot revert {migration.name}: the server refused to put back the "
                      f"expand schema (collMod {exc.code}: {message_of(exc)[:120]}); "
                      "nothing else changed") from None
    return what
