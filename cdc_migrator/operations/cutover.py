"""Cutover: prove everything was applied, verify, apply the contract schema, mark complete.

Lag "zero" is proven by a fence: a document written to the fence collection travels the same
change stream as the application's writes; the tailer forwards it into every partition, and
each consumer acknowledges it once everything before it in its partition is applied and
committed. With the fence passed and no backlog in the group, ``verify`` runs; only if it
finds nothing left is the contract schema applied and the migration recorded complete.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pymongo.errors import OperationFailure

from ..base import topics
from ..base.messages import message_of
from ..base.naming import FENCE_COLLECTION
from ..base.settings import Settings
from ..core.fingerprint import fingerprint, short
from ..core.state import MigrationState, Phase, StateStore, now
from ..errors import UsageError
from ..migration import Migration
from .hooks import BEFORE_CUTOVER, Hooks
from .schema import dialect_problems, validator_for
from .verify import VerifyReport, verify


@dataclass
class CutoverReport:
    migration: str
    ok: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verify: VerifyReport | None = None
    dry_run: bool = False
    #: Whether the server now enforces the contract schema: True, its validator installed;
    #: False, the server has no validators (verify checked every document); None, no schema.
    enforced: bool | None = None

    def summary(self) -> str:
        if self.ok and self.dry_run:
            return f"{self.migration}: ready; cutover would " + "; ".join(self.notes)
        if self.ok:
            return f"{self.migration}: cut over. " + " ".join(self.notes)
        return f"{self.migration}: cutover refused: " + "; ".join(self.reasons)


#: The collMod error that means "this server has no such command" (the local test server has no
#: validators). Any other error is the server refusing the validator: privileges (13), a schema
#: it rejects (9, 14, 2), a missing collection (26).
NO_VALIDATORS_CODES = {59}


def load_schema(settings: Settings, name: str) -> dict[str, Any]:
    """A JSON schema file under the schemas/ directory beside the transforms, checked against
    MongoDB's ``$jsonSchema`` dialect (a schema MongoDB would reject is a usage error)."""
    path = Path(name)
    if not path.is_absolute():
        path = settings.schemas / name
    try:
        schema = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"contract schema {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"contract schema {path} is not valid JSON: {exc}") from None
    problems = dialect_problems(schema)
    if problems:
        raise UsageError(f"contract schema {path} is not one MongoDB's $jsonSchema accepts: "
                         + "; ".join(problems))
    return schema


class CatchUp(Protocol):
    """What a catch-up started, and how it ended (see :func:`cdc_migrator.pipeline.catch_up`)."""

    errors: list[str]

    def note(self) -> str | None: ...


#: Runs, while in its block, the pieces of the pipeline that do not run (so that the fence
#: travels the whole path); given by the caller, which knows the pieces.
CatchUpRunner = Callable[[Settings, Migration, MigrationState], AbstractContextManager[CatchUp]]


def cutover(settings: Settings, migration: Migration, *, timeout: float = 60.0,
            dry_run: bool = False, allow_failed: bool = False,
            catch_up: CatchUpRunner | None = None, announce: bool = True) -> CutoverReport:
    """Fence, wait for zero lag, verify, ask the before_cutover hooks, apply the contract
    schema, mark complete, and tell the hooks.

    ``catch_up`` runs a tailer and a consumer where none runs (after ``run`` finished);
    without it cutover only waits for the pieces that run. A dry run writes nothing: no fence,
    no validator, no state; it reports the lag the group has now. Without ``announce`` the
    hooks hear of the cutover from the caller's watch (``run``: in order, after the phases
    before it).
    """
    # Checked first: a schema MongoDB would reject, or a hook setting, stops cutover before it
    # writes anything.
    contract = load_schema(settings, migration.contract_schema) if migration.contract_schema \
        else None
    hooks = Hooks(settings)
    store = settings.store
    state = store.get(migration.name)
    report = CutoverReport(migration.name, ok=False, dry_run=dry_run)
    if state is None:
        report.reasons.append("the migration has not started (no state): run it first")
        return report
    if _settled(state, migration, report):
        return report
    refusal = code_refusal(settings, migration, state)
    if refusal:  # checked before the fence: nothing is written
        report.reasons.append(refusal)
        return report
    if state.armed:
        _drain(settings, migration, state, report, timeout=timeout, catch_up=catch_up)
    elif not (state.apply and state.apply.done):
        report.reasons.append("neither `apply` finished nor the pipeline (tail/backfill) ran")
    if state.dlq_pending and not allow_failed:
        report.reasons.append(f"{state.dlq_pending} failed documents unresolved in the "
                              "dead-letter topic (`dlq retry`, or --allow-failed)")
    verified = _verify(settings, migration, contract, report, allow_failed=allow_failed)
    if report.reasons or not _hooks_agree(hooks, store, migration, report):
        return report
    if contract is not None:
        applied, text = _apply_contract(settings, migration, contract, dry_run)
        if applied is None:
            report.reasons.append(text)
            return report
        report.enforced = applied
        report.notes.append(text)
    report.ok = True
    if dry_run:
        report.notes.append(f"write a fence and wait for it, then mark {migration.name} "
                            f"complete ({verified.checked:,} documents verified)")
        return report
    store.mark_cut_over(migration.name)
    report.notes.append(f"{verified.checked:,} documents verified; recorded complete.")
    if announce:
        hooks.announce(store, store.get(migration.name) or state, "cut_over")
    return report


def _settled(state: MigrationState, migration: Migration, report: CutoverReport) -> bool:
    """Whether the migration's phase already decides cutover: cut over (ok), cancelled or
    failed (refused, with the reason in ``report``)."""
    if state.phase is Phase.CUT_OVER:
        report.ok = True
        report.notes.append(f"already cut over at {state.completed_at}")
    elif state.cancelled:
        report.reasons.append("the migration was cancelled")
    elif state.failed:
        report.reasons.append(f"the migration failed: {state.failure_reason}; `cdc-migrator "
                              f"reset {migration.name}` and run it again")
    else:
        return False
    return True


def _drain(settings: Settings, migration: Migration, state: MigrationState,
           report: CutoverReport, *, timeout: float, catch_up: CatchUpRunner | None) -> None:
    """The pipeline's part of cutover: the backfill finished, then every event applied (a
    fence passed and no lag; a dry run reads the lag as it is). What stands in the way goes
    into ``report``'s reasons."""
    backfill = state.backfill
    finished = backfill is not None and backfill.done
    if not finished:
        report.reasons.append(
            f"backfill unfinished ({backfill.scanned if backfill else 0:,} of "
            f"{(backfill.total if backfill else None) or '?'} documents scanned)")
    store = settings.store
    if report.dry_run:
        behind = _lag_now(settings, migration)
    elif catch_up is None or not finished:
        # Catching up applies events: not while the backfill is unfinished (cutover refuses
        # then anyway).
        behind = _wait_fence_and_lag(settings, migration, store, timeout)
    else:
        with catch_up(settings, migration, state) as caught:
            behind = _wait_fence_and_lag(settings, migration, store, timeout)
        report.reasons += caught.errors
        note = caught.note()
        if note:
            report.notes.append(note)
    if behind:
        report.reasons.append(behind)


def _verify(settings: Settings, migration: Migration, contract: dict[str, Any] | None,
            report: CutoverReport, *, allow_failed: bool) -> VerifyReport:
    """Verify every document (and the contract schema, when there is one); what is left goes
    into ``report``'s reasons."""
    check = validator_for(contract) if contract else None
    report.verify = v = verify(settings, migration, schema_check=check)
    if v.remaining:
        report.reasons.append(f"{v.remaining:,} documents unmigrated")
    if v.failing and not allow_failed:
        report.reasons.append(f"{v.failing:,} documents make the transform raise")
    if v.schema_violations:
        report.reasons.append(f"{v.schema_violations:,} documents break the contract schema")
    return v


def code_refusal(settings: Settings, migration: Migration,
                 state: MigrationState) -> str | None:
    """Why the code forbids a cutover now, or None: the code here is not the code in force
    (cutover would prove other code), or members hold (the events of their partitions wait)."""
    loaded = fingerprint(migration, settings.schemas)
    in_force = state.code.fingerprint
    name = migration.name
    if in_force is not None and loaded != in_force:
        return (f"the code here (fingerprint {short(loaded)}) is not the code in force "
                f"({short(in_force)}): `cdc-migrator accept {name}` takes it and backfills "
                "again, or cut over with the code in force")
    holding = state.code.holding()
    if holding:
        return (f"{', '.join(holding)} hold{'s' if len(holding) == 1 else ''}: other code "
                f"than the code in force ({short(in_force)}), and the events of its partitions "
                "wait; stop it or give it the code in force, or `accept` its code")
    return None


def _hooks_agree(hooks: Hooks, store: StateStore, migration: Migration,
                 report: CutoverReport) -> bool:
    """Whether the before_cutover hooks let the cutover go on; a refusal is one of the
    report's reasons. A dry run only says it would ask them."""
    if not hooks.wants(BEFORE_CUTOVER):
        return True
    if report.dry_run:
        report.notes.append("ask the before_cutover hook")
        return True
    state = store.get(migration.name)
    refusal = hooks.ask(state) if state is not None else None
    if refusal is not None:
        report.reasons.append(f"the before_cutover hook refused: {refusal.detail}")
    return refusal is None


def _lag_now(settings: Settings, migration: Migration) -> str | None:
    """The group's backlog as it is now (a dry run writes no fence to wait for)."""
    lag = topics.group_lag(settings, settings.topic(migration.collection),
                           settings.group(migration.name))
    return f"{lag.total:,} events behind (consumer lag now)" if lag.total else None


def _wait_fence_and_lag(settings: Settings, migration: Migration, store: StateStore,
                        timeout: float) -> str | None:
    """Write a fence and wait until every partition passed it and the group has no backlog.

    Returns None when both hold, else the reason. The fence is removed afterwards, whatever
    the outcome: its document and what the state recorded of it.
    """
    topic = settings.topic(migration.collection)
    group = settings.group(migration.name)
    partitions = topics.ensure_topic(settings, topic)
    fence_id = uuid.uuid4().hex
    fences = settings.db[FENCE_COLLECTION]
    fences.insert_one({"_id": fence_id, "migration": migration.name, "at": now()})
    deadline = time.monotonic() + timeout
    lag = None
    passed: set[int] = set()
    try:
        while True:
            state = store.get(migration.name)
            passed = state.fences.get(fence_id, set()) if state else set()
            lag = topics.group_lag(settings, topic, group)
            if len(passed) >= partitions and lag.total == 0:
                return None
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
    finally:
        fences.delete_one({"_id": fence_id})
        store.forget_fence(migration.name, fence_id)
    if lag is not None and lag.total:
        return f"{lag.total:,} events behind (consumer lag after {timeout:g}s)"
    return (f"the fence reached {len(passed)} of {partitions} partitions within {timeout:g}s "
            "(is the tailer running?)")


def _apply_contract(settings: Settings, migration: Migration, schema: dict[str, Any],
                    dry_run: bool) -> tuple[bool | None, str]:
    """Apply the contract schema with collMod: (True, a note), (False, a note) when the
    server has no validators, or (None, the refusal).

    A server without the command (no validators) is not a refusal: every document was checked
    against the schema by verify, and the note says new writes are not enforced.
    """
    name = migration.contract_schema
    if dry_run:
        return True, f"apply the contract schema {name} with collMod"
    try:
        settings.db.command("collMod", migration.collection, validator={"$jsonSchema": schema},
                            validationLevel="strict")
        return True, f"Contract schema {name} applied as a validator."
    except OperationFailure as exc:
        what = f"{exc.code}: {message_of(exc, 120)}"
        if exc.code in NO_VALIDATORS_CODES:
            return False, (f"The server has no validators ({what}): contract schema {name} "
                           "was checked by cdc-migrator on every document, but new writes are "
                           "NOT enforced by the server.")
        return None, (f"the server refused the contract schema {name} as a validator "
                       f"(collMod {what}); nothing was recorded: fix the privileges (collMod "
                       "needs the collMod action, e.g. the dbAdmin role) or the schema, then "
                       "run cutover again")
