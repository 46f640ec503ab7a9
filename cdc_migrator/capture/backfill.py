"""The backfill scanner: the documents already in the collection become events on its topic.

It refuses to start before change capture is armed, so every write after a document was
scanned also yields a change event, and it reads nothing before every write up to the armed
point is majority-committed (see :mod:`cdc_migrator.base.history`), so no write in flight when
capture was armed falls between the two. The collection is split into ``_id`` ranges that any
number of backfill processes (and threads, ``--workers``) share: each range is leased to one
worker at a time and has its own position (last ``_id``), saved after the broker acknowledged
the batch, so an interrupted range resumes where it stopped, by whichever worker takes it
over once the lease ran out (see :mod:`cdc_migrator.capture.leases`). A lost connection
is ridden out the same way within one run (see :mod:`cdc_migrator.base.retry`): the batch in hand
is sent again, and the scan is re-opened after the last saved position.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from ..base import history, logs, metrics, topics
from ..base.codec import CODEC_OPTIONS
from ..base.messages import message_of
from ..base.progress import Progress
from ..base.retry import KAFKA, MONGODB, Retrier
from ..base.scanner import prefetched, scan
from ..base.settings import Settings
from ..base.threads import Threads
from ..base.topology import LagReader, ShardedCollection, sharded_collection
from ..core import deadletters as deadletter
from ..core import events
from ..core.fingerprint import fingerprint
from ..core.holding import CHECK_INTERVAL, CodeHold
from ..core.state import MigrationState, StateStore
from ..core.throttle import Bounds, Throttle, worker_name
from ..errors import Refused, StopRequested
from ..migration import Migration
from .leases import Claim, LeaseKeeper, RangeStore, plan, range_filter
from .partitions import RECORD_BYTES, partition_of

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
    workers: int = 1,
) -> BackfillReport:
    """Scan the collection into the migration's topic, sharing the work with every other
    backfill of the same migration (other processes, and ``workers`` threads in this one).

    The collection is split into ``_id`` ranges (planned by the first process of the pass,
    see :mod:`cdc_migrator.capture.leases`); each worker claims a range with a lease, scans it
    from its saved position, and claims the next one, until every range is done. A range whose
    worker died is taken over once its lease ran out. ``rate`` caps this process's reads
    (shared by its workers); ``cdc-migrator throttle`` paces all of them, live.

    It holds while its code is not the code in force, and a pass begins only once every live
    member running other code holds (see :mod:`cdc_migrator.core.holding`).
    """
    logs.bind(migration=migration.name, component="backfill")
    retry = Retrier(settings, log, stop)
    store = settings.store
    code = CodeHold(store, migration.name, fingerprint(migration, settings.schemas), "backfill")
    stopped_by: Exception | None = None
    try:
        return _backfill(settings, migration, retry, code, batch_size=batch_size, rate=rate,
                         reset=reset, show_progress=show_progress, stop=stop, workers=workers)
    except Exception as exc:
        stopped_by = exc
        raise
    finally:
        code.leave(stopped_by)


def _backfill(settings: Settings, migration: Migration, retry: Retrier, code: CodeHold, *,
              batch_size: int | None, rate: float | None, reset: bool, show_progress: bool,
              stop: threading.Event | None, workers: int) -> BackfillReport:
    store = settings.store
    try:
        state = retry.call(MONGODB, store.get, migration.name)
        state = _code_in_force(code, state, store, retry, stop)
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
    saved = state.backfill
    if saved is not None and saved.done and not reset:
        return BackfillReport(migration.name, 0, saved.scanned, False, True)
    halt = threading.Event()  # this call's workers stop: asked to, or one of them failed
    pass_ = _Pass(settings, migration, store, state.tail.armed_at, halt, rate, workers,
                  batch_size or migration.batch_size, code)
    progress: Progress | None = None
    finished = False
    resumed = False
    try:
        # The change stream covers what comes after the armed point; the scan covers what came
        # before only once all of that is committed (a write in flight is in neither).
        retry.call(MONGODB, history.wait_committed, pass_.collection, pass_.armed_at,
                   stop if stop is not None else halt)
        pass_.partitions = retry.call(KAFKA, topics.ensure_topic, settings, pass_.topic)
        planned = retry.call(
            MONGODB, plan, pass_.collection, migration.filter, pass_.ranges, store,
            migration.name, owner=worker_name(), most=settings.backfill_ranges,
            armed_at=pass_.armed_at, saved=saved, reset=reset,
            wait=stop if stop is not None else halt,
            sharded=retry.call(MONGODB, sharding_of, settings, migration))
        resumed, total = planned.resumed, planned.total
        done_before = (retry.call(MONGODB, store.get, migration.name) or state).backfill
        log.info("backfill %s: %d documents to scan into %s, %d worker(s) here",
                 "resumed" if resumed else "started", total, pass_.topic, workers)
        progress = Progress(f"backfill {migration.name}", total, enabled=show_progress)
        progress.done = done_before.scanned if done_before else 0
        pass_.progress = progress
        finished = pass_.run(stop)
        if finished:
            finished = retry.call(MONGODB, store.finish_backfill, migration.name,
                                  armed_at=pass_.armed_at)
    except StopRequested:
        finished = False
    finally:
        if progress is not None:
            progress.close()
    try:
        after = retry.call(MONGODB, store.get, migration.name)
    except StopRequested:
        after = None
    total_scanned = after.backfill.scanned if after is not None and after.backfill else 0
    log.info("backfill %s: %d documents produced in this run, %d in all",
             "finished" if finished else "stopped", pass_.scanned, total_scanned)
    return BackfillReport(migration.name, pass_.scanned, total_scanned, resumed, finished)


class _Pass:
    """The workers of this process in one backfill pass."""

    def __init__(self, settings: Settings, migration: Migration, store: StateStore,
                 armed_at: Any, halt: threading.Event, rate: float | None, workers: int,
                 batch_size: int, code: CodeHold) -> None:
        self.settings, self.migration, self.store, self.code = settings, migration, store, code
        self.armed_at, self.halt, self.workers, self.batch_size = armed_at, halt, workers, \
            batch_size
        self.rate = rate / workers if rate else None  # --rate is this process's cap
        self.ranges = RangeStore(settings.db[settings.state_collection])
        self.lease = settings.lease_seconds
        self.topic = settings.topic(migration.collection)
        self.collection = settings.db[migration.collection]
        self.raw_collection = self.collection.with_options(
            codec_options=self.collection.codec_options.with_options(
                document_class=RawBSONDocument))
        self.encoder = events.RawEncoder(migration.name, settings.database_name,
                                         migration.collection)
        self.bounds = Bounds(settings.max_replication_lag, settings.max_write_latency,
                             settings.on_lag_unknown)
        self.partitions = 1
        self.progress: Progress | None = None
        self.scanned = 0
        self.rearmed = False
        self._lock = threading.Lock()
        self.keeper = LeaseKeeper(self.ranges, self.lease)

    def run(self, stop: threading.Event | None) -> bool:
        """Run the workers until every range is done (True) or they must stop."""
        def work(index: int) -> None:
            logs.bind(migration=self.migration.name, component="backfill")
            try:
                self._work(index)
            except StopRequested:
                pass

        threads = Threads(self.halt)  # a worker that fails stops the others
        with self.keeper:
            for i in range(self.workers):
                threads.start(f"backfill-{self.migration.name}-{i}", functools.partial(work, i))
            while threads.alive():
                if stop is not None and stop.is_set():
                    self.halt.set()
                threads.join(timeout=0.2)
        threads.raise_first()
        return not self.halt.is_set() and not self.rearmed and \
            self.ranges.all_done(self.migration.name, self.armed_at)

    def _work(self, index: int) -> None:
        """One worker: claim a range, scan it, claim the next; wait while ranges held by
        others are unfinished (their leases may run out); return when all are done."""
        owner = worker_name(index)
        retry = Retrier(self.settings, log, self.halt)
        publisher = topics.Publisher(self.settings, retry)
        throttle = Throttle(self.store, self.migration.name, member=owner, bounds=self.bounds,
                            lag=LagReader(self.settings.client, self.settings.client_for),
                            live=lambda _: self.ranges.leased_count(self.migration.name),
                            stop=self.halt, cap=self.rate)
        name = self.migration.name
        try:
            while not self.halt.is_set():
                state = retry.call(MONGODB, self.store.get, name)
                if state is None or state.cancelled:
                    self.halt.set()
                    return
                _refuse_failed(state)
                if state.tail.armed_at != self.armed_at:
                    self._rearmed()
                    return
                if self.code.holds(state) or self.code.waits_for(state):
                    self.halt.wait(CHECK_INTERVAL)  # claims nothing while other code applies
                    continue
                claim = retry.call(MONGODB, self.ranges.claim, name, owner, self.lease)
                if claim is None:
                    if retry.call(MONGODB, self.ranges.all_done, name, self.armed_at):
                        return
                    # Others hold the rest (their leases may run out), or a `--reset` plans
                    # the pass again.
                    self.halt.wait(min(1.0, self.lease / 3))
                    continue
                if claim.taken_from:
                    # A worker died or was cut off (or stopped renewing for a lease).
                    log.warning("range %d taken over from %s (its lease ran out), from its "
                                "saved position", claim.range.index, claim.taken_from)
                self.keeper.hold(claim)
                try:
                    self._scan_range(claim, retry, publisher, throttle)
                finally:
                    self.keeper.drop(claim)
                    if self.halt.is_set():
                        retry.call(MONGODB, self.ranges.release, claim)
        finally:
            publisher.close()

    def _rearmed(self) -> None:
        log.warning("capture was re-armed after the change history was lost; this backfill "
                    "pass stops, a new one scans everything")
        self.rearmed = True
        self.halt.set()

    def _scan_range(self, claim: Claim, retry: Retrier, publisher: topics.Publisher,
                    throttle: Throttle) -> None:
        """Scan one claimed range from its saved position to its end (marked done), or until
        it is taken over or the workers must stop."""
        name = self.migration.name
        parts = [f for f in (self.migration.filter, range_filter(claim.range.key_range)) if f]
        base = None if not parts else parts[0] if len(parts) == 1 else {"$and": parts}
        cursor, started = claim.range.position, claim.range.started
        while True:
            try:
                # Documents are read as raw BSON and go on the topic as read (no decoding and
                # encoding again); the next batch is read while this one is produced.
                batches = scan(self.raw_collection, base, after=cursor, started=started,
                               batch_size=self.batch_size)
                for batch in prefetched(batches):
                    retry.recovered(MONGODB)
                    # The throttle paces reads (at most this process's --rate share too):
                    # paying for this batch delays the next one.
                    throttle.spend(len(batch), before_long_wait=batches.release)
                    batch_started = time.monotonic()
                    for partition, docs in by_partition(
                            batch, self.encoder, self.partitions,
                            topics.group_bytes(self.topic, RECORD_BYTES)):
                        publisher.send_record(snapshot_record(
                            self.settings, self.migration, self.encoder, self.topic,
                            partition, docs))
                    publisher.flush()  # rides out a broker outage with this batch in hand
                    if publisher.dead_lettered:
                        retry.call(MONGODB, self.store.add_dead_letters, name,
                                   publisher.dead_lettered)
                    ours = retry.call(MONGODB, self.ranges.save_position, claim,
                                      batch[-1]["_id"], len(batch), self.lease)
                    if not ours:
                        log.info("range %d was taken over by another worker (this one's "
                                 "lease ran out); its batch is sent again by it",
                                 claim.range.index)
                        return
                    if not retry.call(MONGODB, self.store.record_backfill_batch, name,
                                      scanned=len(batch), armed_at=self.armed_at):
                        self._rearmed()
                        return
                    cursor, started = batch[-1]["_id"], True
                    with self._lock:
                        self.scanned += len(batch)
                        if self.progress is not None:
                            self.progress.update(len(batch))
                    metrics.record_produced(name, len(batch), "backfill",
                                            time.monotonic() - batch_started)
                    # A paused backfill holds no cursor: MongoDB would kill it after 10 idle
                    # minutes. The scan reopens after the last document read.
                    if not _hold_while_paused(self.store, name, self.halt, self.code,
                                              holding=batches.held):
                        self.halt.set()
                        return
                    if self.halt.is_set():
                        return
                else:
                    retry.call(MONGODB, self.ranges.finish, claim)
                    log.debug("range %d done", claim.range.index)
                return
            except StopRequested:
                raise
            except Exception as exc:
                publisher.forget()
                retry.failed(exc)  # then scan again after the last saved position


def by_partition(batch: list, encoder: events.RawEncoder, partitions: int,
                 most: int = RECORD_BYTES) -> Iterator[tuple[int, list]]:
    """A scanned batch as groups of documents of one partition, each small enough for one
    record, in ``_id`` order within a partition.

    The partition of a document is the one the producer's default partitioner gives its key
    (:func:`~cdc_migrator.capture.partitions.partition_of`, as Kafka's Java client), where the
    tailer's change events of the same document go: one document's events stay in one
    partition, in order. One record per group instead of one per document is what makes the
    backfill cheap to produce and to consume. A group is cut before it grows past ``most``
    bytes (``RECORD_BYTES``, or less for a topic that takes less). A document larger than
    that is always alone in its group, so a document as large as MongoDB allows never shares a
    record with others.
    """
    groups: dict[int, list] = {}
    sizes: dict[int, int] = {}
    for doc in batch:
        partition = partition_of(encoder.key_of(doc), partitions)
        size = len(doc.raw) if isinstance(doc, RawBSONDocument) \
            else len(bson.encode(doc, codec_options=CODEC_OPTIONS))
        group = groups.get(partition)
        if group and sizes[partition] + size > most:
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


def sharding_of(settings: Settings, migration: Migration) -> ShardedCollection | None:
    """How the migrated collection is sharded (None: it is not, or no mongos); None with a
    warning when ``config`` cannot be read: the ranges are then cut by sample alone."""
    namespace = f"{settings.database_name}.{migration.collection}"
    try:
        return sharded_collection(settings.client, namespace)
    except OperationFailure as exc:
        log.warning("the chunks of %s cannot be read (%s): the backfill's ranges are cut by "
                    "sample alone, each read from every shard; grant read on the config "
                    "database (the clusterMonitor role)", namespace, message_of(exc, 160))
        return None


def _refuse_failed(state: MigrationState) -> None:
    """Refuse a migration that failed (its collection dropped or renamed, its history lost)."""
    if state.failed:
        raise Refused(f"migration {state.name!r} failed, no backfill: {state.failure_reason}")


def _hold_while_paused(store: StateStore, name: str, stop: threading.Event | None,
                       code: CodeHold,
                       holding: Callable[[], AbstractContextManager[Any]] = nullcontext) -> bool:
    """Wait while the migration is paused (or ``code`` is not the code in force); False when
    it was cancelled or we must stop.

    The wait runs inside ``holding()`` (the scan's :meth:`~cdc_migrator.base.scanner.Scan.held`).
    Raises :class:`Refused` when the migration failed (e.g. its collection was dropped).
    """
    go_on = _go_on(store, name, code)
    if go_on is not None:
        return go_on
    with holding():
        while go_on is None:
            if stop is None:
                time.sleep(1.0)
            elif stop.wait(1.0):
                return False
            go_on = _go_on(store, name, code)
    return go_on


def _go_on(store: StateStore, name: str, code: CodeHold) -> bool | None:
    """True to scan on, False when the migration was cancelled or is gone, None while it is
    paused or holds; :class:`Refused` when it failed."""
    state = store.get(name)
    if state is None or state.cancelled:
        return False
    _refuse_failed(state)
    return None if state.paused or code.holds(state) else True


def _code_in_force(code: CodeHold, state: MigrationState | None, store: StateStore,
                   retry: Retrier, stop: threading.Event | None) -> MigrationState | None:
    """Wait while this backfill's code is not the code in force, or another live member
    still applies other code (it has not seen an ``accept`` yet): the state then."""
    told: list[str] | None = None
    while state is not None and (code.holds(state) or code.waits_for(state)):
        waiting = code.waits_for(state)
        if waiting and waiting != told:
            log.info("waiting for %s to hold: they apply other code than the code in force",
                     ", ".join(waiting))
            told = waiting
        if stop is not None and stop.wait(CHECK_INTERVAL):
            raise StopRequested("stopped while holding")
        if stop is None:
            time.sleep(CHECK_INTERVAL)
        state = retry.call(MONGODB, store.get, code.migration)
    return state
