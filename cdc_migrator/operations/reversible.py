"""Reversibility: does the migration, then its inverse, give a document back?

For a document D, the migration's outcome is applied to D in memory (as MongoDB would apply
the patch), the inverse is run on the result, and its outcome applied too. D comes back when
the two documents encode to the same BSON bytes with their top-level fields in one order.

Why top-level field order is set aside: a patch is a ``$set``/``$unset`` of top-level fields,
and MongoDB appends a field that ``$set`` adds after the existing ones. An inverse that puts
back a removed field therefore puts it at the end; no patch can restore its old position, and
field order at the top level means nothing to a query, an index or a guard (which pins values
by field). Order inside embedded documents is kept and compared: there it is part of the
value (``{a: 1, b: 2}`` and ``{b: 2, a: 1}`` are different values to MongoDB).

``verify --reversible`` streams the collection, groups documents by shape
(:mod:`.shapes`) and checks up to ``per_shape`` documents of each. The reverse run of
``revert`` goes over every document of the collection (the forward filter names the old
shape), so documents outside the migration's filter are checked too: the inverse must leave
them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bson

from ..base.codec import CODEC_OPTIONS
from ..base.messages import shorten
from ..base.naming import revert
from ..base.scanner import scan
from ..base.settings import Settings
from ..core.context import Context, make_context
from ..core.patch import Outcome, decide
from ..errors import PatchError, UsageError
from ..migration import Migration
from .shapes import shape_id, shape_of

#: How many distinct shapes are tracked at most (memory stays bounded on any collection).
MAX_SHAPES = 1000


def applied(doc: Mapping[str, Any], outcome: Outcome) -> dict[str, Any] | None:
    """``doc`` as it is after ``outcome`` was written (None when deleted): set fields replace
    their value in place or come last, unset fields go, as MongoDB's update does."""
    if outcome.kind == "delete":
        return None
    result = dict(doc)
    if outcome.kind == "update":
        for name in outcome.unset:
            result.pop(name, None)
        for name in sorted(outcome.set):  # MongoDB 5.0+ adds new fields in name order
            result[name] = outcome.set[name]
    return result


def canonical(doc: Mapping[str, Any]) -> bytes:
    """BSON bytes of ``doc`` with its top-level fields in name order (see the module)."""
    return bson.encode({k: doc[k] for k in sorted(doc)}, codec_options=CODEC_OPTIONS)


def difference(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """Which top-level fields differ between two documents, in a line."""
    parts = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            parts.append(f"{name} lost")
        elif name not in before:
            parts.append(f"{name} added")
        elif canonical({"v": before[name]}) != canonical({"v": after[name]}):
            parts.append(f"{name} {shorten(repr(before[name]), 40)} came back as "
                         f"{shorten(repr(after[name]), 40)}")
    return ", ".join(parts) or "field order inside an embedded document"


def _through(migration: Migration, doc: Mapping[str, Any], ctx: Context,
             who: str) -> tuple[dict[str, Any] | None, str | None]:
    """``doc`` after ``migration``'s decision (None: deleted), or why it has none (``who``
    names the migration in the reason)."""
    try:
        outcome = decide(migration, doc, ctx)
    except PatchError as exc:
        return None, f"{who} returns an invalid patch: {exc}"
    if outcome.kind == "error":
        return None, f"{who} raises: {outcome.error}"
    return applied(doc, outcome), None


def round_trip(forward: Migration, reverse: Migration, doc: Mapping[str, Any],
               ctx: Context, *, outside_filter: bool = False) -> str | None:
    """Why ``doc`` does not come back through the migration then its inverse; None when it
    does. ``outside_filter``: the migration never sees ``doc``; only the inverse runs."""
    if outside_filter:
        migrated = applied(doc, Outcome("noop", doc["_id"]))
    else:
        migrated, why = _through(forward, doc, ctx, "the migration")
        if why is not None:
            return why
    if migrated is None:
        return "the migration deletes it: nothing can bring it back"
    restored, why = _through(reverse, migrated, ctx, "the inverse")
    if why is not None:
        return why
    if restored is None:
        return "the inverse deletes it"
    if canonical(restored) != canonical(doc):
        return difference(doc, restored)
    return None


def reverse_of(migration: Migration) -> Migration:
    """The migration the inverse runs as (named by ``base/naming.revert``)."""
    return migration.reversed_as(revert(migration.name))


@dataclass
class ShapeCheck:
    """The documents of one shape, and whether the sampled ones came back."""

    id: str
    shape: str
    documents: int = 0
    checked: int = 0
    failed: int = 0
    example_id: Any = None
    reason: str = ""
    outside_filter: bool = False


@dataclass
class ReversibleReport:
    migration: str
    collection: str
    checked: int = 0
    shapes: list[ShapeCheck] = field(default_factory=list)
    untracked: int = 0  # documents of shapes beyond MAX_SHAPES, not checked

    @property
    def failing(self) -> list[ShapeCheck]:
        return [s for s in self.shapes if s.failed]

    @property
    def ok(self) -> bool:
        return not self.failing and not self.untracked

    def summary(self) -> str:
        shapes = len(self.shapes)
        if self.ok:
            return (f"{self.migration}: reversible: {self.checked:,} sampled documents of "
                    f"{shapes} shapes come back through the migration and its inverse")
        parts = []
        if self.failing:
            parts.append(f"{len(self.failing)} of {shapes} shapes do not come back: "
                         + ", ".join(s.id for s in self.failing))
        if self.untracked:
            parts.append(f"{self.untracked:,} documents of shapes beyond the first "
                         f"{MAX_SHAPES} were not checked")
        return f"{self.migration}: NOT reversible: " + "; ".join(parts)


def verify_reversible(settings: Settings, migration: Migration, *, per_shape: int = 3,
                      batch_size: int | None = None,
                      max_shapes: int = MAX_SHAPES) -> ReversibleReport:
    """Check, for up to ``per_shape`` documents of every shape, that the migration then its
    inverse gives the document back. Writes nothing (side writes are recorded, not made)."""
    if migration.inverse is None:
        raise UsageError(f"migration {migration.name!r} declares no inverse: add "
                         f"@{migration.name}.down beside it")
    reverse = reverse_of(migration)
    ctx = make_context(settings.db, migration.name, dry_run=True)
    report = ReversibleReport(migration.name, migration.collection)
    by_shape: dict[tuple[str, bool], ShapeCheck] = {}
    coll = settings.db[migration.collection]
    passes = [(migration.filter, False)]
    if migration.filter:
        passes.append(({"$nor": [migration.filter]}, True))
    for query, outside in passes:
        for batch in scan(coll, query, batch_size=batch_size or migration.batch_size):
            for doc in batch:
                shape = shape_of(doc)
                check = by_shape.get((shape, outside))
                if check is None:
                    if len(by_shape) >= max_shapes:
                        report.untracked += 1
                        continue
                    check = by_shape[(shape, outside)] = ShapeCheck(
                        shape_id(shape), shape, outside_filter=outside)
                    report.shapes.append(check)
                check.documents += 1
                if check.checked >= per_shape:
                    continue
                check.checked += 1
                report.checked += 1
                reason = round_trip(migration, reverse, doc, ctx, outside_filter=outside)
                if reason is not None:
                    check.failed += 1
                    if check.example_id is None:
                        check.example_id, check.reason = doc["_id"], reason
            ctx.side_effects.clear()
    return report

