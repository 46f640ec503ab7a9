"""The batch applier: a poll's records decoded with their documents left raw, and what that
must not change (poison records are still dead letters, every document still migrated)."""

from __future__ import annotations

import json
import random

import pytest
from bson.raw_bson import RawBSONDocument
from kafka import KafkaProducer

from cdc_migrator.apply import batch
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
