"""The small-collection shortcut: scan and patch in one process, without Kafka.

Documents are read in ``_id`` order, migrated with guarded bulk writes, and the position is
saved after every batch, so an interrupted ``apply`` resumes where it stopped. Documents the
application writes *after* the scan passed them are not seen: for a collection that is being
written to during a long migration, use the Kafka pipeline (``backfill`` + ``tail`` +
``consume``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bson.raw_bson import RawBSONDocument

from ..base.codec import CODEC_OPTIONS
from ..base.progress import Progress
from ..base.scanner import count, prefetched, scan
from ..base.settings import Settings
from ..base.topology import shard_key
from ..core.context import make_context
from ..core.fingerprint import fingerprint, short
from ..core.patch import Outcome, decide
from ..core.rawdoc import document_id
from ..core.state import failure_record
from ..errors import Refused
from ..migration import Migration
from .applier import Applier, BatchResult, Decided
from .writebehind import WriteBehind


@dataclass
class ApplyReport:
    migration: str
    scanned: int
    result: BatchResult
    resumed: bool

    def summary(self) -> str:
        r = self.result
        return (f"{self.migration}: scanned {self.scanned:,} documents; updated {r.updated:,}, "
                f"deleted {r.deleted:,}, unchanged {r.unchanged:,}, failed {r.failed:,}"
                + (f", {r.retried:,} writes retried after concurrent changes" if r.retried else "")
                + (" (resumed from the saved position)" if self.resumed else ""))


def apply_migration(
    settings: Settings,
    migration: Migration,
    *,
    batch_size: int | None = None,
    reset: bool = False,
    rate: float | None = None,
    show_progress: bool = True,
) -> ApplyReport:
    """Migrate every document of the collection in this process; resumable. Refused when
    the code in force is not this code (``accept`` takes it)."""
    db = settings.db
    # A transform that returns something that is not a patch stops the run with a PatchError;
    # trying the first batch without writing catches most such bugs before any write.
    dry_run(settings, migration, batch_size=batch_size)
    store = settings.store
    state = store.ensure(migration.name, migration.collection)
    code = fingerprint(migration, settings.schemas)
    if state.code.fingerprint not in (None, code):
        # The documents before the saved position met other code: going on would mix them.
        raise Refused(f"{migration.name}'s code changed (fingerprint {short(code)}, the code "
                      f"in force is {short(state.code.fingerprint)}): `cdc-migrator accept "
                      f"{migration.name}` applies this code to every document again, or run "
                      "the code in force")
    store.adopt_code(migration.name, code)
    saved = state.apply
    position = saved.position if saved and saved.started and not saved.done and not reset \
        else None
    resumed = position is not None
    after = position.last if position is not None else None
    store.start_apply(migration.name, resumed=resumed)

    collection = db[migration.collection]
    applier = Applier(migration, collection,
                      make_context(db, migration.name, declared=migration.declared_reads),
                      shard_key(settings.client, f"{db.name}.{migration.collection}"))
    # The total is for the progress line alone: not counted when none is shown (a count of
    # the filter reads the collection once more).
    total = count(collection, migration.filter) if show_progress else None
    progress = Progress(f"apply {migration.name}", total, enabled=show_progress)
    totals = BatchResult()
    scanned = 0

    def write(decided: Decided, last_id: Any) -> BatchResult:
        result = applier.write(decided)
        # The position moves only past documents whose writes are acknowledged.
        store.save_apply_position(
            migration.name, last_id=last_id, counts=result.counts(),
            failures=[failure_record(f.id, f.error, "apply") for f in result.failures])
        return result

    def written(result: BatchResult) -> None:
        totals.add(result)
        progress.update(result.seen, updated=result.updated, failed=result.failed)

    # Three stages overlap: the next batch is read (prefetched) while this one is decided
    # (transforms, guards; here) and the one before is written (write-behind: one writer
    # thread, so the batches are written and their positions saved in order).
    # Leaving the block, on an error too, waits for the write in flight and its position.
    # The scan reads raw documents: the applier decodes only the fields the transform reads.
    raw = collection.with_options(
        codec_options=CODEC_OPTIONS.with_options(document_class=RawBSONDocument))
    with ThreadPoolExecutor(1, thread_name_prefix=f"apply-{migration.name}") as writer:
        behind = WriteBehind(writer, write, written)
        for batch in prefetched(scan(raw, migration.filter, after=after, started=resumed,
                                     batch_size=batch_size or migration.batch_size, rate=rate)):
            decided = applier.decide_documents(batch)
            scanned += len(batch)
            behind.submit(decided, document_id(batch[-1]))
        behind.flush()
    progress.close()
    store.finish_apply(migration.name)
    return ApplyReport(migration.name, scanned, totals, resumed)


@dataclass
class DryRunLine:
    id: Any
    outcome: Outcome
    side_effects: list[str]
    #: Collections the transform read for this document without declaring them in depends_on.
    undeclared_reads: list[str] = field(default_factory=list)

    def describe(self) -> str:
        o = self.outcome
        if o.kind == "noop":
            text = "no change"
        elif o.kind == "delete":
            text = "DELETE"
        elif o.kind == "error":
            text = f"ERROR {o.error}"
        else:
            parts = []
            if o.set:
                parts.append(f"$set {o.set!r}")
            if o.unset:
                parts.append(f"$unset {list(o.unset)!r}")
            text = " ".join(parts)
        if self.side_effects:
            text += "; would also write: " + "; ".join(self.side_effects)
        if self.undeclared_reads:
            text += ("; reads " + ", ".join(self.undeclared_reads) + ", not declared in "
                     "depends_on: its changes during the window are not followed")
        return f"{self.id!r}: {text}"


def dry_run(settings: Settings, migration: Migration, *, batch_size: int | None = None
            ) -> list[DryRunLine]:
    """Run the transform on the first batch and return each document's patch; writes nothing."""
    db = settings.db
    ctx = make_context(db, migration.name, dry_run=True, declared=migration.declared_reads)
    lines = []
    for batch in scan(db[migration.collection], migration.filter,
                      batch_size=batch_size or migration.batch_size):
        for doc in batch:
            outcome = decide(migration, doc, ctx)
            undeclared = sorted(ctx.reads - migration.declared_reads)
            lines.append(DryRunLine(doc["_id"], outcome, list(ctx.side_effects), undeclared))
            ctx.side_effects.clear()
            ctx.reads.clear()
        break
    return lines
