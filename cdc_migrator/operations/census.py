"""Census: before any write, which kinds of document exist and what the transform does to each.

One streaming pass over the documents the migration would see (its filter), in ``_id`` order
and in batches (:func:`~cdc_migrator.base.scanner.scan`), groups them by shape
(:mod:`.shapes`) and counts each shape. The first ``sample`` documents of every shape are run
through the transform with a dry-run context (writes through ``ctx.db`` are recorded, not
made, as ``apply --dry-run`` does) and the outcome decided as the consumer would decide it:
the document would change, needs nothing, would be deleted, makes the transform raise, gets an
invalid patch, or, migrated in memory, breaks the contract schema. With an inverse declared,
each sampled document is also sent back through it (:mod:`.reversible`).

Memory is bounded: a batch of documents, and one small record per shape, for at most
``max_shapes`` shapes. Documents of further shapes are counted, not sampled, and the report
says so: census cannot vouch for them, so it does not pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..base.scanner import scan
from ..base.settings import Settings
from ..core.context import make_context
from ..core.patch import decide
from ..errors import PatchError
from ..migration import Migration
from .reversible import MAX_SHAPES, applied, reverse_of, round_trip
from .shapes import shape_id, shape_of

#: Side writes kept per shape, as examples of what the transform would write elsewhere.
SIDE_WRITES_KEPT = 3


@dataclass
class ShapeCensus:
    """One shape: how many documents have it, and what the transform did to its sample."""

    id: str
    shape: str
    count: int = 0
    example_id: Any = None  # the first document of the shape
    sampled: int = 0
    changes: int = 0
    unchanged: int = 0
    deletes: int = 0
    raises: int = 0
    invalid: int = 0
    contract: int = 0
    problem_id: Any = None  # the first sampled document with a problem
    problem: str = ""
    side_writes: list[str] = field(default_factory=list)
    reversible: bool | None = None  # None: no inverse declared
    irreversible_id: Any = None
    irreversible: str = ""

    @property
    def problems(self) -> list[str]:
        """What is wrong with this shape (empty when it is fine)."""
        found = []
        if self.raises:
            found.append("raises")
        if self.invalid:
            found.append("invalid patch")
        if self.contract:
            found.append("breaks the contract schema")
        return found

    @property
    def verdict(self) -> str:
        """In a few words: its problems, else what the transform does to it."""
        if self.problems:
            return ", ".join(self.problems)
        done = [what for n, what in ((self.changes, "would change"),
                                     (self.deletes, "would be deleted"),
                                     (self.unchanged, "needs nothing")) if n]
        return ", ".join(done) or "not sampled"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "shape": self.shape, "count": self.count,
                "example_id": self.example_id, "sampled": self.sampled,
                "verdict": self.verdict, "ok": not self.problems,
                "outcomes": {"change": self.changes, "unchanged": self.unchanged,
                             "delete": self.deletes, "raises": self.raises,
                             "invalid_patch": self.invalid, "breaks_contract": self.contract},
                "problem": {"id": self.problem_id, "error": self.problem}
                if self.problem else None,
                "side_writes": self.side_writes,
                "reversible": self.reversible,
                "irreversible": {"id": self.irreversible_id, "reason": self.irreversible}
                if self.irreversible else None}


@dataclass
class CensusReport:
    migration: str
    collection: str
    documents: int = 0
    shapes: list[ShapeCensus] = field(default_factory=list)
    untracked: int = 0  # documents of shapes beyond max_shapes: counted, not sampled
    max_shapes: int = MAX_SHAPES
    has_inverse: bool = False

    @property
    def bad(self) -> list[ShapeCensus]:
        return [s for s in self.shapes if s.problems]

    @property
    def ok(self) -> bool:
        """Every shape is fine and every document was in a tracked shape."""
        return not self.bad and not self.untracked

    def summary(self) -> str:
        head = (f"{self.migration}: {self.documents:,} documents of {self.collection} in "
                f"{len(self.shapes)} shapes")
        if self.ok:
            return head + "; every shape is fine"
        parts = []
        if self.bad:
            parts.append(f"{len(self.bad)} shapes fail: " + ", ".join(
                f"{s.id} ({s.verdict})" for s in self.bad))
        if self.untracked:
            parts.append(f"{self.untracked:,} documents are of shapes beyond the first "
                         f"{self.max_shapes} and were not sampled (raise --max-shapes)")
        return head + "; " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"migration": self.migration, "collection": self.collection, "ok": self.ok,
                "documents": self.documents, "untracked": self.untracked,
                "max_shapes": self.max_shapes, "has_inverse": self.has_inverse,
                "bad_shapes": [s.id for s in self.bad],
                "shapes": [s.as_dict() for s in self.shapes]}


def census(settings: Settings, migration: Migration, *, sample: int = 5,
           batch_size: int | None = None, max_shapes: int = MAX_SHAPES,
           schema_check: Callable[[dict[str, Any]], str | None] | None = None,
           on_batch: Callable[[int], None] | None = None) -> CensusReport:
    """Group the migration's documents by shape, count them, and try the transform on up to
    ``sample`` documents of each shape without writing. ``schema_check`` gives the contract
    schema's first complaint about a migrated document. ``on_batch`` is called with the count
    of documents seen so far after each batch (progress)."""
    ctx = make_context(settings.db, migration.name, dry_run=True)
    reverse = reverse_of(migration) if migration.inverse is not None else None
    report = CensusReport(migration.name, migration.collection, max_shapes=max_shapes,
                          has_inverse=reverse is not None)
    by_shape: dict[str, ShapeCensus] = {}
    for batch in scan(settings.db[migration.collection], migration.filter,
                      batch_size=batch_size or migration.batch_size):
        for doc in batch:
            report.documents += 1
            shape = shape_of(doc)
            entry = by_shape.get(shape)
            if entry is None:
                if len(by_shape) >= max_shapes:
                    report.untracked += 1
                    continue
                entry = by_shape[shape] = ShapeCensus(shape_id(shape), shape,
                                                      example_id=doc["_id"])
                report.shapes.append(entry)
            entry.count += 1
            if entry.sampled < sample:
                _try(entry, migration, reverse, doc, ctx, schema_check)
        ctx.side_effects.clear()
        if on_batch is not None:
            on_batch(report.documents)
    report.shapes.sort(key=lambda s: -s.count)
    return report


def _try(entry: ShapeCensus, migration: Migration, reverse: Migration | None,
         doc: dict[str, Any], ctx: Any,
         schema_check: Callable[[dict[str, Any]], str | None] | None) -> None:
    """Run the transform (and the inverse) on one sampled document of ``entry``'s shape."""
    entry.sampled += 1
    before = len(ctx.side_effects)
    try:
        outcome = decide(migration, doc, ctx)
    except PatchError as exc:
        entry.invalid += 1
        _note_problem(entry, doc["_id"], str(exc))
        return
    finally:
        for write in ctx.side_effects[before:]:
            if len(entry.side_writes) < SIDE_WRITES_KEPT:
                entry.side_writes.append(write)
    if outcome.kind == "error":
        entry.raises += 1
        _note_problem(entry, doc["_id"], outcome.error)
        return
    if outcome.kind == "delete":
        entry.deletes += 1
    elif outcome.kind == "noop":
        entry.unchanged += 1
    else:
        entry.changes += 1
    migrated = applied(doc, outcome)
    if migrated is not None and schema_check is not None:
        complaint = schema_check(migrated)
        if complaint:
            entry.contract += 1
            _note_problem(entry, doc["_id"], f"migrated, it breaks the contract: {complaint}")
    if reverse is not None:
        reason = round_trip(migration, reverse, doc, ctx)
        if entry.reversible is None:
            entry.reversible = True
        if reason is not None:
            entry.reversible = False
            if entry.irreversible_id is None:
                entry.irreversible_id, entry.irreversible = doc["_id"], reason


def _note_problem(entry: ShapeCensus, doc_id: Any, error: str) -> None:
    if entry.problem_id is None:
        entry.problem_id, entry.problem = doc_id, error
