"""What ``accept`` checks before it takes a migration's edited code (the run itself is wired in
:func:`cdc_migrator.pipeline.accept_code`).

Only a migration that runs (or ran and was not cut over) can take new code: a cut-over
migration's code is the code its cutover proved, and a cancelled, failed or reverted one starts
again with ``reset``.
"""

from __future__ import annotations

from ..core.fingerprint import short
from ..core.state import MigrationState, Phase
from ..errors import Refused
from ..migration import Migration

_OVER = {Phase.CUT_OVER: "was cut over", Phase.REVERTING: "is being reverted",
         Phase.REVERTED: "was reverted"}


def check_acceptable(migration: Migration, state: MigrationState | None) -> None:
    """Refuse (one line, nothing changed) an ``accept`` that cannot be done."""
    name = migration.name
    if state is None:
        raise Refused(f"cannot accept {name}: it has not started, so no code is in force; "
                      "run it")
    if state.phase in _OVER:
        raise Refused(f"cannot accept {name}: it {_OVER[state.phase]} with the code of "
                      f"fingerprint {short(state.code.fingerprint)}, which its cutover proved; "
                      f"put the change in a new migration (`cdc-migrator init`), or `reset "
                      f"{name}` to migrate again with this code; nothing changed")
    if state.cancelled or state.failed:
        why = "was cancelled" if state.cancelled else f"failed ({state.failure_reason})"
        raise Refused(f"cannot accept {name}: it {why}; `cdc-migrator reset {name}` and run "
                      "it again; nothing changed")
