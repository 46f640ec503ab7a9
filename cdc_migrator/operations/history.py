"""What ``history`` shows: every migration ever armed in the database, with what became of it.

The entries are the history collection's (:mod:`cdc_migrator.core.history`), grouped by
migration in the order they first appear, with the phase the state holds now. A migration
whose state was written before the history was kept shows its phase alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.fingerprint import short
from ..core.history import Entry, Event
from ..core.state import Phase, StateStore


@dataclass
class MigrationHistory:
    """One migration's entries, oldest first, and its phase now (None: it has no state, e.g.
    after ``reset``)."""

    migration: str
    collection: str | None
    entries: list[Entry] = field(default_factory=list)
    phase: str | None = None

    @property
    def fingerprints(self) -> list[str]:
        """Every code it ran with, in the order they were in force."""
        seen: list[str] = []
        for entry in self.entries:
            if entry.fingerprint and entry.fingerprint not in seen:
                seen.append(entry.fingerprint)
        return seen

    def as_dict(self) -> dict[str, Any]:
        return {"migration": self.migration, "collection": self.collection,
                "phase": self.phase, "fingerprints": self.fingerprints,
                "entries": [e.as_dict() for e in self.entries]}


def histories(store: StateStore, collection: str | None = None) -> list[MigrationHistory]:
    """Every migration of ``collection`` (or all) the history or the state knows."""
    found: dict[str, MigrationHistory] = {}
    for entry in store.history.entries(collection):
        found.setdefault(entry.migration, MigrationHistory(entry.migration, entry.collection)
                         ).entries.append(entry)
    for state in store.all():
        if collection is not None and state.collection != collection:
            continue
        item = found.setdefault(state.name, MigrationHistory(state.name, state.collection))
        item.phase = state.phase.label if state.phase else "new"
    return list(found.values())


def render(item: MigrationHistory) -> str:
    """Human-readable block for one migration."""
    now = item.phase or "no state (reset)"
    codes = ", ".join(short(f) for f in item.fingerprints) or "none recorded"
    lines = [f"{item.migration} ({item.collection}): {now}; code {codes}"]
    if not item.entries:
        lines.append("  no history: armed by a version of cdc-migrator that kept none")
    for entry in item.entries:
        lines.append(f"  {entry.at:%Y-%m-%d %H:%M:%S}Z  {entry.event.label:<11} "
                     f"{short(entry.fingerprint):<12}  {entry.host}  cdc-migrator "
                     f"{entry.version}{_details(entry)}")
    return "\n".join(lines)


def _details(entry: Entry) -> str:
    details = entry.details
    if entry.event is Event.CUT_OVER and details.get("counts"):
        counts = details["counts"]
        return "  counts: " + ", ".join(f"{k} {counts.get(k, 0):,}" for k in (
            "produced", "consumed", "updated", "deleted", "unchanged", "failed"))
    if entry.event is Event.ACCEPTED:
        return f"  (replaced {short(details.get('previous'))})"
    if entry.event is Event.BACKFILLED and details.get("scanned") is not None:
        return f"  ({details['scanned']:,} documents scanned)"
    was = Phase.parse(details.get("phase")) if entry.event is Event.RESET else None
    if was is not None:
        return f"  (it was {was.label})"
    if entry.event is Event.REARMED and details.get("reason"):
        return f"  ({details['reason']})"
    return ""
