"""``dlq retry``: the dead letters replayed through the (fixed) transform.

The documents named by the dead letters since the last retry are migrated again from their
current state, with the applier's guarded writes; those that fail again are dead-lettered anew.
The fixed transform must be the code in force (``accept`` takes it): other code is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..base import topics
from ..base.settings import Settings
from ..base.topology import shard_key
from ..core import events
from ..core.context import make_context
from ..core.deadletters import dead_letter, read
from ..core.fingerprint import fingerprint, short
from ..errors import Refused
from ..migration import Migration
from .applier import Applier


@dataclass
class RetryReport:
    migration: str
    entries: int = 0
    documents: int = 0
    migrated: int = 0
    unchanged: int = 0
    missing: int = 0
    failed_again: list[dict[str, Any]] = field(default_factory=list)
    not_retryable: int = 0

    def summary(self) -> str:
        return (f"{self.migration}: retried {self.documents:,} documents from "
                f"{self.entries:,} dead letters: {self.migrated:,} migrated, "
                f"{self.unchanged:,} already fine, {self.missing:,} no longer exist, "
                f"{len(self.failed_again):,} failed again"
                + (f", {self.not_retryable:,} without a document id (listed, not retried)"
                   if self.not_retryable else ""))


def retry(settings: Settings, migration: Migration) -> RetryReport:
    """Replay the dead letters since the last retry through the transform."""
    store = settings.store
    state = store.ensure(migration.name, migration.collection)
    code = fingerprint(migration, settings.schemas)
    if state.code.fingerprint not in (None, code):
        raise Refused(f"{migration.name}'s code here (fingerprint {short(code)}) is not the "
                      f"code in force ({short(state.code.fingerprint)}): `cdc-migrator accept "
                      f"{migration.name}` takes it first; nothing was retried")
    start = state.dlq_offset
    letters = read(settings, migration, start)
    report = RetryReport(migration.name, entries=len(letters))
    ids: dict[bytes, Any] = {}
    for letter in letters:
        doc_id = letter.doc_id
        if doc_id is None:
            report.not_retryable += 1
        else:
            ids[events.key_bytes(doc_id)] = doc_id
    report.documents = len(ids)
    applier = Applier(migration, settings.db[migration.collection],
                      make_context(settings.db, migration.name),
                      shard_key(settings.client,
                                f"{settings.database_name}.{migration.collection}"))
    result = applier.apply_ids(list(ids.values())) if ids else None
    if result is not None:
        report.migrated = result.applied
        report.unchanged = result.unchanged
        report.missing = result.missing
        report.failed_again = [{"id": f.id, "error": f.error} for f in result.failures]
        if result.failures:
            producer = topics.producer(settings)
            try:
                for f in result.failures:
                    key, value = dead_letter(migration.name, "transform", f.error,
                                             key=events.key_bytes(f.id), doc_id=f.id,
                                             traceback=f.traceback)
                    producer.send(settings.dlq_topic(migration.collection), key=key,
                                  value=value)
                producer.flush()
            finally:
                producer.close()
        store.add_counts(migration.name, {"updated": result.updated,
                                          "deleted": result.deleted})
    # Everything read is resolved except what failed again (re-sent after the new offset).
    new_end = letters[-1].offset + 1 if letters else start
    store.resolve_dead_letters(migration.name, offset=new_end,
                               pending=len(report.failed_again))
    return report
