"""The backfill scanner: the documents already in the collection become events on its topic.

It refuses to start before change capture is armed, so every write after a document was
scanned also yields a change event. The position (last ``_id``) is saved after the broker
acknowledged the batch, so an interrupted backfill resumes where it stopped. A lost connection
is ridden out the same way within one run (see :mod:`cdc_migrator.retry`): the batch in hand
is sent again, and the scan is re-opened after the last saved position.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from ..base import deadletters as deadletter
from ..base import events, logs, metrics, topics
from ..base.codec import CODEC_OPTIONS
from ..base.partitions import partition_of
from ..base.progress import Progress
from ..base.retry import KAFKA, MONGODB, Retrier, StopRequested
from ..base.scanner import count, prefetched, scan
from ..base.settings import Settings
from ..base.state import MigrationState, StateStore
from ..errors import Refused
from ..migration import Migration

log = logging.getLogger("cdc_migrator.backfill")

@dataclass
class BackfillReport:
    migration: str
    scanned: int
    total_scanned: int
    resumed: bool
    done: bool

    def summary(self) -> str:
        how = " (resumed from the saved position)" if self.resumed else ""
        state = "finished" if self.done else "stopped before the end"
        return (f"{self.migration}: backfill {state}; {self.scanned:,} documents produced "
                f"in this run, {self.total_scanned:,} in all{how}")


def backfill(
    settings: Settings,
    migration: Migration,
    *,
    batch_size: int | None = None,
    rate: float | None = None,
    reset: bool = False,
    show_progress: bool = True,
    stop: threading.Event | None = None,
) -> BackfillReport:
    """Scan the collection in ``_id`` order into the migration's topic."""
    logs.bind(migration=migration.name, component="backfill")
    retry = Retrier(settings, log, stop)
    store = StateStore(settings.db, settings.state_collection)
    try:
        state = retry.call(MONGODB, store.get, migration.name)
    except StopRequested:
        return BackfillReport(migration.name, 0, 0, False, False)
    if state is None or not state.armed:
        raise Refused(
            f"change capture for {migration.name!r} is not armed: start `cdc-migrator tail "
            f"{migration.name}` first (or use `cdc-migrator run`), so no write can fall "
            "between the scan and the change stream")
    if state.cancelled:
        raise Refused(f"migration {migration.name!r} was cancelled; `reset` it to start again")
    _refuse_failed(state)
    # A tailer that lost its history re-arms capture (--on-history-lost rebackfill): a pass
    # that began before that no longer covers every write, and gives way to a new one.
    armed_at = state.tail.armed_at
    saved = state.backfill
    if saved is not None and saved.done and not reset:
        return BackfillReport(migration.name, 0, saved.scanned, False, True)
    position = saved.position if saved is not None and not reset else None
    resumed = position is not None
    done_before = saved.scanned if saved is not None and resumed else 0
    topic = settings.topic(migration.collection)
    collection = settings.db[migration.collection]
    raw_collection = collection.with_options(
        codec_options=collection.codec_options.with_options(document_class=RawBSONDocument))
    encoder = events.RawEncoder(migration.name, settings.database_name, migration.collection)
    publisher = topics.Publisher(settings, retry)
    progress: Progress | None = None
    scanned = 0
    finished = False
    try:
        partitions = retry.call(KAFKA, topics.ensure_topic, settings, topic)
        total = retry.call(MONGODB, count, collection, migration.filter)
        retry.call(MONGODB, store.start_backfill, migration.name, total, over=not resumed)
        log.info("backfill %s: %d documents to scan into %s",
                 f"resumed after {done_before} documents" if resumed else "started", total,
                 topic)
        progress = Progress(f"backfill {migration.name}", total, enabled=show_progress)
        progress.done = done_before
        cursor, started = (position.last if position else None), resumed
        while True:
            try:
                # Documents are read as raw BSON and go on the topic as read (no decoding and
                # encoding again); the next batch is read while this one is produced.
                batches = scan(raw_collection, migration.filter, after=cursor, started=started,
                               rate=rate, batch_size=batch_size or migration.batch_size)
                for batch in prefetched(batches):
                    retry.recovered(MONGODB)
                    batch_started = time.monotonic()
                    for partition, docs in by_partition(batch, encoder, partitions):
                        publisher.send_record(snapshot_record(
                            settings, migration, encoder, topic, partition, docs))
                    publisher.flush()  # rides out a broker outage with this batch in hand
                    if publisher.dead_lettered:
                        retry.call(MONGODB, store.add_dead_letters, migration.name,
                                   publisher.dead_lettered)
                    current = retry.call(
                        MONGODB, store.save_backfill_position, migration.name,
                        last_id=batch[-1]["_id"], scanned=done_before + scanned + len(batch),
                        produced=len(batch), armed_at=armed_at)
                    cursor, started = batch[-1]["_id"], True
                    scanned += len(batch)
                    progress.update(len(batch))
                    metrics.record_produced(migration.name, len(batch), "backfill",
                                                  time.monotonic() - batch_started)
                    # A paused backfill holds no cursor: MongoDB would kill it after 10 idle
                    # minutes. The scan reopens after the last document read.
                    if not current:
                        log.warning("capture was re-armed after the change history was lost; "
                                    "this backfill pass stops, a new one scans everything")
                        break
                    if not _hold_while_paused(store, migration.name, stop,
                                              holding=batches.held):
                        break
                    if stop is not None and stop.is_set():
                        break
                else:
                    finished = True
                break
            except StopRequested:
                raise
            except Exception as exc:
                publisher.forget()
                retry.failed(exc)  # then scan again after the last saved position
        if finished:
            finished = retry.call(MONGODB, store.finish_backfill, migration.name,
                                  armed_at=armed_at)
    except StopRequested:
        finished = False
    finally:
        publisher.close()
        if progress is not None:
            progress.close()
    log.info("backfill %s: %d documents produced in this run, %d in all",
             "finished" if finished else "stopped", scanned, done_before + scanned)
    return BackfillReport(migration.name, scanned, done_before + scanned, resumed, finished)


#: The most document bytes one backfill record carries (a batch is split further above it).
RECORD_BYTES = 512 * 1024


def by_partition(batch: list, encoder: events.RawEncoder,
                 partitions: int) -> Iterator[tuple[int, list]]:
    """A scanned batch as groups of documents of one partition, each small enough for one
    record, in ``_id`` order within a partition.

    The partition of a document is the one the producer's default partitioner gives its key
    (:func:`~cdc_migrator.base.partitions.partition_of`, as Kafka's Java client), where the
    tailer's change events of the same document go: one document's events stay in one
    partition, in order. One record per group instead of one per document is what makes the
    backfill cheap to produce and to consume. A document larger than ``RECORD_BYTES`` is
    always alone in its group, so a document as large as MongoDB allows never shares a record
    with others.
    """
    groups: dict[int, list] = {}
    sizes: dict[int, int] = {}
    for doc in batch:
        partition = partition_of(encoder.key_of(doc), partitions)
        size = len(doc.raw) if isinstance(doc, RawBSONDocument) \
            else len(bson.encode(doc, codec_options=CODEC_OPTIONS))
        group = groups.get(partition)
        if group and sizes[partition] + size > RECORD_BYTES:
            yield partition, group
            group = None
        if group is None:
            groups[partition] = group = []
            sizes[partition] = 0
        group.append(doc)
        sizes[partition] += size
    yield from groups.items()


def snapshot_record(settings: Settings, migration: Migration, encoder: events.RawEncoder,
                    topic: str, partition: int, docs: list) -> topics.Record:
    """The record of a backfill batch of one partition, and what stands for it should the
    topic refuse it as too large: each document in a record of its own; a document alone too
    large, its ``_id`` alone (the consumer reads the document from MongoDB); an ``_id`` too
    large even so, a dead letter."""
    key, value = encoder.snapshot_batch(docs)
    if len(docs) > 1:
        def fallback() -> list[topics.Record]:
            return [snapshot_record(settings, migration, encoder, topic, partition, [doc])
                    for doc in docs]
    else:
        def fallback() -> list[topics.Record]:
            id_key, id_value = encoder.snapshot_key(docs[0])
            return [topics.Record(topic, id_key, id_value, partition, lambda: deadletter.too_large(
                settings, migration, id_key, len(value), topic))]
    return topics.Record(topic, key, value, partition, fallback)


def _refuse_failed(state: MigrationState) -> None:
    """Refuse a migration that failed (its collection dropped or renamed, its history lost)."""
    if state.failed:
        raise Refused(f"migration {state.name!r} failed, no backfill: {state.failure_reason}")


def _hold_while_paused(store: StateStore, name: str, stop: threading.Event | None,
                       holding: Callable[[], AbstractContextManager[Any]] = nullcontext) -> bool:
    """Wait while the migration is paused; False when it was cancelled or we must stop.

    The wait runs inside ``holding()`` (the scan's :meth:`~cdc_migrator.base.scanner.Scan.held`).
    Raises :class:`Refused` when the migration failed (e.g. its collection was dropped).
    """
    state = store.get(name)
    if state is None or state.cancelled:
        return False
    _refuse_failed(state)
    if not state.paused:
        return True
    with holding():
        while True:
            if stop is not None and stop.wait(1.0):
                return False
            if stop is None:
                time.sleep(1.0)
            state = store.get(name)
            if state is None or state.cancelled:
                return False
            _refuse_failed(state)
            if not state.paused:
                return True
