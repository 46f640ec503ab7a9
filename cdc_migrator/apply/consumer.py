"""The transform consumer: one member of a migration's consumer group.

A consumer group per migration shares the topic's partitions among its processes. This module
is the member: its Kafka client, the watchdog that replaces a stuck client, pause and resume,
and rebalances. Each polled batch is applied by the batch applier (:mod:`.batch`: the named
documents migrated from their current state, failures and undecodable records made dead
letters); the member then sends the dead letters and only then commits the offsets. A fence
event is acknowledged in the state once everything before it in its partition is applied and
committed.

A lost connection never skips a batch: each step of the batch in hand (apply, dead letters,
commit) is retried until it succeeds, so offsets are committed only after the writes they
cover (see :mod:`cdc_migrator.base.retry`). An idle consumer asks the broker for an offset every few
seconds, since an empty poll cannot tell a quiet topic from a broker that is gone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pymongo
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import (
    CommitFailedError,
    KafkaError,
    KafkaTimeoutError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    RebalanceInProgressError,
)

from ..base import logs, metrics, topics
from ..base.messages import first_line
from ..base.retry import KAFKA, MONGODB, Retrier
from ..base.settings import Settings
from ..base.threads import Threads, run_until_stopped
from ..base.topology import LagReader, shard_key
from ..core.context import make_context
from ..core.fingerprint import fingerprint
from ..core.holding import CodeHold, member_name
from ..core.state import (
    CONSUMER_FORGOTTEN_AFTER,
    CONSUMER_HEARTBEAT_INTERVAL,
    failure_record,
    last_word,
    stop_record,
)
from ..core.throttle import Bounds, Throttle, worker_name
from ..errors import CdcMigratorError, ClientAbandoned, EventsLost, StopRequested, reason_of
from ..migration import Migration
from .applier import Applier, BatchResult
from .batch import BatchApplier

log = logging.getLogger("cdc_migrator.consumer")

PROBE_INTERVAL = 3.0  # seconds without records before the broker is asked whether it is there


@dataclass
class ConsumeStats:
    records: int = 0
    batches: int = 0
    poison: int = 0
    result: BatchResult = field(default_factory=BatchResult)


class TransformConsumer:
    """One member of a migration's consumer group."""

    #: A Kafka call (poll, commit, offsets) that has not returned for this long, or polls
    #: that have returned nothing for this long, while the member's partitions have lag mean
    #: a stuck client (kafka-python was seen to hang in poll(), and, after a restart under
    #: load, to return from it empty for minutes with three partitions assigned and 12,000
    #: events behind): it is recreated.
    STALL_AFTER = 60.0
    WATCH_INTERVAL = 5.0  # how often the watching thread looks
    SESSION_TIMEOUT_MS = topics.CONSUMER_SESSION_TIMEOUT_MS

    def __init__(self, settings: Settings, migration: Migration, *, max_records: int = 2000,
                 on_batch: Callable[[ConsumeStats], None] | None = None) -> None:
        self.settings = settings
        self.migration = migration
        # Static membership: a member restarted under the same name gets its partitions back
        # without waiting for the crashed one's session to expire.
        self.instance_id = (f"{settings.instance_id}.{migration.name}" if settings.instance_id
                            else None)
        self.topic = settings.topic(migration.collection)
        self.dlq_topic = settings.dlq_topic(migration.collection)
        self.namespace = f"{settings.database_name}.{migration.collection}"
        self.store = settings.store
        self.applier = Applier(migration, settings.db[migration.collection],
                               make_context(settings.db, migration.name,
                                            declared=migration.declared_reads))
        # Holds (its partitions paused) while the code it loaded is not the code in force.
        self.code = CodeHold(self.store, migration.name,
                             fingerprint(migration, settings.schemas), "consumer",
                             member_name("consumer", settings.instance_id))
        self.max_records = max_records
        self.stats = ConsumeStats()
        self.on_batch = on_batch
        self.stopping = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._paused = False
        self._last_pause_check = 0.0
        self._worker: threading.Thread | None = None  # the thread consuming, see _run
        self._waiting_since: float | None = None  # since when the worker waits on Kafka
        self._assigned: frozenset[TopicPartition] = frozenset()  # as of its last poll()
        self._empty_since: float | None = None  # since when its polls have returned nothing
        self._last_poll = 0.0  # when its last poll returned
        self._member_id: str | None = None  # in the group, as of the worker's last poll
        self._reported = 0.0  # when this consumer last reported itself alive
        self._forgotten = False  # whether it removed the reports of members long gone
        self.retry = Retrier(settings, log, self.stopping)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"consume-{migration.name}-write")
        self._dlq = topics.Publisher(settings, self.retry)
        # The group's share of `cdc-migrator throttle`, by the partitions this member holds.
        self.throttle = Throttle(
            self.store, migration.name, member=self.instance_id or worker_name(),
            bounds=Bounds(settings.max_replication_lag, settings.max_write_latency,
                          settings.on_lag_unknown),
            lag=LagReader(settings.client, settings.client_for),
            weight=lambda: float(len(self._assigned)), members=True, stop=self.stopping)
        self.batches = BatchApplier(
            migration, self.applier, self.throttle, retry=self.retry,
            write_retry=Retrier(settings, log, self.stopping),  # the writer thread's
            writer=self._writer)

    def stop(self) -> None:
        """Finish the batch in hand, commit, and return from :meth:`run`."""
        self.stopping.set()

    def run(self) -> ConsumeStats:
        logs.bind(migration=self.migration.name, component="consumer")
        stopped_by: Exception | None = None
        try:
            self._run()
        except StopRequested:
            log.info("stopped during an outage; the batch in hand was not committed and is "
                     "applied again on the next start")
        except Exception as exc:
            stopped_by = exc
            self._record_stop(exc)
            raise
        finally:
            if self._consumer is not None:
                try:
                    self._consumer.close(autocommit=False, timeout_ms=5_000)
                except KafkaError as exc:
                    log.debug("closing the consumer: %s", exc)
            self._writer.shutdown(wait=False)
            self._dlq.close()
            self.code.leave(stopped_by)
        return self.stats

    def _record_stop(self, exc: Exception) -> None:
        """Leave why this consumer stopped in the state, for status, /readyz and metrics."""
        error = logs.mask(str(exc) if isinstance(exc, CdcMigratorError) else first_line(exc))
        record = stop_record("consumer", error, getattr(exc, "document_id", None),
                             reason_of(exc))
        last_word(lambda: self.store.record_stop(self.migration.name, "consumer", record,
                                                 failed=isinstance(exc, EventsLost)), exc)

    def _run(self) -> None:
        """Consume in a worker thread with its own Kafka client, watched from this thread: a
        worker stuck in a Kafka call while its partitions have lag is abandoned and the client
        recreated (see :meth:`_stalled`)."""
        retry = self.retry
        retry.call(KAFKA, topics.ensure_topic, self.settings, self.topic)
        retry.call(KAFKA, topics.ensure_topic, self.settings, self.dlq_topic, partitions=1)
        self.applier.shard_key = retry.call(MONGODB, shard_key, self.settings.client,
                                            self.namespace)
        while not self.stopping.is_set():
            self._consumer = retry.call(KAFKA, self._connect)
            log.info("consuming %s as group %s", self.topic,
                     self.settings.group(self.migration.name))
            client = Threads()
            worker = client.new(f"consume-{self.migration.name}-client", self._work)
            self._worker, self._waiting_since, self._assigned = worker, None, frozenset()
            self._empty_since = None
            worker.start()
            while client.alive() and not self._stalled():
                client.join(timeout=CONSUMER_HEARTBEAT_INTERVAL)
                self._report_alive()
            client.raise_first()
            if not client.alive():
                return
            # Abandoned: it exits if that call ever returns. Its client is closed aside, since
            # closing a stuck client may hang too; the broker drops its membership once its
            # heartbeats stop (session timeout) or it leaves.
            stuck, self._consumer = self._consumer, None
            threading.Thread(target=_close_quietly, args=(stuck,), daemon=True).start()

    def _report_alive(self) -> None:
        """Tell the state this member is alive, every CONSUMER_HEARTBEAT_INTERVAL: a member
        still in the group that stopped telling it (killed without ``--instance-id``) holds its
        partitions until its session times out, and ``status`` says so while cutover waits.
        Best effort, within a second: the watch goes on whatever MongoDB does."""
        member, now = self._member_id, time.monotonic()
        if member is None or now - self._reported < CONSUMER_HEARTBEAT_INTERVAL:
            return
        self._reported = now
        try:
            with pymongo.timeout(1.0):
                gone: list[str] = []
                if not self._forgotten:
                    state = self.store.get(self.migration.name)
                    gone = [m for m, at in (state.consumers if state else {}).items()
                            if time.time() - at > CONSUMER_FORGOTTEN_AFTER]
                self.store.consumer_alive(self.migration.name, member, forget=gone)
                self._forgotten = True
        except Exception as exc:  # noqa: BLE001 - a sign of life is no reason to stop
            log.debug("could not report this consumer alive: %s", exc)

    def _stalled(self) -> bool:
        """True when the worker has waited on one Kafka call for :attr:`STALL_AFTER` seconds
        while the partitions assigned to it have lag (measured with a client of its own): no
        progress where there is work. Reported (log, state: status and /readyz) at once."""
        now, since, empty = time.monotonic(), self._waiting_since, self._empty_since
        waiting = since is not None and now - since >= self.STALL_AFTER
        # Polls still returning, and returning nothing, with partitions assigned. (Not while
        # it is off doing something else, such as riding out a MongoDB outage.)
        starved = (empty is not None and now - empty >= self.STALL_AFTER and bool(self._assigned)
                   and now - self._last_poll < 2 * self.WATCH_INTERVAL + 1)
        if self._paused or not (waiting or starved):
            return False
        if not waiting:
            since = empty
        assert since is not None
        try:
            lag = topics.group_lag(self.settings, self.topic,
                                   self.settings.group(self.migration.name))
        except Exception:  # Kafka itself unreachable: the retries and /readyz tell
            return False
        # Stuck before its first poll() returned, it knows no assignment: the group's lag.
        mine = self._assigned or {TopicPartition(self.topic, p.partition)
                                  for p in lag.partitions}
        behind = sum(p.lag for p in lag.partitions
                     if TopicPartition(self.topic, p.partition) in mine)
        if not behind:
            return False
        idle = now - since
        message = (f"no progress for {idle:.0f}s while its partitions are {behind:,} events "
                   "behind: the Kafka client seems stuck; recreating it")
        log.warning("%s", message)
        try:
            self.store.record_stall(self.migration.name, "consumer",
                                    stop_record("consumer", message, reason="stalled"))
        except Exception as failure:  # MongoDB gone too: the log tells
            log.debug("could not record the stall: %s", failure)
        return True

    def _work(self) -> None:
        logs.bind(migration=self.migration.name, component="consumer")
        try:
            self._consume()
        except ClientAbandoned:
            log.info("the abandoned Kafka client's call returned; what it brought is left to "
                     "the new client")

    def _consume(self) -> None:
        retry = self.retry
        last_records = time.monotonic()
        while not self.stopping.is_set():
            if retry.call(MONGODB, self._check_paused):
                continue
            try:
                polled = self._poll(200)
            except EventsLost:
                raise
            except Exception as exc:  # e.g. the group coordinator lost while (re)joining
                retry.failed(exc)
                continue
            if polled:
                self._process(polled)
                last_records = time.monotonic()
            elif time.monotonic() - last_records >= PROBE_INTERVAL:
                with self._waiting_on_kafka():
                    retry.call(KAFKA, self.kafka.end_offsets,
                               [TopicPartition(self.topic, 0)], timeout_ms=5_000)
                last_records = time.monotonic()

    @property
    def kafka(self) -> KafkaConsumer:
        """This member's Kafka client, connected by :meth:`run`."""
        if self._consumer is None:
            raise RuntimeError("the consumer is not connected: call run()")
        return self._consumer

    def _connect(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            group_id=self.settings.group(self.migration.name),
            # No automatic reset: a partition without a committed offset starts at its
            # first record (see _poll), one whose committed offset is gone stops the consumer.
            enable_auto_commit=False, auto_offset_reset="none",
            # Small fetches (compressed) keep memory flat whatever the backlog: 256 KiB of
            # one partition holds a backfill record of up to 512 KiB of documents compressed,
            # or hundreds of change events; a single larger record still comes whole.
            max_poll_records=self.max_records, fetch_max_bytes=2 << 20,
            max_partition_fetch_bytes=256 << 10, session_timeout_ms=self.SESSION_TIMEOUT_MS,
            max_poll_interval_ms=600_000, group_instance_id=self.instance_id,
            **topics.client_options(self.settings))
        try:
            # Subscribing before the client knows the topic's partitions makes the first
            # assignment empty and the member rejoin at once; under load, kafka-python 3.0
            # sometimes never returns from poll() after that rejoin. Learn them first.
            deadline = time.monotonic() + 30
            while not consumer.partitions_for_topic(self.topic):
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(f"no partitions known for {self.topic}")
                time.sleep(0.1)
            consumer.subscribe([self.topic])
        except BaseException:
            consumer.close(autocommit=False, timeout_ms=1_000)
            raise
        return consumer

    def _check_paused(self) -> bool:
        now = time.monotonic()
        if now - self._last_pause_check >= 1.0:
            self._last_pause_check = now
            state = self.store.get(self.migration.name)
            # Reverted: the reverse run's consumers put the old shape back; applying this
            # migration beside them would undo their work. Holding: its code is not the code
            # in force (checked between batches, so a batch is applied by one code).
            holding = self.code.holds(state)
            paused = holding or bool(state and (state.paused or state.cancelled
                                                or state.reverted))
            if paused != self._paused:
                assignment = list(self.kafka.assignment())
                if paused:
                    self.kafka.pause(*assignment)
                else:
                    self.kafka.resume(*self.kafka.paused())
                self._paused, self._empty_since = paused, None  # a pause's quiet is no stall
                log.info("paused: holding the position" if paused else "resumed")
            elif paused:
                # Each check while paused (at -v): the sign that the consumer is alive and
                # still holding, which the tests bound a pause's window with.
                log.debug("still paused")
        if self._paused:
            self._poll_paused(200)  # keeps the membership
            return True
        return False

    def _process(self, polled: dict[TopicPartition, list[Any]]) -> None:
        started = time.monotonic()
        batch = self.batches.apply(polled)
        # Each step is retried until it succeeds: the offsets are committed only after it.
        if batch.dead:
            self._send_dead_letters(batch.dead)
        committed = self._commit(batch.offsets, batch.firsts)
        result = batch.result
        self.stats.records += batch.count
        self.stats.batches += 1
        self.stats.poison += batch.poison
        self.stats.result.add(result)
        # A fence counts as passed only once the offsets before it are committed; a committed
        # batch also ends any stop or stall recorded before.
        self.retry.call(MONGODB, self.store.record_applied, self.migration.name,
                        counts={**result.counts(), "consumed": batch.count},
                        failures=[failure_record(f.id, f.error, "consume")
                                  for f in result.failures],
                        fences=[(fid, p) for p, fid in batch.fences] if committed else [],
                        clear_stop=committed)
        metrics.record_consumed(self.migration.name, batch.count, result,
                                time.monotonic() - started,
                                batch.change_times if committed else ())
        log.debug("batch of %d events applied and committed: %s", batch.count, result.counts())
        if self.on_batch:
            self.on_batch(self.stats)

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata],
                firsts: dict[TopicPartition, int]) -> bool:
        """Commit the batch's offsets; False when the group is rebalancing its partitions."""
        try:
            with self._waiting_on_kafka():
                self.retry.call(KAFKA, self.kafka.commit, offsets, timeout_ms=10_000)
            return True
        except (CommitFailedError, RebalanceInProgressError):
            # The group is being rebalanced (a member came or went, or this one was away too
            # long): nothing is committed. Whoever owns the partitions next starts from the
            # last committed offsets; those staying here are read again from the batch's start.
            self._rewind(firsts)
            self._await_stable()
            log.info("the group rebalanced during a batch: its offsets were not committed and "
                     "its events will be applied again")
            return False

    def _await_stable(self, timeout: float = 60.0) -> None:
        """After a refused commit: let the rebalance complete before taking records again.

        kafka-python 3.0 completes a rebalance inside poll(), but a poll that has fetched
        records hands them out before the rebalance is complete; a batch taken then cannot be
        committed, and processing it again and again can keep the rebalance from ever
        completing. So the partitions are paused (poll returns nothing) until the member is
        stable again, then resumed: all it has then, except those paused before (by `pause`).
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        stable = getattr(coordinator, "generation_if_stable", None)
        if stable is None:  # not kafka-python 3: nothing to wait on
            return
        paused_before = set(self.kafka.paused())
        self.kafka.pause(*self.kafka.assignment())
        try:
            deadline = time.monotonic() + timeout
            while stable() is None and time.monotonic() < deadline \
                    and not self.stopping.is_set():
                self._poll_paused(500)
        finally:
            if not self._paused:
                self.kafka.resume(*(set(self.kafka.paused()) - paused_before))

    def _poll_paused(self, timeout_ms: int) -> None:
        """Poll with every partition paused, taking nothing: group membership and rebalances
        go on. Partitions assigned meanwhile are paused too; what they returned is read again
        once they are resumed."""
        polled = self._poll(timeout_ms)
        self.kafka.pause(*self.kafka.assignment())
        if polled:
            self._rewind({tp: records[0].offset for tp, records in polled.items() if records})

    def _poll(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        """One poll. A partition the group never committed starts at its first record; one
        whose committed offset no longer exists raises :class:`EventsLost`: the records between
        were deleted (retention, delete-records) before they were consumed, and jumping over
        them would leave their documents unmigrated without a word."""
        consumer = self.kafka
        try:
            with self._waiting_on_kafka():
                # Throttled: a poll of about a second's worth of the member's share, so
                # that a slow rate does not keep a batch uncommitted for long.
                polled = consumer.poll(timeout_ms=timeout_ms,
                                       max_records=self.throttle.chunk(self.max_records))
            self._assigned = frozenset(consumer.assignment())
            membership = getattr(consumer, "group_metadata", None)  # kafka-python 3
            self._member_id = (membership().member_id or None) if membership else None
            self._last_poll = time.monotonic()
            if polled:
                self._empty_since = None
            elif self._empty_since is None:
                self._empty_since = self._last_poll
            return polled
        except NoOffsetForPartitionError as exc:
            fresh = exc.args[0] if exc.args and isinstance(exc.args[0], (set, frozenset)) \
                else {tp for tp in self.kafka.assignment()
                      if self.kafka.committed(tp) is None}
            self.kafka.seek_to_beginning(*fresh)
            return {}
        except OffsetOutOfRangeError as exc:
            offsets = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
            raise self._events_lost(offsets) from None

    @contextlib.contextmanager
    def _waiting_on_kafka(self) -> Iterator[None]:
        """Around each call of the worker that waits on its Kafka client: how long it has
        waited is what :meth:`_stalled` watches; a worker replaced meanwhile stops there."""
        self._waiting_since = time.monotonic()
        try:
            yield
        finally:
            self._waiting_since = None
            if threading.current_thread() is not self._worker:
                raise ClientAbandoned  # replaced while stuck here: touch nothing any more

    def _events_lost(self, offsets: dict[TopicPartition, int]) -> EventsLost:
        """The stop, naming every partition of the member that lost events (the client
        reports one at a time)."""
        tps = sorted(set(offsets) | set(self.kafka.assignment()))
        starts = self.retry.call(KAFKA, self.kafka.beginning_offsets, tps, timeout_ms=10_000)
        ends = self.retry.call(KAFKA, self.kafka.end_offsets, tps, timeout_ms=10_000)
        where = []
        for tp in tps:
            offset = offsets.get(tp)
            if offset is None:
                offset = self.retry.call(KAFKA, self.kafka.committed, tp)
                if offset is None or starts[tp] <= offset <= ends[tp]:
                    continue
            if offset < starts[tp]:
                where.append(f"partition {tp.partition} of {tp.topic}: the group's next event "
                             f"(offset {offset}) was deleted before it was consumed (the "
                             f"partition now starts at offset {starts[tp]})")
            else:
                where.append(f"partition {tp.partition} of {tp.topic}: the group's next event "
                             f"(offset {offset}) is past the partition's end ({ends[tp]}): was "
                             "the topic deleted and created again?")
        name = self.migration.name
        return EventsLost(
            "; ".join(where or ["events were deleted before they were consumed"])
            + f". The documents they named may be unmigrated; nothing was skipped. Fix: stop "
            f"tail and consume, `cdc-migrator reset {name}`, then run the pipeline again (it "
            "backfills again); keep the topic's retention.ms and retention.bytes at -1")

    def _rewind(self, firsts: dict[TopicPartition, int]) -> None:
        """Read these partitions again from these offsets (those still assigned here)."""
        for tp, offset in firsts.items():
            try:
                self.kafka.seek(tp, offset)
            except (ValueError, AssertionError, KafkaError):
                pass  # no longer assigned here

    def _send_dead_letters(self, dead: list[tuple[str, bytes | None, bytes]]) -> None:
        for _, key, value in dead:
            self._dlq.send(self.dlq_topic, value, key=key)
        sent = self._dlq.flush()
        self.retry.call(MONGODB, self.store.add_dead_letters, self.migration.name, sent)


def _close_quietly(consumer: KafkaConsumer) -> None:
    try:
        consumer.close(autocommit=False, timeout_ms=5_000)
    except Exception as exc:  # a stuck client may fail to close: it is abandoned anyway
        log.debug("closing the abandoned consumer: %s", exc)


def consume_until_stopped(settings: Settings, migrations: list[Migration],
                          stop: threading.Event) -> list[ConsumeStats]:
    """Run one group member per migration in threads until ``stop`` is set."""
    consumers = [TransformConsumer(settings, m) for m in migrations]

    def failed(c: TransformConsumer, exc: BaseException) -> None:
        if not isinstance(exc, CdcMigratorError):  # an expected error is one line, by the caller
            log.error("consumer of %s failed: %s", c.migration.name, exc)
            log.debug("%s", traceback.format_exc())

    run_until_stopped(consumers, stop, name=lambda c: f"consume-{c.migration.name}",
                      join_timeout=60, on_error=failed)
    return [c.stats for c in consumers]
