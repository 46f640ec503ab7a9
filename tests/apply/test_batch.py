"""The batch applier: a poll's records decoded with their documents left raw, and what that
must not change (poison records are still dead letters, every document still migrated)."""

from __future__ import annotations

import json
import random
import types
from concurrent.futures import ThreadPoolExecutor

import bson
import pytest
from bson import Timestamp
from bson.raw_bson import RawBSONDocument
from kafka import KafkaProducer, TopicPartition

from cdc_migrator.apply import batch
from cdc_migrator.apply.applier import BatchResult, Decided
from cdc_migrator.base.identity import id_key
from cdc_migrator.capture.tailer import arm
from cdc_migrator.core import events
from cdc_migrator.migration import get_migration
from cdc_migrator.pipeline import run_pipeline

from ..harness import ITEMS_MIGRATION, KAFKA, assert_invariant, run_cli, seed_items

TRANSFORMS = {"items.py": ITEMS_MIGRATION}


@pytest.mark.parametrize("chunk", [1, 1000])
def test_a_record_whose_document_is_invalid_bson_inside_is_dead_lettered_as_poison(
        db, settings, transforms, monkeypatch, chunk):
    """The consumer checks a document's framing only, and decodes it when the transform reads
    it: a document framed right but invalid inside (here an unknown BSON type) still makes
    its record a poison dead letter, with decode's reason, and the other records of the poll
    are applied. In chunks of one record, the transform reads the invalid document; in one
    chunk, the backfill names the same documents, so their images are not read."""
    monkeypatch.setattr(batch, "APPLY_CHUNK", chunk)
    expected = seed_items(db["items"], random.Random(3), 60)
    migration = get_migration(transforms, "price_total")
    arm(settings, migration)
    raw = db["items"].with_options(codec_options=events.CODEC_OPTIONS.with_options(
        document_class=RawBSONDocument))
    docs = list(raw.find({"_id": {"$in": [1, 2]}}, sort=[("_id", 1)]))
    good = bytes(docs[1].raw)
    bad = good.replace(b"\x10price\x00", b"\x14price\x00")  # no BSON type 0x14; framing intact
    assert bad != good
    key, value = events.RawEncoder("price_total", db.name, "items").snapshot_batch(docs)
    value = value.replace(good, bad)
    producer = KafkaProducer(bootstrap_servers=KAFKA)
    sent = producer.send(settings.topic("items"), key=key, value=value, partition=0)\
        .get(timeout=30)
    producer.close()

    report = run_pipeline(settings, migration, show_progress=False, timeout=120)
    listed = run_cli("dlq", "list", "price_total", "--json", settings=settings)

    assert report.lag == 0
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["kind"], e["partition"], e["offset"]) for e in letters] == \
        [("poison", 0, sent.offset)], listed.stdout
    assert "invalid BSON in documents" in letters[0]["error"]
    assert letters[0]["value_hex"] == value.hex()
    assert_invariant(db["items"], expected, set())  # the backfill migrated both anyway


class _Record:
    def __init__(self, offset: int, value: bytes, key: bytes | None = b"k") -> None:
        self.offset, self.value, self.key = offset, value, key
        self.topic, self.partition, self.timestamp, self.headers = "t", 0, 0, []


class _Undecided:
    """The applier, throttle and retrier of a batch applier whose bookkeeping alone is tested:
    it records what it is asked to decide and decides nothing."""

    last_write_seconds = None

    def __init__(self) -> None:
        self.asked: list[tuple[list, dict]] = []

    def decide_ids(self, ids: list, images: dict) -> Decided:
        self.asked.append((list(ids), dict(images)))
        return Decided(BatchResult(seen=len(ids)), [], [])

    def write(self, decided: Decided) -> BatchResult:
        return decided.result

    def chunk(self, most: int) -> int:
        return most

    def spend(self, n: int) -> None:
        pass

    def note_write(self, seconds: float | None) -> None:
        pass

    def call(self, service: str, fn, *args):
        return fn(*args)


def test_a_polls_positions_counts_fences_and_images_are_kept_per_partition():
    """Each partition's first offset and next offset to commit, the events counted (a
    backfill record counts each of its documents), fences, poison and the images handed to
    the applier (raw documents, keyed by MongoDB's _id equality; an id named twice has none)."""
    encoder = events.RawEncoder("m", "app", "items")
    docs = [{"_id": 1, "a": "x"}, {"_id": 2}, {"_id": 1.0, "a": "y"}, {"_id": True}]
    _, backfill = encoder.snapshot_batch(docs[:2])
    _, change = encoder.change({"_id": {"_data": "82"}, "operationType": "update",
                                "documentKey": {"_id": 1.0}, "fullDocument": docs[2],
                                "clusterTime": Timestamp(1_700_000_000, 1)})
    _, other = encoder.snapshot_batch([docs[3]])
    fence = events.encode(events.Envelope.fence("m", "app", "items", "f-1"))
    not_ours = events.RawEncoder("n", "app", "items").snapshot_batch([{"_id": 9}])[1]
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    polled = {p0: [_Record(10, backfill), _Record(11, b"junk"), _Record(12, fence)],
              p1: [_Record(40, change), _Record(41, not_ours), _Record(42, other)]}
    stand_in = _Undecided()
    migration = types.SimpleNamespace(name="m")
    with ThreadPoolExecutor(1) as writer:
        got = batch.BatchApplier(migration, stand_in, stand_in, retry=stand_in,
                                 write_retry=stand_in, writer=writer).apply(polled)

    assert got.firsts == {p0: 10, p1: 40}
    assert {tp: o.offset for tp, o in got.offsets.items()} == {p0: 13, p1: 43}
    assert got.count == 7  # two documents, junk, fence; change, another migration's, one
    assert got.fences == [(0, "f-1")] and got.poison == 1
    assert got.change_times == [1_700_000_000.0]
    [(ids, images)] = stand_in.asked
    assert ids == [1, 2, 1.0, True]
    assert images[id_key(1)] is None  # 1 and 1.0: one document named twice
    assert images[id_key(True)] is not None and dict(images[id_key(True)]) == {"_id": True}
    assert isinstance(images[id_key(2)], RawBSONDocument)


def test_a_change_batch_counts_and_names_each_of_its_changes_and_its_poison_all_of_them():
    """A change batch of the tailer: each change an event (counted, its cluster time kept,
    its image handed over, a delete's none); a batch one of whose images is invalid BSON
    inside is poison as a whole, and none of its changes is counted any more."""
    encoder = events.RawEncoder("m", "app", "items")
    changes = [encoder.change({"_id": {"_data": f"8{n}"}, "operationType": op,
                               "documentKey": {"_id": doc_id}, "fullDocument": image,
                               "clusterTime": Timestamp(1_700_000_000 + n, 1)})
               for n, (op, doc_id, image) in enumerate([
                   ("insert", 5, {"_id": 5, "price": 1}), ("delete", "gone", None),
                   ("replace", 6, {"_id": 6, "price": 2})])]
    value = encoder.change_batch(changes[0][0], events.Operation.INSERT,
                                 [v for _, v in changes])
    good = bson.encode({"_id": 6, "price": 2})
    bad = value.replace(good, good.replace(b"\x10price\x00", b"\x14price\x00"))
    assert bad != value
    p0 = TopicPartition("t", 0)
    stand_in = _Undecided()
    migration = types.SimpleNamespace(name="m")
    with ThreadPoolExecutor(1) as writer:
        applier = batch.BatchApplier(migration, stand_in, stand_in, retry=stand_in,
                                     write_retry=stand_in, writer=writer)
        got = applier.apply({p0: [_Record(7, value)]})
        # An image is only decoded when read (not by this stand-in): what a read that fails
        # leads to, the poison's removal from the chunk, is called here.
        poisoned, chunk = batch.Batch(count=1), batch._Chunk()
        applier._take(p0, _Record(8, bad), poisoned, chunk)
        assert poisoned.count == 3 and len(poisoned.change_times) == 3
        clean = applier._without_poison(chunk, poisoned)

    assert got.count == 3 and got.poison == 0
    assert got.change_times == [1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.0]
    ids, images = stand_in.asked[0]
    assert ids == [5, "gone", 6] and images[id_key("gone")] is None
    assert dict(images[id_key(6)]) == {"_id": 6, "price": 2}
    assert clean.ids == [] and poisoned.poison == 1
    assert poisoned.count == 1 and poisoned.change_times == []  # the record, not its changes
    assert "event 2 of a change batch: invalid BSON in document" in poisoned.dead[0][2].decode()
