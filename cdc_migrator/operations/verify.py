"""Verify: which documents still need migrating (the transform is not a no-op on them), and
whether the code verified is the code in force."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..base.scanner import scan
from ..base.settings import Settings
from ..core.context import make_context
from ..core.fingerprint import fingerprint, short
from ..core.patch import decide
from ..core.state import Phase
from ..migration import Migration


@dataclass
class VerifyReport:
    """Result of :func:`verify`; ``ok`` only when nothing remains and nothing fails."""

    migration: str
    collection: str
    checked: int = 0
    remaining: int = 0
    failing: int = 0
    sample: list[Any] = field(default_factory=list)
    failing_sample: list[dict[str, Any]] = field(default_factory=list)
    schema_violations: int = 0
    schema_sample: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str | None = None  # of the code verified
    in_force: str | None = None  # the migration's code in force (None: not recorded)
    cut_over: bool = False

    @property
    def code_differs(self) -> bool:
        """The code verified is not the code in force: what was verified is not what ran
        (or, cut over, not what cutover proved)."""
        return self.in_force is not None and self.fingerprint != self.in_force

    @property
    def ok(self) -> bool:
        return self.remaining == 0 and self.failing == 0 and self.schema_violations == 0 \
            and not self.code_differs

    def code_note(self) -> str | None:
        """What ``verify`` says of its code, when it is not the code in force."""
        if not self.code_differs:
            return None
        here, there = short(self.fingerprint), short(self.in_force)
        if self.cut_over:
            return (f"EDITED AFTER CUTOVER: {self.migration} was cut over with the code of "
                    f"fingerprint {there}; the code verified here is {here}, which nothing ran: "
                    "put the change in a new migration")
        return (f"the code verified here (fingerprint {here}) is not the code in force "
                f"({there}): `cdc-migrator accept {self.migration}` takes it, or roll it back")

    def summary(self) -> str:
        parts = []
        if self.remaining:
            parts.append(f"{self.remaining:,} documents still need migrating")
        if self.failing:
            parts.append(f"{self.failing:,} documents make the transform raise")
        if self.schema_violations:
            parts.append(f"{self.schema_violations:,} documents break the contract schema")
        text = (f"{self.migration}: " + ", ".join(parts) + f" (of {self.checked:,} checked)"
                if parts else f"{self.migration}: verified {self.checked:,} documents of "
                f"{self.collection}; none left to migrate")
        note = self.code_note()
        return text + (f"; {note}" if note else "")

def verify(
    settings: Settings,
    migration: Migration,
    *,
    sample_size: int = 10,
    batch_size: int | None = None,
    schema_check: Callable[[dict[str, Any]], str | None] | None = None,
) -> VerifyReport:
    """Stream the collection and run the transform on every document without writing; the
    report also tells whether this code is the migration's code in force.

    ``schema_check`` returns an error message for a document breaking the contract schema.
    Memory stays bounded by the batch size, whatever the collection's size.
    """
    db = settings.db
    ctx = make_context(db, migration.name, dry_run=True)
    state = settings.store.get(migration.name)
    report = VerifyReport(migration.name, migration.collection,
                          fingerprint=fingerprint(migration, settings.schemas),
                          in_force=state.code.fingerprint if state else None,
                          cut_over=state is not None and state.phase is Phase.CUT_OVER)
    for batch in scan(db[migration.collection], migration.filter,
                      batch_size=batch_size or migration.batch_size):
        for doc in batch:
            report.checked += 1
            outcome = decide(migration, doc, ctx)
            if outcome.kind == "error":
                report.failing += 1
                if len(report.failing_sample) < sample_size:
                    report.failing_sample.append({"id": outcome.id, "error": outcome.error})
            elif outcome.kind != "noop":
                report.remaining += 1
                if len(report.sample) < sample_size:
                    report.sample.append(outcome.id)
            if schema_check is not None:
                problem = schema_check(doc)
                if problem:
                    report.schema_violations += 1
                    if len(report.schema_sample) < sample_size:
                        report.schema_sample.append({"id": doc["_id"], "error": problem})
        ctx.side_effects.clear()
    return report
