"""Documents as real collections hold them, through every path: ``apply``, backfill, tail,
consume, dead letters. Each test is one reproduction of issue 12, on the real services."""

from __future__ import annotations

import os
import textwrap
import threading
import uuid

import bson
from bson import Binary, DatetimeMS, Int64, Regex
from kafka.admin import NewTopic

from cdc_migrator import api, testing
from cdc_migrator.apply.applier import Applier
from cdc_migrator.apply.consumer import TransformConsumer
from cdc_migrator.base import codec, history, topics
from cdc_migrator.base.identity import id_key
from cdc_migrator.capture.backfill import backfill
from cdc_migrator.capture.partitions import partition_of
from cdc_migrator.capture.tailer import Tailer, arm, stream_pipeline
from cdc_migrator.core import events
from cdc_migrator.core.context import make_context
from cdc_migrator.migration import get_migration
from cdc_migrator.operations.observability import Watch
from cdc_migrator.pipeline import run_pipeline

from ..harness import run_cli, wait_for

MIB = 1 << 20


def _migrations(tmp_path, settings, source: str):
    (tmp_path / "m.py").write_text(textwrap.dedent(source))
    settings.transforms = tmp_path
    return tmp_path


def _run(settings, tmp_path, name: str, **options):
    report = run_pipeline(settings, get_migration(tmp_path, name), show_progress=False,
                          timeout=180, **options)
    assert report.drained, report
    return report


def _create_topic(settings, collection: str, **config: str) -> None:
    """The migration's topic, made before the tool makes it (as a user's may be, with the
    settings the tool checks: docs/deploy.md), with ``config`` on top."""
    client = topics.admin(settings)
    try:
        client.create_topics([NewTopic(settings.topic(collection), settings.partitions, 1,
                                       topic_configs={**topics.TOPIC_CONFIGS, **config})])
    finally:
        client.close()


def _padded(doc: dict, size: int) -> dict:
    """``doc`` with a field ``pad`` of random bytes (data that does not compress) that makes
    its BSON ``size`` bytes."""
    empty = len(bson.encode({**doc, "pad": b""}, codec_options=codec.CODEC_OPTIONS))
    return {**doc, "pad": os.urandom(size - empty)}


# --------------------------------------------------------------------------- the codec

def test_every_client_of_the_tool_decodes_with_the_one_codec_policy(settings):
    settings.mongodb_uri += "&uuidRepresentation=javaLegacy"  # the policy wins over the URI
    assert settings.client.codec_options == codec.CODEC_OPTIONS
    watch = Watch(settings, [])
    watch.start()
    try:
        assert watch._mongo.codec_options == codec.CODEC_OPTIONS
    finally:
        watch.stop()


UUID_MIGRATION = '''
    from cdc_migrator import migration

    @migration(collection="accounts")
    def owner_kind(doc, ctx):
        kind = type(doc["owner"]).__name__
        if doc.get("ownerKind") != kind:
            return {"ownerKind": kind}
'''


def test_uuid_ids_and_fields_migrate_through_the_pipeline(db, settings, tmp_path):
    _migrations(tmp_path, settings, UUID_MIGRATION)
    db.accounts.with_options(codec_options=codec.CODEC_OPTIONS).insert_many(
        [{"_id": uuid.uuid4(), "owner": uuid.uuid4()} for _ in range(300)])
    _run(settings, tmp_path, "owner_kind")
    kinds = [d["ownerKind"] for d in db.accounts.find({}, {"ownerKind": 1})]
    assert kinds == ["UUID"] * 300


def test_a_transform_sees_a_uuid_whether_the_image_or_a_re_read_delivered_it(db, settings,
                                                                              tmp_path):
    migration = get_migration(_migrations(tmp_path, settings, UUID_MIGRATION), "owner_kind")
    accounts = settings.db.accounts
    ids = [uuid.uuid4(), uuid.uuid4()]
    accounts.insert_many([{"_id": i, "owner": uuid.uuid4()} for i in ids])
    applier = Applier(migration, accounts, make_context(settings.db, migration.name))
    # The first from an event's image, as the consumer decodes it; the second re-read.
    image = events.decode(events.encode(testing.snapshot_envelope(
        "owner_kind", db.name, "accounts", accounts.find_one({"_id": ids[0]}))))
    result = applier.apply_ids(ids, {id_key(ids[0]): image.document})
    assert result.updated == 2
    assert [d["ownerKind"] for d in accounts.find()] == ["UUID", "UUID"]


# --------------------------------------------------------------------------- identity

MARK_MIGRATION = '''
    from cdc_migrator import migration

    @migration(collection="things")
    def mark(doc, ctx):
        if "marked" not in doc:
            return {"marked": True}
'''

# To MongoDB these are eight documents: a boolean is not a number, and sub-document ids
# differ by their field order.
DISTINCT_IDS = [1, True, 0, False, 2.5, Int64(3), {"a": 1, "b": 2}, {"b": 2, "a": 1}]


def test_ids_equal_in_python_but_not_to_mongodb_are_each_migrated(db, settings, tmp_path):
    _migrations(tmp_path, settings, MARK_MIGRATION)
    db.things.insert_many([{"_id": i} for i in DISTINCT_IDS])
    report = _run(settings, tmp_path, "mark")
    assert db.things.count_documents({"marked": True}) == len(DISTINCT_IDS)
    assert report.counts["updated"] == len(DISTINCT_IDS)


# --------------------------------------------------------------------------- sizes

BLOB_MIGRATION = '''
    from cdc_migrator import migration

    @migration(collection="files")
    def size_of(doc, ctx):
        if "size" not in doc:
            return {"size": len(doc["blob"])}
'''


def test_a_document_of_mongodbs_largest_size_goes_through_backfill_and_consume(
        db, settings, tmp_path):
    _migrations(tmp_path, settings, BLOB_MIGRATION)
    _create_topic(settings, "files", **{"max.message.bytes": str(topics.MAX_RECORD_BYTES)})
    # As large as MongoDB stores, with room for the field the migration adds.
    doc = _padded({"_id": 1, "blob": b"x"}, 16 * MIB - 64)
    db.files.insert_one(doc)
    _run(settings, tmp_path, "size_of")
    migrated = db.files.find_one()
    assert migrated["size"] == 1 and migrated["pad"] == doc["pad"]


def test_a_record_larger_than_the_topic_accepts_goes_by_its_key_alone(db, settings,
                                                                      tmp_path):
    _migrations(tmp_path, settings, BLOB_MIGRATION)
    _create_topic(settings, "files", **{"max.message.bytes": str(1 << 20)})
    db.files.insert_many([{"_id": 1, "blob": os.urandom(3 * MIB)},
                          {"_id": 2, "blob": b"small"}])
    migration = get_migration(tmp_path, "size_of")
    arm(settings, migration)
    tailer, consumer = Tailer(settings, migration), TransformConsumer(settings, migration)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (tailer, consumer)]
    for t in threads:
        t.start()
    try:
        report = backfill(settings, migration, show_progress=False)
        assert report.done
        _caught_up(settings, migration, tailer)
        db.files.insert_one({"_id": 3, "blob": os.urandom(2 * MIB)})  # a change event
        wait_for(lambda: db.files.count_documents({"size": {"$exists": True}}) == 3,
                 what="every document migrated")
    finally:
        tailer.stop()
        consumer.stop()
        for t in threads:
            t.join(timeout=60)
    assert [d["size"] for d in db.files.find()] == [3 * MIB, 5, 2 * MIB]
    assert consumer.stats.result.failed == 0


# --------------------------------------------------------------------------- the codec again

DATE_MIGRATION = '''
    from cdc_migrator import migration

    @migration(collection="events")
    def count_fields(doc, ctx):
        if doc.get("fields") != len(doc):
            return {"fields": len(doc) + ("fields" not in doc)}
'''


def test_dates_outside_pythons_range_are_delivered_to_apply_verify_and_the_pipeline(
        db, settings, tmp_path):
    _migrations(tmp_path, settings, DATE_MIGRATION)
    docs = [{"_id": i, "at": DatetimeMS(i)} for i in range(21)]
    docs[5]["at"] = DatetimeMS(2**62)
    docs[9]["at"] = DatetimeMS(-(2**62))
    db.events.insert_many(docs)
    db.events.insert_one({"_id": DatetimeMS(2**62)})  # a date _id where a scan resumes
    assert run_cli("verify", "count_fields", settings=settings).returncode == 1
    result = run_cli("apply", "count_fields", "--batch-size", "4", settings=settings)
    assert result.returncode == 0, result.stderr
    assert "updated 22" in result.stdout
    db.events.update_many({}, {"$unset": {"fields": ""}})
    _run(settings, tmp_path, "count_fields", batch_size=4)
    assert db.events.count_documents({"fields": {"$exists": True}}) == 22
    verified = run_cli("verify", "count_fields", settings=settings)
    assert verified.returncode == 0, verified.stdout + verified.stderr


# --------------------------------------------------------------------------- the guards

ITERATING_MIGRATION = '''
    from cdc_migrator import DELETE, migration

    @migration(collection="rules")
    def snapshot_names(doc, ctx):
        names = sorted(k for k in doc if k != "names")
        if doc.get("names") != names:
            return {"names": names}

    @migration(collection="prices")
    def drop_free(doc, ctx):
        if doc.get("price.usd") == 0 and "$currency" in doc:
            return DELETE

    @migration(collection="orders")
    def drop_described(doc, ctx):
        if len(doc) > 1:  # iterates: pins every field
            return DELETE
'''


def test_a_regex_in_a_field_the_guard_pins_is_compared_and_migrated(db, settings, tmp_path):
    _migrations(tmp_path, settings, ITERATING_MIGRATION)
    db.rules.insert_many([{"_id": i, "match": Regex(f"^{i}", "i")} for i in range(5)])
    _run(settings, tmp_path, "snapshot_names")
    assert db.rules.count_documents({"names": ["_id", "match"]}) == 5


def test_dotted_and_dollar_field_names_read_or_iterated_are_pinned(db, settings, tmp_path):
    # Deletes: a guarded delete goes through the same guard as an update.
    _migrations(tmp_path, settings, ITERATING_MIGRATION)
    docs = [{"_id": i, "price.usd": i % 2, "$currency": "EUR", "a.b": {"c": i}}
            for i in range(6)]
    db.prices.insert_many(docs)
    db.orders.insert_many(docs)
    applied = api.apply(settings, "drop_free", show_progress=False)
    assert (applied.result.deleted, applied.result.failed) == (3, 0)
    assert [d["_id"] for d in db.prices.find()] == [1, 3, 5]
    report = _run(settings, tmp_path, "drop_described")
    assert report.counts.get("failed", 0) == 0 and report.counts["deleted"] == 6
    assert db.orders.count_documents({}) == 0


# --------------------------------------------------------------------------- change streams


LARGE_MIGRATION = '''
    from cdc_migrator import migration

    @migration(collection="big")
    def stamp(doc, ctx):
        if doc.get("stamp") != doc["version"]:
            return {"stamp": doc["version"]}
'''


def _caught_up(settings, migration, tailer: Tailer) -> None:
    """Wait until the running tailer has read the stream up to where one opened now starts."""
    tailer.catch_up_to(history.stream_start(settings.db, stream_pipeline(migration))[1])
    wait_for(tailer.caught_up.is_set, what="the tailer")


def _tail_and_consume(settings, migration, act) -> tuple[Tailer, TransformConsumer]:
    arm(settings, migration)
    tailer, consumer = Tailer(settings, migration), TransformConsumer(settings, migration)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (tailer, consumer)]
    for t in threads:
        t.start()
    try:
        _caught_up(settings, migration, tailer)
        act()
    finally:
        tailer.stop()
        consumer.stop()
        for t in threads:
            t.join(timeout=60)
    return tailer, consumer


def test_an_update_of_a_large_document_is_tailed_without_its_update_description(
        db, settings, tmp_path):
    migration = get_migration(_migrations(tmp_path, settings, LARGE_MIGRATION), "stamp")
    _create_topic(settings, "big", **{"max.message.bytes": str(topics.MAX_RECORD_BYTES)})
    db.big.insert_one({"_id": 1, "version": 0, "stamp": 0, "a": os.urandom(8 * MIB),
                       "b": os.urandom(8 * MIB - 100)})

    def act():
        db.big.update_one({"_id": 1}, {"$set": {"a": os.urandom(8 * MIB), "version": 1}})
        wait_for(lambda: db.big.find_one({"stamp": 1}, {"_id": 1}), what="the update migrated")

    _tail_and_consume(settings, migration, act)


def test_an_event_too_large_even_so_goes_by_its_key_and_the_stream_goes_on(
        db, settings, tmp_path):
    migration = get_migration(_migrations(tmp_path, settings, LARGE_MIGRATION), "stamp")
    _create_topic(settings, "big", **{"max.message.bytes": str(topics.MAX_RECORD_BYTES)})
    # Its 32 KiB _id is in the event twice (documentKey, fullDocument): over the limit.
    long_id = "k" * (32 << 10)

    def act():
        db.big.insert_one({"_id": 0, "version": 1})
        db.big.insert_one(_padded({"_id": long_id, "version": 1}, 16 * MIB - 64))
        db.big.insert_one({"_id": 2, "version": 1})
        wait_for(lambda: db.big.count_documents({"stamp": 1}) == 3, what="all three migrated")

    tailer, consumer = _tail_and_consume(settings, migration, act)
    assert consumer.stats.result.updated == 3 and consumer.stats.result.failed == 0


# --------------------------------------------------------------------------- change batches

BATCH_MIGRATION = '''
    from cdc_migrator import migration

    @migration(collection="batched")
    def size_of(doc, ctx):
        if "size" not in doc:
            return {"size": len(doc.get("blob", b""))}
'''


def _topic_events(settings, topic: str) -> dict[int, list[tuple[int, events.Envelope]]]:
    """Every event on ``topic`` by partition, as (number of events its record carried, event),
    change batches expanded."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(enable_auto_commit=False, **topics.client_options(settings))
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        found: dict[int, list[tuple[int, events.Envelope]]] = {}
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for tp, records in consumer.poll(timeout_ms=5000).items():
                for record in records:
                    envelope = events.decode(record.value)
                    carried = envelope.changes or [envelope]
                    found.setdefault(tp.partition, []).extend(
                        (len(carried), e) for e in carried)
        return found
    finally:
        consumer.close()


def test_the_changes_of_one_round_trip_go_as_one_record_per_partition_in_order(
        db, settings, tmp_path):
    """Ids of every kind, written in one command: the tailer reads them in one or a few round
    trips and sends a partition's changes as one record; each change reaches its key's
    partition in write order, and the consumer migrates every document."""
    migration = get_migration(_migrations(tmp_path, settings, BATCH_MIGRATION), "size_of")
    ids = ([Binary.from_uuid(uuid.UUID(int=i)) for i in range(60)] + [Int64(i) for i in range(60)]
           + [f"k{i}" for i in range(60)] + [{"o": i} for i in range(60)]
           + list(range(1000, 1060)))

    def act():
        db.batched.insert_many([{"_id": i, "blob": b"x" * (n % 7)} for n, i in enumerate(ids)])
        db.batched.delete_one({"_id": "k3"})
        wait_for(lambda: db.batched.count_documents({"size": {"$exists": True}}) == 299,
                 what="every document migrated")

    tailer, consumer = _tail_and_consume(settings, migration, act)
    on_topic = _topic_events(settings, settings.topic("batched"))
    writes = [e for events_ in on_topic.values() for _, e in events_ if e.source == "change"]
    assert len(writes) == 301 and tailer.produced >= 301  # events, not records
    assert max(n for events_ in on_topic.values() for n, _ in events_) > 1  # batched
    order = {id_key(i): n for n, i in enumerate(ids)}
    for partition, events_ in on_topic.items():
        inserts = [order[id_key(e.key)] for _, e in events_ if e.operation == "insert"]
        assert inserts == sorted(inserts)  # in write order within the partition
        assert all(partition_of(events.key_bytes(e.key), settings.partitions) == partition
                   for _, e in events_)
    assert consumer.stats.result.failed == 0


def test_a_topic_under_the_batch_size_gets_batches_it_takes_and_only_the_large_goes_alone(
        db, settings, tmp_path, caplog):
    """A topic taking 300,000 bytes per record: the tailer's change batches and the producer's
    batches stay within half of it, so none is refused; only the 400 KB change is too large,
    and only it goes by its key alone. (Before, batches of up to 512 KiB and 256 KiB were
    refused, each refusal named some record as too large, and changes small enough to travel
    whole could go by their key.)"""
    migration = get_migration(_migrations(tmp_path, settings, BATCH_MIGRATION), "size_of")
    _create_topic(settings, "batched", **{"max.message.bytes": "300000"})

    def act():
        # 40 KB each, ten to a partition on average, in one command: one round trip.
        db.batched.insert_many([_padded({"_id": i}, 40_000) for i in range(60)]
                               + [_padded({"_id": "big"}, 400_000)])
        wait_for(lambda: db.batched.count_documents({"size": {"$exists": True}}) == 61,
                 what="every document migrated")

    with caplog.at_level("WARNING", logger="cdc_migrator.topics"):
        tailer, consumer = _tail_and_consume(settings, migration, act)
    assert consumer.stats.result.failed == 0
    refused = [r.getMessage() for r in caplog.records if "larger than topic" in r.getMessage()]
    assert len(refused) == 1 and "a record of 400124 bytes" in refused[0], refused
    on_topic = [e for events_ in _topic_events(settings, settings.topic("batched")).values()
                for e in events_]
    assert max(n for n, _ in on_topic) > 1  # batches were taken
    assert {id_key(e.key) for _, e in on_topic} == {id_key(i) for i in [*range(60), "big"]}
    assert [e.key for _, e in on_topic if e.document is None] == ["big"]
