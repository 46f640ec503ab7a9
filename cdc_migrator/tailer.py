"""The change-stream tailer: every write to the collection becomes an event on its topic.

Capture is *armed* before the backfill reads anything: :func:`arm` records the server's
operation time, and the tailer starts from there (later, from its saved resume token). The
resume token is saved only after the broker acknowledged every event before it, so a crash
replays events (at-least-once) and never skips one.

The stream is database-wide, filtered to the migrated collection and the fence collection:
a fence written by ``cutover`` travels the same ordered stream as the application's writes,
and the tailer forwards it into every partition of the topic.

A lost connection to MongoDB re-opens the stream from the saved resume token; a broker that
does not acknowledge is waited for with the batch in hand (see :mod:`cdc_migrator.retry`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure, PyMongoError

from . import deadletter, events, logs, observability, topics
from .config import Settings
from .context import make_context
from .errors import HistoryLost, Refused
from .migration import Migration, rename_filter_fields
from .patch import decide
from .retry import KAFKA, MONGODB, Retrier, StopRequested, message_of
from .state import ARMED, FAILED, StateStore

log = logging.getLogger("cdc_migrator.tailer")

FENCE_COLLECTION = "cdc_migrator_fences"
# Server errors meaning the saved resume point is no longer in the server's history.
HISTORY_LOST_CODES = {136, 280, 286}
# The last stage of the tailer's stream: only what the tailer uses. An update's description
# repeats the changed values beside the looked-up document, which can take the event past
# MongoDB's limit for one event (16 MiB plus 16 KiB).
UNUSED_FIELDS = {"$unset": ["updateDescription"]}
# BSONObjectTooLarge: the server could not return a change event larger than its limit.
EVENT_TOO_LARGE = 10334
# After an event too large, at most this many events are read one per batch to find it.
NARROW_EVENTS = 1000
_FULL, _NARROW, _KEY_ONLY = "full", "narrow", "key only"


def arm(settings: Settings, migration: Migration) -> dict[str, Any]:
    """Fix the point from which changes are captured (idempotent); create the topic."""
    store = StateStore(settings.db, settings.state_collection)
    state = store.ensure(migration.name, migration.collection)
    if state.get("cancelled"):
        raise Refused(f"migration {migration.name!r} was cancelled; `reset` it to start again")
    topics.ensure_topic(settings, settings.topic(migration.collection))
    tail = state.get("tail") or {}
    if tail.get("armed_at") is None:
        # The reply's operationTime is the server's latest operation: a change stream started
        # at it (inclusive) sees every write the backfill's scan could miss.
        armed_at = settings.db.command("ping").get("operationTime")
        if armed_at is None:
            raise Refused("the MongoDB server reports no operationTime: change streams need "
                          "a replica set or sharded cluster")
        store.set(migration.name, phase=state.get("phase") or ARMED,
                  **{"tail.armed_at": armed_at, "tail.produced": 0})
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
    without a document and fences always pass. The events leave out ``updateDescription``.
    """
    stages: list[dict[str, Any]] = [
        {"$match": {"ns.coll": {"$in": [migration.collection, FENCE_COLLECTION]}}}]
    image = image_condition(migration.filter) if migration.filter else None
    if image:
        stages.append({"$match": {"$or": [
            {"ns.coll": FENCE_COLLECTION},
            {"operationType": {"$nin": ["insert", "update", "replace"]}},
            {"fullDocument": None},
            image,
        ]}})
    stages.append(UNUSED_FIELDS)
    return stages


def is_armed(state: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    return bool(state and (state.get("tail") or {}).get("armed_at") is not None)


class Tailer:
    """Follows one migration's collection until :meth:`stop` is called."""

    def __init__(self, settings: Settings, migration: Migration, *,
                 flush_every: int = 2000, flush_interval: float = 0.2,
                 skip_migrated: bool = True) -> None:
        self.settings = settings
        self.migration = migration
        # Drop events whose document image the transform leaves as it is (see _needs_nothing).
        self.skip_migrated = skip_migrated
        self.skipped = 0
        self._dry_ctx = make_context(settings.db, migration.name, dry_run=True)
        self.topic = settings.topic(migration.collection)
        self.store = StateStore(settings.db, settings.state_collection)
        self.flush_every = flush_every
        self.flush_interval = flush_interval
        self.stopping = threading.Event()
        self.produced = 0
        self.last_event_time: Any = None
        self.caught_up = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        """Tail until stopped; raises HistoryLost when the resume point is gone.

        A lost connection re-opens the stream from the saved resume token (the events after
        it are produced again: at-least-once); an outage longer than the retry deadline raises
        ServiceUnavailable.
        """
        logs.bind(migration=self.migration.name, component="tailer")
        self.retry = Retrier(self.settings, log, self.stopping)
        self.publisher = topics.Publisher(self.settings, self.retry)
        try:
            while not self.stopping.is_set():
                try:
                    self._follow()
                except (HistoryLost, StopRequested):
                    raise
                except Exception as exc:
                    self.publisher.forget()
                    self.retry.failed(exc)
        except StopRequested:
            log.info("stopped during an outage; events after the saved resume token are "
                     "produced again on the next start")
        finally:
            self.publisher.close()

    def _follow(self) -> None:
        """Open the change stream from the saved point and follow it until stopped.

        An event larger than MongoDB returns (its limit for one event is 16 MiB plus 16 KiB:
        the ``getMore`` fails with 10334 BSONObjectTooLarge, and so does every resume from
        before the event) is found and forwarded by its key alone: the stream is opened again
        from the saved point taking one event per batch, up to the one that fails; that event
        is read once more without its document and forwarded as "this document may need
        migrating" (the consumer reads the document), and the stream goes on as before.
        """
        mode = _FULL
        while not self.stopping.is_set():
            try:
                self._stream(mode)
            except OperationFailure as exc:
                if exc.code != EVENT_TOO_LARGE or mode == _KEY_ONLY:
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
        without its document (``_KEY_ONLY``)."""
        state = arm(self.settings, self.migration)
        tail = state.get("tail") or {}
        db = self.settings.db
        options: dict[str, Any] = {"full_document": "updateLookup",
                                   "batch_size": 1000 if mode == _FULL else 1,
                                   "max_await_time_ms": 200}
        if tail.get("resume_token"):
            options["resume_after"] = tail["resume_token"]
        else:
            options["start_at_operation_time"] = tail["armed_at"]
        pipeline = stream_pipeline(self.migration)
        if mode == _KEY_ONLY:
            pipeline.append({"$unset": ["fullDocument"]})
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
                             self.topic, "the saved resume token" if "resume_after" in options
                             else f"the armed point {tail['armed_at']}")
                self._loop(stream, partitions, limit={_FULL: None, _NARROW: NARROW_EVENTS,
                                                      _KEY_ONLY: 1}[mode],
                           key_only=mode == _KEY_ONLY)
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                message = (f"the change stream of {self.migration.collection} can no longer "
                           f"resume from the saved point ({exc.code}: "
                           f"{str(exc).splitlines()[0][:160]}); a new backfill is needed: "
                           f"`cdc-migrator reset {self.migration.name}` then run it again")
                self.retry.call(MONGODB, self.store.set, self.migration.name, phase=FAILED,
                                last_error={"error": message})
                raise HistoryLost(message) from None
            raise

    def _loop(self, stream: Any, partitions: int, limit: int | None = None,
              key_only: bool = False) -> None:
        """Produce the stream's events until stopped; with a ``limit``, until that many
        events were taken or none is left for now.

        Before an error of the stream (an event too large) is raised, the events before it
        are produced and the resume token after them saved. With ``key_only`` the events come
        without their documents; a fence then ends the loop untaken (its id is in its
        document), to be read again with it.
        """
        publisher = self.publisher
        unflushed = 0
        last_token = None
        last_flush = time.monotonic()
        name = self.migration.name
        database = self.settings.database_name
        collection = self.migration.collection
        encoder = events.RawEncoder(name, database, collection)
        skipped = 0
        taken = 0
        while not self.stopping.is_set() and (limit is None or taken < limit):
            try:
                change = stream.try_next()
            except OperationFailure as exc:
                if exc.code == EVENT_TOO_LARGE:
                    self._commit(unflushed, last_token, skipped)
                raise
            if change is not None:
                if change["ns"]["coll"] == FENCE_COLLECTION:
                    if key_only:
                        break
                    fence = change.get("fullDocument") or {}
                    if fence.get("migration") == name and change["operationType"] == "insert":
                        envelope = events.Envelope.fence(name, database, collection,
                                                         str(fence["_id"]))
                        payload = events.encode(envelope)
                        for p in range(partitions):
                            publisher.send(self.topic, payload, key=b"", partition=p)
                        unflushed += partitions
                elif change["operationType"] in ("insert", "update", "replace", "delete"):
                    if self.skip_migrated and self._needs_nothing(change):
                        self.skipped += 1
                        skipped += 1
                    else:
                        key, value = encoder.change(change)
                        publisher.send(self.topic, value, key=key,
                                       fallback=self._key_only(encoder, change, len(value)))
                        unflushed += 1
                last_token = change["_id"]
                self.last_event_time = change.get("clusterTime")
                taken += 1
            else:
                last_token = stream.resume_token or last_token
                self.caught_up.set()
                if limit is not None:
                    break  # nothing more now: what was sought has passed
            due = time.monotonic() - last_flush >= self.flush_interval
            if unflushed >= self.flush_every or (due and (unflushed or last_token)):
                self._commit(unflushed, last_token, skipped)
                unflushed = skipped = 0
                last_flush = time.monotonic()
        self._commit(unflushed, last_token, skipped)

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
            if isinstance(document, RawBSONDocument):
                # Decoded as the consumer decodes an event's document.
                document = bson.decode(document.raw, events.CODEC_OPTIONS)
            outcome = decide(self.migration, document, ctx)
        except Exception:  # the consumer meets the same problem and reports it
            return False
        finally:
            wrote_elsewhere = bool(ctx.side_effects)
            ctx.side_effects.clear()
        return outcome.kind == "noop" and not wrote_elsewhere

    def _commit(self, unflushed: int, token: Any, skipped: int = 0) -> None:
        """Save the resume token once the broker acknowledged every event before it."""
        started = time.monotonic()
        produced = self.publisher.flush() if unflushed else 0
        if produced and self.publisher.dead_lettered:
            self.retry.call(MONGODB, self.store.increment, self.migration.name, "dlq_pending",
                            self.publisher.dead_lettered)
        if produced:
            self.produced += produced
            observability.record_produced(self.migration.name, produced, "tailer",
                                          time.monotonic() - started)
        observability.record_tailer_position(self.migration.name,
                                             self.last_event_time if produced else None)
        if token is None:
            return
        fields: dict[str, Any] = {"tail.resume_token": token, "tail.heartbeat": time.time()}
        if self.last_event_time is not None:
            fields["tail.last_event_time"] = self.last_event_time
        self.retry.call(MONGODB, self.store.add, self.migration.name,
                        {"produced": produced, "skipped": skipped}, **fields)


def tail_until_stopped(settings: Settings, migrations: list[Migration],
                       stop: threading.Event) -> None:
    """Run a tailer per migration in threads until ``stop`` is set (``cdc-migrator tail``)."""
    tailers = [Tailer(settings, m) for m in migrations]
    errors: list[BaseException] = []

    def run(t: Tailer) -> None:
        try:
            t.run()
        except (PyMongoError, Exception) as exc:  # reported by the caller
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(t,), daemon=True, name=f"tail-{t.migration.name}")
               for t in tailers]
    for thread in threads:
        thread.start()
    stop.wait()
    for t in tailers:
        t.stop()
    for thread in threads:
        thread.join(timeout=30)
    if errors:
        raise errors[0]
