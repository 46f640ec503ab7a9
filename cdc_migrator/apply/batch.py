"""A polled batch applied: its records decoded, the documents they name migrated, and what it
passed (fences) and dead-lettered (poison records, failed transforms).

Everything of a batch but Kafka: the group member (:mod:`.consumer`) polls the batch, hands it
here, and then sends its dead letters, commits its offsets and acknowledges its fences.

The documents of a poll are applied in chunks of :data:`APPLY_CHUNK` (fewer while throttled),
each decided while the one before is written (:class:`~.writebehind.WriteBehind`). The image an
event carries is tried first; a guard miss re-reads the database.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import bson
from bson.errors import BSONError
from kafka import OffsetAndMetadata, TopicPartition

from ..base.identity import id_key
from ..base.retry import MONGODB, Retrier
from ..core import deadletters, events
from ..core.rawdoc import document_id
from ..core.throttle import Throttle
from ..migration import Migration
from .applier import Applier, BatchResult
from .writebehind import WriteBehind

log = logging.getLogger("cdc_migrator.consumer")

# A poll of backfill records (each a batch of documents) is applied in chunks of this many
# documents, and committed once all of them are written. While one chunk is written (by a
# writer thread) the next is decoded and decided: at most two chunks are held at once.
APPLY_CHUNK = 1000


@dataclass
class Batch:
    """One poll: where it ends in each partition, and what applying it did."""

    count: int = 0  # events: a backfill record counts each of its documents
    offsets: dict[TopicPartition, OffsetAndMetadata] = field(default_factory=dict)
    firsts: dict[TopicPartition, int] = field(default_factory=dict)  # its first offsets
    fences: list[tuple[int, str]] = field(default_factory=list)  # (partition, fence id)
    dead: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)  # kind, key, value
    result: BatchResult = field(default_factory=BatchResult)
    #: The cluster times (epoch seconds) of the change events it carries: the metrics' change
    #: to applied latency, once the batch is committed.
    change_times: list[float] = field(default_factory=list)

    @property
    def poison(self) -> int:
        return sum(1 for kind, _, _ in self.dead if kind == "poison")


@dataclass
class _Chunk:
    """Documents named by the records of a poll, not applied yet, and the records that named
    them (with their envelopes): the documents stay raw until the applier reads them."""

    ids: list[Any] = field(default_factory=list)
    images: dict[Any, Any] = field(default_factory=dict)
    records: list[tuple[TopicPartition, Any, events.Envelope]] = field(default_factory=list)
    suspect: bool = False  # holds a raw document whose BSON is invalid

    def take(self, tp: TopicPartition, record: Any, envelope: events.Envelope) -> None:
        """The documents ``envelope`` names, the record that carried it."""
        self.records.append((tp, record, envelope))
        if envelope.documents is not None:
            for doc in envelope.documents:
                self.add(document_id(doc), doc)
        elif envelope.changes is not None:
            for change in envelope.changes:
                self.add(change.key, change.document)
        else:
            self.add(envelope.key, envelope.document)

    def add(self, doc_id: Any, image: Mapping[str, Any] | None) -> None:
        key = id_key(doc_id)
        self.ids.append(doc_id)
        # One event in the batch: its image may stand in for a database read. Several: a
        # backfill snapshot may have been read before a change event that precedes it on the
        # topic, so no image is known to be the newest; read the database.
        images = self.images
        if key in images:
            # Neither image is read now: check the raw ones here, or an invalid one would pass.
            self.suspect = self.suspect or not (_valid(images[key]) and _valid(image))
            images[key] = None
        else:
            images[key] = image


def _events_in(envelope: events.Envelope) -> int:
    """The events a record carries: a backfill batch's documents, a change batch's changes,
    or the one."""
    if envelope.documents is not None:
        return len(envelope.documents)
    if envelope.changes is not None:
        return len(envelope.changes)
    return 1


def _change_times(envelope: events.Envelope) -> list[float]:
    """The cluster times (epoch seconds) of the change events a record carries."""
    if envelope.changes is not None:
        return [float(c.cluster_time.time) for c in envelope.changes
                if c.cluster_time is not None]
    if envelope.source == "change" and envelope.cluster_time is not None:
        return [float(envelope.cluster_time.time)]
    return []


def _valid(image: Mapping[str, Any] | None) -> bool:
    if type(image) is not events.RawDocument:
        return True
    try:
        _bson_decode(image.raw, events.CODEC_OPTIONS)
    except Exception:  # any decoding failure: the record is poison (see _without_poison)
        return False
    return True


_bson_decode = bson.decode


class BatchApplier:
    """Applies the polled batches of one migration's group member.

    ``retry`` rides out MongoDB in the member's thread (reads, decisions), ``write_retry`` in
    the writer thread of ``writer``; the throttle paces the chunks and hears their latency.
    """

    def __init__(self, migration: Migration, applier: Applier, throttle: Throttle, *,
                 retry: Retrier, write_retry: Retrier, writer: Executor) -> None:
        self.migration, self.applier, self.throttle = migration, applier, throttle
        self.retry, self.write_retry, self.writer = retry, write_retry, writer

    def apply(self, polled: dict[TopicPartition, list[Any]]) -> Batch:
        """Apply every document ``polled`` names; each step is retried until it succeeds (the
        caller commits the offsets only after it)."""
        batch = Batch()
        behind = WriteBehind(self.writer, self._write, lambda r: self._written(batch, r))
        chunk, limit = _Chunk(), self.throttle.chunk(APPLY_CHUNK)
        for tp, records in polled.items():
            if not records:
                continue
            # Positions per partition, once per poll: the records of a partition come in order.
            batch.firsts.setdefault(tp, records[0].offset)
            batch.offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            batch.count += len(records)
            for record in records:
                if len(chunk.ids) >= limit:  # those so far go first
                    self._apply_chunk(chunk, behind, batch)
                    chunk, limit = _Chunk(), self.throttle.chunk(APPLY_CHUNK)
                self._take(tp, record, batch, chunk)
        if chunk.ids:
            self._apply_chunk(chunk, behind, batch)
        behind.flush()
        for failure in batch.result.failures:
            log.warning("transform failed on %r, dead-lettered: %s", failure.id, failure.error)
            batch.dead.append(("transform", *deadletters.dead_letter(
                self.migration.name, "transform", failure.error,
                key=events.key_bytes(failure.id), doc_id=failure.id,
                traceback=failure.traceback)))
        return batch

    def _take(self, tp: TopicPartition, record: Any, batch: Batch, chunk: _Chunk) -> None:
        """One record: the documents it names join the chunk; a fence, the batch's fences; a
        record that does not decode, its dead letters."""
        try:
            envelope = events.decode_raw(record.value)
        except events.PoisonRecord as exc:
            self._poison(tp, record, exc, batch)
            return
        if envelope.migration != self.migration.name:
            return
        if envelope.source == "fence":
            if envelope.fence_id is not None:  # the tailer gives every fence its id
                batch.fences.append((tp.partition, envelope.fence_id))
            return
        batch.change_times += _change_times(envelope)
        batch.count += _events_in(envelope) - 1  # a batch record: an event per document
        chunk.take(tp, record, envelope)

    def _poison(self, tp: TopicPartition, record: Any, exc: Exception, batch: Batch) -> None:
        log.warning("undecodable record at partition %d offset %d dead-lettered: %s",
                    tp.partition, record.offset, exc)
        batch.dead.append(("poison", *deadletters.dead_letter(
            self.migration.name, "poison", str(exc), key=record.key, record=record)))

    def _apply_chunk(self, chunk: _Chunk, behind: WriteBehind, batch: Batch) -> None:
        # Decided here, written by the writer thread while the next chunk is decoded and
        # decided. The throttle's pace is paid before deciding.
        self.throttle.spend(len(chunk.ids))
        if chunk.suspect:
            chunk = self._without_poison(chunk, batch)
        while chunk.ids:
            # The documents were only checked for their framing: a document whose BSON is
            # invalid inside fails when read, in the transform (a failure) or around it. Its
            # record is then poison, and the chunk's other records are decided again.
            try:
                decided = self.retry.call(MONGODB, self.applier.decide_ids, chunk.ids,
                                          chunk.images)
            except BSONError:
                clean = self._without_poison(chunk, batch)
                if clean is chunk:
                    raise
            else:
                clean = self._without_poison(chunk, batch) if decided.result.failures else chunk
                if clean is chunk:
                    behind.submit(decided)
                    return
            chunk = clean

    def _without_poison(self, chunk: _Chunk, batch: Batch) -> _Chunk:
        """``chunk`` itself if every record of it decodes fully, else a chunk of the records
        that do, those that do not dead-lettered as poison (their events no longer counted)."""
        poisoned = []
        for tp, record, envelope in chunk.records:
            try:
                events.decode(record.value)
            except events.PoisonRecord as found:
                poisoned.append((tp, record, envelope, found))
        if not poisoned:
            return chunk
        clean, dropped = _Chunk(), {id(record) for _, record, _, _ in poisoned}
        for tp, record, envelope in chunk.records:
            if id(record) not in dropped:
                clean.take(tp, record, envelope)
        for tp, record, envelope, reason in poisoned:
            self._poison(tp, record, reason, batch)
            batch.count -= _events_in(envelope) - 1
            for at in _change_times(envelope):
                batch.change_times.remove(at)
        return clean

    def _write(self, decided: Any) -> BatchResult:
        return self.write_retry.call(MONGODB, self.applier.write, decided)

    def _written(self, batch: Batch, result: BatchResult) -> None:
        batch.result.add(result)
        self.throttle.note_write(self.applier.last_write_seconds)
