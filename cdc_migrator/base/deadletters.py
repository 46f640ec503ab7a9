"""The dead-letter topic: documents whose transform raised, and records that did not decode.

Each entry is a JSON object (migration, kind ``transform``, ``poison`` or ``too_large``,
document id, error, traceback, time; for poison records the partition, offset and the raw
value in hex), keyed by the document's key when there is one. A ``too_large`` entry stands
for an event the topic refused even without its document (its ``_id`` alone is too large).
``retry`` replays the entries after the last retry through the (fixed) transform; documents
that fail again are dead-lettered anew.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from ..apply.applier import Applier
from ..migration import Migration
from . import events, topics
from .context import make_context
from .settings import Settings
from .state import StateStore

#: A key larger than this does not go on a dead letter (the record key and its hex): the
#: entry names the document by a shortened repr and cannot be retried by ``dlq retry``.
MAX_DEAD_LETTER_KEY = 64 << 10


def too_large(settings: Settings, migration: Migration, key: bytes, size: int,
              topic: str) -> list[topics.Record]:
    """The dead letter of an event of ``size`` bytes that ``topic`` refused even without its
    document: one record for the dead-letter topic (created if missing)."""
    dlq = settings.dlq_topic(migration.collection)
    topics.ensure_topic(settings, dlq, partitions=1)
    try:
        doc_id = repr(events.decode_key(key))
    except events.PoisonRecord:
        doc_id = None
    small = len(key) <= MAX_DEAD_LETTER_KEY
    entry = {
        "migration": migration.name, "kind": "too_large",
        "id": doc_id if doc_id is None or len(doc_id) <= 200 else doc_id[:197] + "...",
        "error": (f"an event of {size:,} bytes is larger than topic {topic} accepts (its "
                  f"max.message.bytes) even without its document: its _id alone takes "
                  f"{len(key):,} bytes"),
        "traceback": "", "at": time.time(), "key_hex": key.hex() if small else None,
    }
    return [topics.Record(dlq, key if small else None, json.dumps(entry).encode(),
                          dead_letter=True)]


@dataclass
class DeadLetter:
    offset: int
    key: bytes | None
    entry: dict[str, Any]

    @property
    def doc_id(self) -> Any:
        """The document id, decoded from the record key; None when there is none."""
        if not self.key:
            return None
        try:
            return events.decode_key(self.key)
        except events.PoisonRecord:
            return None


def read(settings: Settings, migration: Migration, start: int = 0) -> list[DeadLetter]:
    """Every dead letter of ``migration`` from offset ``start`` to the current end."""
    topic = settings.dlq_topic(migration.collection)
    topics.ensure_topic(settings, topic, partitions=1)
    consumer = KafkaConsumer(enable_auto_commit=False, consumer_timeout_ms=2000,
                             **topics.client_options(settings))
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        found: list[DeadLetter] = []
        if start >= end:
            return found
        consumer.seek(tp, start)
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    if record.offset >= end:
                        break
                    try:
                        entry = json.loads(record.value)
                    except ValueError:
                        entry = {"kind": "unreadable", "error": "dead letter is not JSON"}
                    if entry.get("migration") in (None, migration.name):
                        found.append(DeadLetter(record.offset, record.key, entry))
        return found
    finally:
        consumer.close()


def end_offset(settings: Settings, migration: Migration) -> int:
    topic = settings.dlq_topic(migration.collection)
    consumer = KafkaConsumer(**topics.client_options(settings))
    try:
        tp = TopicPartition(topic, 0)
        return consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


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
    store = StateStore(settings.db, settings.state_collection)
    state = store.ensure(migration.name, migration.collection)
    start = state.get("dlq_offset", 0)
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
                      make_context(settings.db, migration.name))
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
                    producer.send(settings.dlq_topic(migration.collection),
                                  key=events.key_bytes(f.id), value=json.dumps(
                                      {"migration": migration.name, "kind": "transform",
                                       "id": repr(f.id), "error": f.error,
                                       "traceback": f.traceback}).encode())
                producer.flush()
            finally:
                producer.close()
        store.add(migration.name, {"updated": result.updated, "deleted": result.deleted})
    # Everything read is resolved except what failed again (re-sent after the new offset).
    new_end = letters[-1].offset + 1 if letters else start
    store.set(migration.name, dlq_offset=new_end,
              dlq_pending=len(report.failed_again))
    return report
