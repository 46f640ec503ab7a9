"""The change-stream tailer: every write to the collection becomes an event on its topic.

Capture is *armed* before the backfill reads anything: :func:`arm` opens the change stream and
records where it starts (its ``postBatchResumeToken`` and that token's cluster time, see
:mod:`cdc_migrator.base.history`), and the tailer resumes after that token (later, after its
saved resume token). The resume token is saved only after the broker acknowledged every event
before it, so a crash replays events (at-least-once) and never skips one.

The stream is database-wide, filtered to the migrated collection and the fence collection:
a fence written by ``cutover`` travels the same ordered stream as the application's writes,
and the tailer forwards it into every partition of the topic. The collections the migration
declares in ``depends_on`` are in the same stream: each of their changes becomes dependency
events for the documents it affects (see :mod:`.dependencies`).

A lost connection to MongoDB re-opens the stream from the saved resume token; a broker that
does not acknowledge is waited for with the batch in hand (see :mod:`cdc_migrator.base.retry`).

A drop or rename of the migrated collection fails the migration (phase ``failed``, with the
reason), and an invalidated stream (its database dropped) stops the tailer: both with one line
and exit 1, never a loop on a closed stream. Resume history that is gone stops the tailer too,
or, with ``--on-history-lost rebackfill``, is handed to its :class:`~.recovery.Recovery`,
which re-arms capture from now and backfills again.

Each kind of event has a method of its own (a fence, a change of a dependency, a write of a
migrated document, an idle poll); a :class:`Checkpoint` decides when the position is saved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from ..base import history, logs, metrics, topics
from ..base.messages import first_line, message_of
from ..base.naming import FENCE_COLLECTION
from ..base.retry import KAFKA, MONGODB, Retrier
from ..base.settings import Settings
from ..base.threads import run_until_stopped
from ..base.topology import splits_large_events
from ..core import deadletters as deadletter
from ..core import events
from ..core.context import make_context
from ..core.fingerprint import fingerprint
from ..core.holding import CHECK_INTERVAL, CodeHold
from ..core.patch import decide
from ..core.state import HEARTBEAT_INTERVAL, MigrationState, last_word, stop_record
from ..errors import (
    CaptureStopped,
    CdcMigratorError,
    HistoryLost,
    Refused,
    StopRequested,
    reason_of,
)
from ..migration import Migration, rename_filter_fields
from . import dependencies
from .fragments import SPLIT_STAGE, Fragments
from .partitions import RECORD_BYTES, partition_of
from .recovery import Recovery

log = logging.getLogger("cdc_migrator.tailer")

# Server errors meaning the saved resume point is no longer in the server's history.
HISTORY_LOST_CODES = {136, 280, 286}
# The last stage of the tailer's stream: only what the tailer uses. An update's description
# repeats the changed values beside the looked-up document, which can take the event past
# MongoDB's limit for one event (16 MiB plus 16 KiB).
UNUSED_FIELDS = {"$unset": ["updateDescription"]}
# BSONObjectTooLarge: the server could not return a change event larger than its limit; and,
# split by $changeStreamSplitLargeEvent, a field of one too large for a fragment of its own.
EVENT_TOO_LARGE = 10334
FRAGMENT_TOO_LARGE = 7182500
TOO_LARGE = {EVENT_TOO_LARGE, FRAGMENT_TOO_LARGE}
# After an event too large, at most this many events are read one per batch to find it.
NARROW_EVENTS = 1000
# While events trickle in, a getMore returns as soon as one is there: one round trip, and one
# producer request, per change. After a batch smaller than a whole one (STREAM_BATCH events:
# not a backlog) the next getMore waits until COALESCE_WINDOW seconds after that batch came, so
# it brings the changes of the window together; no event waits longer than the window for it
# (latency target: 100 ms), and at any rate the stream still delivers up to a whole batch a
# window.
COALESCE_WINDOW = 0.02
STREAM_BATCH = 1000
_FULL, _NARROW, _KEY_ONLY = "full", "narrow", "key only"


def arm(settings: Settings, migration: Migration) -> MigrationState:
    """Fix the point from which changes are captured (idempotent); create the topic. The
    code armed is the code in force unless one is recorded already."""
    store = settings.store
    state = store.ensure(migration.name, migration.collection)
    if state.cancelled:
        raise Refused(f"migration {migration.name!r} was cancelled; `reset` it to start again")
    topics.ensure_topic(settings, settings.topic(migration.collection))
    if not state.armed:
        # Where the stream itself starts: every write after it is an event, and the scan
        # waits for the writes before it to commit (history.wait_committed).
        token, armed_at = history.stream_start(settings.db, stream_pipeline(migration))
        # After the armed point, before anything may scan: a change after its read finds
        # the value it overwrites in the reference map.
        dependencies.seed(settings.db, migration)
        store.arm(migration.name, armed_at, token, fingerprint(migration, settings.schemas))
        state = store.get(migration.name) or state
    elif migration.depends_on:
        dependencies.seed(settings.db, migration)  # armed by a version without it: late
    if state.code.fingerprint is None:  # armed by a version that recorded no code
        store.adopt_code(migration.name, fingerprint(migration, settings.schemas))
        state = store.get(migration.name) or state
    return state


def image_condition(query: Mapping[str, Any]) -> dict[str, Any] | None:
    """A migration's filter as a condition on a change event's ``fullDocument`` (field paths
    get the ``fullDocument.`` prefix); None when it cannot be moved into the event that simply
    (see :func:`~cdc_migrator.migration.rename_filter_fields`)."""
    return rename_filter_fields(query, lambda path: f"fullDocument.{path}")


def stream_pipeline(migration: Migration) -> list[dict[str, Any]]:
    """The change stream's stages: the collection and the fence collection; and, when the
    migration has a filter, only those events whose document is inside it.

    The filter runs in the server, on the document as the event carries it (looked up for an
    update): an event of a document outside the filter never reaches the tailer, the topic or
    the consumer (which would not touch it: its writes are guarded by the filter too). This
    drops, without a look at it in Python, the echo of every consumer write that takes the
    document out of the filter, as an "add a field where missing" filter does. Deletes, events
    without a document and fences always pass. The events leave out ``updateDescription``,
    except, for a migration with a reference in ``depends_on``, the reference fields' new values
    (see :mod:`.dependencies`).
    """
    others = list(migration.depends_on)  # the collections it depends on: followed too
    stages: list[dict[str, Any]] = [{"$match": {"$or": [
        {"ns.coll": {"$in": [migration.collection, *others, FENCE_COLLECTION]}},
        # A collection renamed onto the migrated one, and the end of the database's stream.
        {"to.coll": {"$in": [migration.collection, *others]} if others
         else migration.collection},
        {"operationType": {"$in": ["dropDatabase", "invalidate"]}},
    ]}}]
    image = image_condition(migration.filter) if migration.filter else None
    if image:
        stages.append({"$match": {"$or": [
            {"ns.coll": {"$in": [FENCE_COLLECTION, *others]} if others else FENCE_COLLECTION},
            {"operationType": {"$nin": ["insert", "update", "replace"]}},
            {"fullDocument": None},
            image,
        ]}})
    reference_fields = sorted({d.field for d in migration.depends_on.values() if d.field})
    if reference_fields:
        # An update of a dependency tells the reference's new value in its description; of
        # the description only that is kept (the rest can be as large as the document).
        stages.append({"$project": {
            **{name: 1 for name in ("operationType", "clusterTime", "ns", "to", "documentKey",
                                    "fullDocument", "fullDocumentBeforeChange")},
            "updateDescription.removedFields": 1,
            **{f"updateDescription.updatedFields.{f}": 1 for f in reference_fields}}})
    else:
        stages.append(UNUSED_FIELDS)
    return stages


class Checkpoint:
    """Decides when the tailer saves its position, and holds what the save records.

    With events in hand, the save comes soon after the broker acknowledged them: after
    ``flush_every`` events or ``flush_interval`` seconds. Idle, only the slow heartbeat saves
    (``heartbeat_interval``), however often the server's position moves. The first check
    after the start saves at once: a heartbeat at start.
    """

    def __init__(self, flush_every: int, flush_interval: float,
                 heartbeat_interval: float) -> None:
        self.flush_every, self.flush_interval = flush_every, flush_interval
        self.heartbeat_interval = heartbeat_interval
        self.unflushed = 0  # events sent, not acknowledged by a flush yet
        self.skipped = 0  # events dropped since the last save (the document needs nothing)
        self.dependency = 0  # dependency events produced since the last save with a token
        self.token: Any = None  # the resume token the next save records
        self._saved_at = float("-inf")

    def due(self) -> bool:
        since = time.monotonic() - self._saved_at
        return self.unflushed >= self.flush_every \
            or (self.unflushed > 0 and since >= self.flush_interval) \
            or (self.token is not None and since >= self.heartbeat_interval)

    def saved(self) -> None:
        self.unflushed = self.skipped = 0
        self._saved_at = time.monotonic()


class RoundTrips:
    """Spaces the stream's round trips while events trickle in (see :data:`COALESCE_WINDOW`).

    A whole batch of ``enough`` events (a backlog), or an empty one (the server waited
    already), lets the next getMore go at once; after a smaller batch it waits until ``window``
    seconds after that batch came.
    """

    def __init__(self, window: float, enough: int) -> None:
        self.window, self.enough = window, enough
        self._after = float("-inf")  # no getMore before this (monotonic seconds)

    def returned(self, now: float, events: int) -> None:
        """A getMore returned ``events`` events at ``now``."""
        self._after = now + self.window if 0 < events < self.enough else float("-inf")

    def pause(self, now: float) -> float:
        """Seconds to wait at ``now`` before the next getMore (never more than the window)."""
        return min(self.window, max(0.0, self._after - now))


class ChangeBatches:
    """The document change events read since the last round trip to MongoDB, by partition,
    until they go out as one record per partition (:meth:`Tailer._emit`).

    One record per event cost the tailer more than anything else per change: kafka-python's
    ``send`` and its record batch (tens of µs each, in Python), then the broker's and the
    consumer's work per record. A partition's events of a round trip go as one change batch
    instead (see :attr:`~cdc_migrator.core.events.Envelope.changes`), in stream order; a
    single event goes alone, as before. A group is cut before it grows past ``most`` bytes
    (:data:`~.partitions.RECORD_BYTES`, or less for a topic that takes less:
    :func:`~cdc_migrator.base.topics.group_bytes`).
    """

    def __init__(self, partitions: int, most: int = RECORD_BYTES) -> None:
        self.partitions, self.most = partitions, most
        self.groups: dict[int, list[tuple[bytes, bytes, Any]]] = {}
        self._sizes: dict[int, int] = {}

    def add(self, key: bytes, value: bytes, change: Any) -> list[tuple[bytes, bytes, Any]] | None:
        """An event's record ``key`` and ``value``; the group of its partition to send first
        when this one would make it too large, else None."""
        partition = partition_of(key, self.partitions)
        group = self.groups.get(partition)
        full = None
        if group and self._sizes[partition] + len(value) > self.most:
            full, group = group, None
        if group is None:
            self.groups[partition] = group = []
            self._sizes[partition] = 0
        group.append((key, value, change))
        self._sizes[partition] += len(value)
        return full

    def take(self) -> list[tuple[int, list[tuple[bytes, bytes, Any]]]]:
        """Every group, by partition; none is kept."""
        groups, self.groups, self._sizes = self.groups, {}, {}
        return list(groups.items())


class Tailer:
    """Follows one migration's collection until :meth:`stop` is called."""

    def __init__(self, settings: Settings, migration: Migration, *,
                 flush_every: int = 2000, flush_interval: float = 0.2,
                 skip_migrated: bool = True) -> None:
        self.settings = settings
        self.migration = migration
        # What to do when the history is gone: the setting (--on-history-lost).
        self.on_history_lost = settings.on_history_lost
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self._position_time: float | None = None
        # Drop events whose document image the transform leaves as it is (see _needs_nothing).
        self.skip_migrated = skip_migrated
        self.skipped = 0
        self._dry_ctx = make_context(settings.db, migration.name, dry_run=True)
        self._dependencies = dependencies.DependencyFollower(settings.db, migration) \
            if migration.depends_on else None
        self.topic = settings.topic(migration.collection)
        self.store = settings.store
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self.stopping = threading.Event()
        self.recovery = Recovery(settings, migration, self.stopping, stream_pipeline(migration))
        self.fragments = Fragments(settings.db.codec_options.with_options(
            document_class=RawBSONDocument))
        self.round_trips = RoundTrips(COALESCE_WINDOW, STREAM_BATCH)
        # The events of the round trip in hand, not sent yet (set for each run of _loop).
        self._batches = ChangeBatches(1)
        self._encoder = events.RawEncoder(migration.name, settings.database_name,
                                          migration.collection)
        self._splits = False  # the server takes $changeStreamSplitLargeEvent (see _follow)
        # Holds while the code it loaded is not the code in force (core/holding.py).
        self.code = CodeHold(self.store, migration.name,
                             fingerprint(migration, settings.schemas), "tailer")
        self._code_checked = 0.0
        self.produced = 0
        self.last_event_time: Any = None
        #: Set when the tailer has read everything up to a point asked with :meth:`catch_up_to`:
        #: an event at or after it, or an empty batch whose resume token is there. An empty
        #: batch alone proves nothing: while a write before the point is not committed (an
        #: oplog hole), the stream returns nothing and its token stays before that write.
        self.caught_up = threading.Event()
        self._catch_up_to: Any = None
        #: The cluster time the tailer has read up to (its last event's, or its last empty
        #: batch's resume token's).
        self.position: Any = None

    def stop(self) -> None:
        self.stopping.set()

    def catch_up_to(self, cluster_time: Any) -> None:
        """Clear :attr:`caught_up`, and set it again once the tailer has read the stream up to
        ``cluster_time`` (a ``Timestamp``, e.g. where a stream opened now starts)."""
        self._catch_up_to = cluster_time
        self.caught_up.clear()
        self._reached(self.position)

    def _reached(self, cluster_time: Any) -> None:
        """The tailer has read the stream up to ``cluster_time``."""
        if cluster_time is None:
            return
        self.position = cluster_time
        target = self._catch_up_to
        if target is not None and cluster_time >= target:
            self.caught_up.set()

    def run(self) -> None:
        """Tail until stopped; raises HistoryLost when the resume point is gone.

        A lost connection re-opens the stream from the saved resume token (the events after
        it are produced again: at-least-once); an outage longer than the retry deadline raises
        ServiceUnavailable.
        """
        logs.bind(migration=self.migration.name, component="tailer")
        self.retry = Retrier(self.settings, log, self.stopping)
        self.publisher = topics.Publisher(self.settings, self.retry)
        stopped_by: Exception | None = None
        try:
            self._run()
        except StopRequested:
            log.info("stopped during an outage; events after the saved resume token are "
                     "produced again on the next start")
        except Exception as exc:  # why it stopped, for status, /readyz and the metrics
            stopped_by = exc
            error = logs.mask(str(exc) if isinstance(exc, CdcMigratorError) else first_line(exc))
            record = stop_record("tailer", error, reason=reason_of(exc))
            last_word(lambda: self.store.record_stop(self.migration.name, "tailer", record), exc)
            raise
        finally:
            self.publisher.close()
            self.recovery.join(timeout=60)
            self.code.leave(stopped_by)
            # Not running any more, whatever the last heartbeat says (pipeline.catch_up).
            last_word(lambda: self.store.tailer_stopped(self.migration.name), stopped_by)

    def _run(self) -> None:
        if self.on_history_lost == "rebackfill":
            self.recovery.resume(self.retry)
        while not self.stopping.is_set():
            try:
                self._follow()
            except HistoryLost as lost:
                if self.on_history_lost != "rebackfill":
                    raise
                self.publisher.forget()
                self.recovery.rearm(str(lost), self.retry)
            except (CaptureStopped, StopRequested, Refused):
                raise
            except Exception as exc:
                self.publisher.forget()
                self.retry.failed(exc)

    def _follow(self) -> None:
        """Open the change stream from the saved point and follow it until stopped.

        An event larger than MongoDB returns (its limit for one event is 16 MiB plus 16 KiB)
        comes in fragments where the server has ``$changeStreamSplitLargeEvent`` (see
        :mod:`.fragments`), put together again here: its pre-image, which a change of a
        ``depends_on`` collection needs, is kept. Where the server has not (or a field alone is
        too large for a fragment), the ``getMore`` fails with 10334 BSONObjectTooLarge, and so
        does every resume from before the event: the event is found and forwarded by its key
        alone. The stream is opened again from the saved point taking one event per batch, up
        to the one that fails; that event is read once more without its document and forwarded
        as "this document may need migrating" (the consumer reads the document), and the
        stream goes on as before.
        """
        mode = _FULL
        self._splits = self.retry.call(MONGODB, splits_large_events, self.settings.client)
        while not self.stopping.is_set():
            try:
                self._stream(mode)
            except OperationFailure as exc:
                if exc.code not in TOO_LARGE or mode == _KEY_ONLY:
                    raise
                if mode == _FULL:
                    log.warning("a change event is larger than MongoDB returns (%s): finding "
                                "it one event at a time, to forward it without its document",
                                message_of(exc))
                mode = _KEY_ONLY if mode == _NARROW else _NARROW
                continue
            mode = _FULL

    def _stream(self, mode: str) -> None:
        """Follow the stream in ``mode`` from the saved point: until stopped (``_FULL``), for
        at most ``NARROW_EVENTS`` events taken one per batch (``_NARROW``), or for one event
        without its document (``_KEY_ONLY``). Before it opens the stream, it holds while its
        code is not the code in force."""
        state = self._code_in_force(arm(self.settings, self.migration))
        if state is None:
            return
        tail = state.tail
        db = self.settings.db
        options = self._options(tail, mode)
        pipeline = stream_pipeline(self.migration)
        if mode == _KEY_ONLY:
            pre_images = self._dependencies is not None and self._dependencies.wants_pre_images
            pipeline.append({"$unset": ["fullDocument", "fullDocumentBeforeChange"] if pre_images
                             else ["fullDocument"]})
        if self._splits:
            pipeline.append(SPLIT_STAGE)  # the last stage, as MongoDB requires
        self.fragments.forget()  # read again from the saved point: the event comes whole
        partitions = topics.ensure_topic(self.settings, self.topic)
        self.retry.recovered(KAFKA)
        # Events arrive as raw BSON: the full document goes on the topic as the server sent it.
        raw_db = db.with_options(
            codec_options=db.codec_options.with_options(document_class=RawBSONDocument))
        try:
            with raw_db.watch(pipeline, **options) as stream:
                self.retry.recovered(MONGODB)
                if mode == _FULL:
                    log.info("tailing %s into %s from %s", self.migration.collection,
                             self.topic, "the saved resume token" if tail.resume_token
                             else f"the armed point {tail.armed_at}")
                self._loop(stream, partitions, limit={_FULL: None, _NARROW: NARROW_EVENTS,
                                                      _KEY_ONLY: 1}[mode],
                           key_only=mode == _KEY_ONLY)
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                raise self._history_lost(exc) from None
            raise

    def _code_in_force(self, state: MigrationState) -> MigrationState | None:
        """Wait while this tailer's code is not the code in force (the stream stays closed,
        the saved resume token keeps the place); the state then, or None when stopped."""
        while self.code.holds(state):
            if self.stopping.wait(CHECK_INTERVAL):
                return None
            state = self.retry.call(MONGODB, self.store.get, self.migration.name) or state
        return state

    def _code_changed(self) -> bool:
        """Whether the code in force is no longer this tailer's (looked at every
        ``CHECK_INTERVAL`` seconds): the stream is then left, its events so far saved."""
        if time.monotonic() - self._code_checked < CHECK_INTERVAL:
            return False
        self._code_checked = time.monotonic()
        return self.code.holds(self.retry.call(MONGODB, self.store.get, self.migration.name))

    def _options(self, tail: Any, mode: str) -> dict[str, Any]:
        """The options of the change stream: from the saved resume token, or else from the
        armed point."""
        options: dict[str, Any] = {"full_document": "updateLookup",
                                   "batch_size": STREAM_BATCH if mode == _FULL else 1,
                                   "max_await_time_ms": 200}
        if self._dependencies is not None:
            self._dependencies.forget_pending()  # the events in hand are read again
            if self._dependencies.wants_pre_images:
                options["full_document_before_change"] = "whenAvailable"
        if tail.resume_token:
            options["resume_after"] = tail.resume_token
        elif tail.armed_token:
            options["resume_after"] = tail.armed_token
        else:  # armed by a version that took ping's operationTime
            options["start_at_operation_time"] = tail.armed_at
        return options

    def _history_lost(self, exc: OperationFailure) -> HistoryLost:
        """The stream cannot resume from the saved point: the recovery's cause, or (without
        ``rebackfill``) the migration failed, with the way back."""
        cause = (f"the change stream of {self.migration.collection} can no longer "
                 f"resume from the saved point ({exc.code}: {message_of(exc, 160)})")
        if self.on_history_lost == "rebackfill":
            return HistoryLost(cause)
        message = (f"{cause}; a new backfill is needed: `cdc-migrator reset "
                   f"{self.migration.name}` then run it again (or let `tail`/`run` do "
                   "it: --on-history-lost rebackfill)")
        self.retry.call(MONGODB, self.store.fail, self.migration.name, cause, message)
        return HistoryLost(message)

    def _stopped_by(self, change: Any) -> CaptureStopped | None:
        """The error that ends capture at this event, or None when the event does not."""
        op = change["operationType"]
        ns = change.get("ns") or {}
        to = change.get("to") or {}
        collection = self.migration.collection
        if op == "drop" and ns.get("coll") == collection:
            reason = f"collection {collection!r} was dropped"
        elif op == "rename" and ns.get("coll") == collection:
            reason = f"collection {collection!r} was renamed to {to.get('coll')!r}"
        elif op == "rename" and to.get("coll") == collection:
            reason = (f"collection {collection!r} was replaced: {ns.get('coll')!r} was renamed "
                      "onto it")
        elif op in ("drop", "rename") and ns.get("coll") in self.migration.depends_on:
            reason = (f"collection {ns.get('coll')!r}, which {self.migration.name} depends on, "
                      f"was {'dropped' if op == 'drop' else 'renamed'}: the documents it "
                      "affected cannot be named any more")
        elif op == "dropDatabase":
            return CaptureStopped(
                f"database {self.settings.database_name!r} was dropped: the change stream of "
                f"{collection} ended, and the state of {self.migration.name} went with it; "
                "start the migration again when the data is back")
        elif op == "invalidate":
            return self._invalidated()
        else:
            return None
        at = change.get("clusterTime")
        message = (f"{reason} (at {at}): migration {self.migration.name} failed, its documents "
                   f"cannot be followed any more; `cdc-migrator reset {self.migration.name}` "
                   "and run it again once the collection is what it should be")
        self.retry.call(MONGODB, self.store.fail, self.migration.name, reason, message,
                        cluster_time=at)
        return CaptureStopped(message)

    def _invalidated(self) -> CaptureStopped:
        return CaptureStopped(
            f"the change stream of {self.migration.collection} was invalidated (its database "
            f"{self.settings.database_name!r} was dropped, or the deployment closed it): "
            f"capture of {self.migration.name} stopped; start the migration again")

    def _loop(self, stream: Any, partitions: int, limit: int | None = None,
              key_only: bool = False) -> None:
        """Produce the stream's events until stopped or the code in force is no longer this
        tailer's; with a ``limit``, until that many events were taken or none is left for now.

        Before an error of the stream (an event too large) is raised, the events before it
        are produced and the resume token after them saved. With ``key_only`` the events come
        without their documents; a fence then ends the loop untaken (its id is in its
        document), to be read again with it.
        """
        checkpoint = Checkpoint(self.flush_every, self.flush_interval, self.heartbeat_interval)
        # The narrow modes take one event per batch: a whole batch, no wait between them.
        self.round_trips.enough = STREAM_BATCH if limit is None else 1
        encoder = self._encoder
        # What a failed loop held is read again.
        self._batches = ChangeBatches(partitions, topics.group_bytes(self.topic, RECORD_BYTES))
        taken = 0
        while not self.stopping.is_set() and (limit is None or taken < limit):
            self.recovery.check()
            change = self._next(stream, checkpoint)
            if change is None:
                self._on_idle(stream, checkpoint)
                if limit is not None:
                    break  # nothing more now: what was sought has passed
            elif key_only and _collection_of(change) == FENCE_COLLECTION:
                break
            else:
                self._on_change(change, checkpoint, encoder, partitions)
                taken += 1
            if checkpoint.due():
                self._save(checkpoint)
            if self._code_changed():
                break
        self._save(checkpoint)

    def _next(self, stream: Any, checkpoint: Checkpoint) -> Any:
        """The stream's next whole event (the fragments of a split one put together), or None
        when there is none now. The events before an error of the stream are saved first."""
        try:
            while True:
                change = self._try_next(stream)
                if change is None:
                    return None
                whole = self.fragments.add(change)
                if whole is not None:
                    return whole
        except OperationFailure as exc:
            if exc.code in TOO_LARGE:
                self._save(checkpoint)
            raise

    def _try_next(self, stream: Any) -> Any:
        """``stream.try_next()``; when that asks the server (nothing buffered), first the
        coalescing wait of :class:`RoundTrips`, and after it the size of the batch noted."""
        buffered = _buffered(stream)
        if buffered is not None and buffered > 0:
            return stream.try_next()
        # A round trip next (or, where pymongo does not tell, maybe): the events read so far
        # go out first, so none waits for it.
        self._emit()
        if buffered is None:
            return stream.try_next()
        pause = self.round_trips.pause(time.monotonic())
        if pause > 0 and self.stopping.wait(pause):
            return None
        change = stream.try_next()
        self.round_trips.returned(time.monotonic(), 0 if change is None
                                  else 1 + (_buffered(stream) or 0))
        return change

    def _on_change(self, change: Any, checkpoint: Checkpoint, encoder: events.RawEncoder,
                   partitions: int) -> None:
        """One event of the stream, by its kind; then the position moves past it."""
        stopped = self._stopped_by(change)
        if stopped is not None:
            # Events before it are safe; the saved token stays before it, so a restart meets
            # it again instead of carrying on.
            self._save(checkpoint)
            raise stopped
        collection = _collection_of(change)
        if collection == FENCE_COLLECTION:
            self._on_fence(change, checkpoint, partitions)
        elif self._dependencies is not None and collection in self._dependencies.dependencies:
            self._on_dependency(change, checkpoint, encoder)
        elif change["operationType"] in ("insert", "update", "replace", "delete"):
            self._on_document(change, checkpoint, encoder, partitions)
        checkpoint.token = change["_id"]
        self.last_event_time = change.get("clusterTime")
        self._reached(self.last_event_time)
        self._position_time = getattr(self.last_event_time, "time", None)

    def _on_fence(self, change: Any, checkpoint: Checkpoint, partitions: int) -> None:
        """A fence of this migration (written by ``cutover``) goes to every partition."""
        name = self.migration.name
        fence = change.get("fullDocument") or {}
        if fence.get("migration") != name or change["operationType"] != "insert":
            return
        self._emit()  # in every partition, the events before the fence come before it
        envelope = events.Envelope.fence(name, self.settings.database_name,
                                         self.migration.collection, str(fence["_id"]))
        payload = events.encode(envelope)
        for p in range(partitions):
            self.publisher.send(self.topic, payload, key=b"", partition=p)
        checkpoint.unflushed += partitions

    def _on_dependency(self, change: Any, checkpoint: Checkpoint,
                       encoder: events.RawEncoder) -> None:
        """A change of a collection the migration depends on: an event for each migrated
        document it affects."""
        assert self._dependencies is not None
        try:
            affected = self._dependencies.affected(change)
        except CaptureStopped:
            self._save(checkpoint)
            raise
        at = change.get("clusterTime")
        self._emit()  # a dependency event comes after the changes before it
        for affected_id in affected:
            key, value = encoder.dependency(affected_id, change["ns"]["coll"], at)
            self.publisher.send(self.topic, value, key=key)
        checkpoint.unflushed += len(affected)
        checkpoint.dependency += len(affected)

    def _on_document(self, change: Any, checkpoint: Checkpoint,
                     encoder: events.RawEncoder, partitions: int) -> None:
        """A write of a migrated document: its event, unless its image needs nothing. It
        waits in :class:`ChangeBatches` for the round trip's other events of its partition
        (the one the producer's partitioner would give its key, as the backfill's records
        get, found here in a fraction of the producer's time)."""
        if self.skip_migrated and self._needs_nothing(change):
            self.skipped += 1
            checkpoint.skipped += 1
            return
        key, value = encoder.change(change)
        full = self._batches.add(key, value, change)
        if full is not None:
            self._send_changes(partition_of(key, partitions), full)
        checkpoint.unflushed += 1

    def _emit(self) -> None:
        """Send the events waiting in :class:`ChangeBatches`: a record per partition."""
        for partition, group in self._batches.take():
            self._send_changes(partition, group)

    def _send_changes(self, partition: int, group: list[tuple[bytes, bytes, Any]]) -> None:
        """One record for ``group``'s events: the event's own when it is alone, else a change
        batch, which the topic refusing it as too large replaces by the events' own records."""
        encoder = self._encoder
        if len(group) == 1:
            key, value, change = group[0]
            self.publisher.send(self.topic, value, key=key, partition=partition,
                                fallback=self._key_only(encoder, change, len(value)))
            return
        key, value, change = group[0]
        batch = encoder.change_batch(key, events.CHANGE_OPERATIONS[change["operationType"]],
                                     [v for _, v, _ in group])

        def alone() -> list[topics.Record]:
            return [topics.Record(self.topic, k, v, partition,
                                  self._key_only(encoder, c, len(v))) for k, v, c in group]
        self.publisher.send(self.topic, batch, key=key, partition=partition, fallback=alone)

    def _on_idle(self, stream: Any, checkpoint: Checkpoint) -> None:
        """Nothing new: the position is the batch's resume token (the committed present)."""
        if not stream.alive:
            # Closed by the server (invalidated): try_next would return None at once,
            # forever, without asking the server anything.
            self._save(checkpoint)
            raise self._invalidated()
        if stream.resume_token is not None and not self.fragments.pending:
            checkpoint.token = stream.resume_token
            self._position_time = time.time()  # caught up: the position is now
            self._reached(history.token_time(stream.resume_token))

    def _key_only(self, encoder: events.RawEncoder, change: Any,
                  size: int) -> Callable[[], list[topics.Record]]:
        """What stands for an event the topic refuses as too large: the event without its
        document; a dead letter if even that is too large."""
        def records() -> list[topics.Record]:
            key, value = encoder.change(change, with_document=False)
            return [topics.Record(self.topic, key, value, fallback=lambda: deadletter.too_large(
                self.settings, self.migration, key, size, self.topic))]
        return records

    def _needs_nothing(self, change: Any) -> bool:
        """True when the event's document image is migrated already: no event is needed.

        The image is the document as of the event (insert, replace) or later (update: looked
        up when the stream read it), and every later write has an event of its own; so when
        the transform leaves the image as it is, this event has nothing for the consumer to do.
        Chiefly this drops the consumer's own writes coming back through the change stream
        (the echo), which would otherwise double the events on the topic. The transform runs
        as in a dry run (writes through ``ctx.db`` are not made); an image on which it raises,
        returns something that is not a patch, or would write elsewhere is forwarded.
        """
        if change["operationType"] == "delete":
            return False
        document = change.get("fullDocument")
        if document is None:
            return False
        ctx = self._dry_ctx
        try:
            # Raw, as the consumer decides on an event's document: only the fields the
            # transform reads are decoded (an invalid one raises, and the event goes on).
            outcome = decide(self.migration, document, ctx)
        except Exception:  # the consumer meets the same problem and reports it
            return False
        finally:
            wrote_elsewhere = bool(ctx.side_effects)
            ctx.side_effects.clear()
        return outcome.kind == "noop" and not wrote_elsewhere

    def _save(self, checkpoint: Checkpoint) -> None:
        """Save the resume token once the broker acknowledged every event before it."""
        self._emit()
        started = time.monotonic()
        # Events, not records: a change batch counts each of its events.
        produced = checkpoint.unflushed
        if produced:
            self.publisher.flush()
        if produced and self.publisher.dead_lettered:
            self.retry.call(MONGODB, self.store.add_dead_letters, self.migration.name,
                            self.publisher.dead_lettered)
        if produced:
            self.produced += produced
            metrics.record_produced(self.migration.name, produced, "tailer",
                                    time.monotonic() - started)
        if self._dependencies is not None:
            # Only now: the map reflects events the broker has; a crash before replays them.
            self.retry.call(MONGODB, self._dependencies.save)
        metrics.record_tailer_position(self.migration.name,
                                       self.last_event_time if produced else None)
        skipped = checkpoint.skipped
        checkpoint.saved()
        if checkpoint.token is None:
            return
        dependency, checkpoint.dependency = checkpoint.dependency, 0
        self.retry.call(MONGODB, self.store.save_tail_position, self.migration.name,
                        resume_token=checkpoint.token, last_event_time=self.last_event_time,
                        position_time=self._position_time, produced=produced, skipped=skipped,
                        dependency=dependency)


def _buffered(stream: Any) -> int | None:
    """How many events of the last batch the stream holds, not yet returned; None when this
    pymongo does not tell (then no round trip waits)."""
    data = getattr(getattr(stream, "_cursor", None), "_data", None)
    return len(data) if data is not None else None


def _collection_of(change: Any) -> Any:
    return (change.get("ns") or {}).get("coll")


def tail_until_stopped(settings: Settings, migrations: list[Migration],
                       stop: threading.Event) -> None:
    """Run a tailer per migration in threads until ``stop`` is set (``cdc-migrator tail``)."""
    run_until_stopped([Tailer(settings, m) for m in migrations], stop,
                      name=lambda t: f"tail-{t.migration.name}", join_timeout=30)
