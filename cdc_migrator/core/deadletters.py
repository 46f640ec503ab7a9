"""The dead-letter topic: documents whose transform raised, and records that did not decode.

Each entry is a JSON object (migration, kind ``transform``, ``poison`` or ``too_large``,
document id, error, traceback, time; for poison records the partition, offset and the raw
value in hex), keyed by the document's key when there is one. A ``too_large`` entry stands
for an event the topic refused even without its document (its ``_id`` alone is too large).
``dlq retry`` (:mod:`cdc_migrator.apply.replay`) replays the entries after the last retry.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from ..base import topics
from ..base.messages import shorten
from ..base.settings import Settings
from ..migration import Migration
from . import events

#: A key larger than this does not go on a dead letter (the record key and its hex): the
#: entry names the document by a shortened repr and cannot be retried by ``dlq retry``.
MAX_DEAD_LETTER_KEY = 64 << 10


def dead_letter(migration: str, kind: str, error: str, *, key: bytes | None,
                doc_id: Any = None, traceback: str = "", record: Any = None
                ) -> tuple[bytes | None, bytes]:
    """The record of one dead letter: its key (the document's, when there is one) and its
    JSON value. ``record`` is the Kafka record that did not decode, for a poison entry."""
    text = None if doc_id is None else repr(doc_id)
    entry: dict[str, Any] = {
        "migration": migration, "kind": kind,
        "id": None if text is None else shorten(text, 200),
        "error": error, "traceback": traceback, "at": time.time(),
        "key_hex": key.hex() if key is not None else None,
    }
    if record is not None:
        entry.update(partition=record.partition, offset=record.offset,
                     value_hex=(record.value or b"")[:4096].hex())
    return key, json.dumps(entry, default=str).encode()


def too_large(settings: Settings, migration: Migration, key: bytes, size: int,
              topic: str) -> list[topics.Record]:
    """The dead letter of an event of ``size`` bytes that ``topic`` refused even without its
    document: one record for the dead-letter topic (created if missing)."""
    dlq = settings.dlq_topic(migration.collection)
    topics.ensure_topic(settings, dlq, partitions=1)
    try:
        doc_id = events.decode_key(key)
    except events.PoisonRecord:
        doc_id = None
    letter_key, value = dead_letter(
        migration.name, "too_large",
        f"an event of {size:,} bytes is larger than topic {topic} accepts (its "
        f"max.message.bytes) even without its document: its _id alone takes {len(key):,} "
        "bytes", key=key if len(key) <= MAX_DEAD_LETTER_KEY else None, doc_id=doc_id)
    return [topics.Record(dlq, letter_key, value, dead_letter=True)]


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
