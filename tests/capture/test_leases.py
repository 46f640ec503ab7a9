"""A shared backfill's leases: its _id ranges in BSON order, planned once, each claimed by one
worker, resumed, reset."""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid

import pytest
from bson import Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp

from cdc_migrator import api
from cdc_migrator.base import bsontypes
from cdc_migrator.base.settings import Settings
from cdc_migrator.capture.leases import (
    KeyRange,
    RangeStore,
    quantiles,
    range_filter,
    ranges_for,
    sample,
    split,
    split_points,
    with_boundaries,
)
from cdc_migrator.capture.tailer import arm
from cdc_migrator.core.state import StateStore
from cdc_migrator.migration import get_migration

from ..harness import (
    ITEMS_MIGRATION,
    KAFKA,
    CliProcess,
    run_cli,
    scanned_objects,
    seed_items,
    seed_sharded_collection,
    wait_for,
)

NAME = "price_total"


TRANSFORMS = {"items.py": ITEMS_MIGRATION}


# Every _id type MongoDB allows, in its comparison order (arrays and regexes cannot be _ids).
# One binData: the local server compares a UUID and other binData as two types, and strings by
# UTF-16 rather than UTF-8 bytes (docs/testing.md), so those mixes are left out here.
MIXED_IDS = [MinKey(), None, -5, 1.5, Int64(7), Decimal128("8.25"), "B", "a", "zz",
             {"a": 1}, {"b": 0},
             uuid.UUID(int=1), ObjectId("0" * 24), ObjectId("f" * 24), False, True,
             dt.datetime(1999, 1, 1, tzinfo=dt.UTC), dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
             Timestamp(5, 1), MaxKey()]


def test_split_points_cut_the_key_space_into_contiguous_ranges_unbounded_at_both_ends():
    ranges = split([3, "m", ObjectId("0" * 24)])

    assert len(ranges) == 4
    assert ranges[0] == KeyRange(hi=3, has_hi=True)
    assert ranges[1] == KeyRange(lo=3, hi="m", has_lo=True, has_hi=True)
    assert ranges[-1] == KeyRange(lo=ObjectId("0" * 24), has_lo=True)
    assert split([]) == [KeyRange()] and range_filter(KeyRange()) == {}


def test_a_range_across_types_names_the_types_between_its_bounds():
    query = range_filter(KeyRange(lo=3, hi=ObjectId("0" * 24), has_lo=True, has_hi=True))

    lower, upper = query["$and"]
    assert lower == {"$or": [{"_id": {"$gte": 3}}, {"_id": {"$type": [
        "string", "object", "array", "binData", "objectId", "bool", "date", "timestamp",
        "regex", "maxKey"]}}]}
    assert upper == {"$or": [{"_id": {"$lt": ObjectId("0" * 24)}}, {"_id": {"$type": [
        "minKey", "null", "int", "long", "double", "decimal", "string", "object", "array",
        "binData"]}}]}


def test_quantiles_are_evenly_spaced_and_distinct_as_mongodb_tells_ids_apart():
    assert quantiles(list(range(100)), 4) == [25, 50, 75]
    # 1, 1.0 and Int64(1) are one _id to MongoDB: never two split points.
    assert quantiles([0, 1, 1.0, Int64(1), 2], 5) == [1, 2]
    assert quantiles([], 8) == [] and quantiles([1, 2], 1) == []
    assert ranges_for(500, 32) == 1 and ranges_for(10_000, 32) == 10
    assert ranges_for(10**9, 32) == 32


@pytest.mark.services
def test_the_server_orders_mixed_ids_as_mongodb_and_ranges_cover_each_once(settings):
    mixed = settings.db.mixed  # the tool's codec: standard UUIDs
    shuffled = list(MIXED_IDS)
    random.Random(3).shuffle(shuffled)
    mixed.insert_many([{"_id": i} for i in shuffled])

    assert [d["_id"] for d in mixed.find(sort=[("_id", 1)])] == MIXED_IDS
    points = split_points(mixed, None, 7)
    assert len(points) >= 4, points
    owners: dict[str, list[int]] = {}
    for index, key_range in enumerate(split(points)):
        for doc in mixed.find(range_filter(key_range)):
            owners.setdefault(repr(doc["_id"]), []).append(index)
    assert sorted(owners) == sorted(map(repr, MIXED_IDS))
    assert all(len(found) == 1 for found in owners.values()), owners
    # The ranges follow the order: every _id of range k sorts before every one of range k+1.
    order = [owners[repr(i)][0] for i in MIXED_IDS]
    assert order == sorted(order)


@pytest.mark.services
def test_a_range_is_claimed_by_one_worker_at_a_time(db):
    ranges = RangeStore(db.cdc_migrator_state)
    assert ranges.begin_planning(NAME, "planner", hold=60, armed_at=1)
    assert not ranges.begin_planning(NAME, "other", hold=60, armed_at=1)
    ranges.save_plan(NAME, split(list(range(0, 100, 10))), armed_at=1)
    claims: list = []

    def claim_all(owner: str) -> None:
        while (claim := ranges.claim(NAME, owner, lease=60)) is not None:
            claims.append(claim)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(c.range.index for c in claims) == list(range(11))
    # A lease that ran out is taken over; the old holder's writes then match nothing.
    old = claims[0]
    db.cdc_migrator_state.update_one({"_id": old.range.id}, {"$set": {"lease_until": 0}})
    new = ranges.claim(NAME, "w9", lease=60)
    assert new.range.index == old.range.index and new.taken_from == old.owner
    assert not ranges.save_position(old, 5, 1, lease=60)
    assert not ranges.finish(old)
    assert ranges.save_position(new, 5, 1, lease=60) and ranges.finish(new)


@pytest.mark.services
def test_a_backfill_saved_by_the_version_without_ranges_resumes_from_its_position(
        db, settings, transforms):
    seed_items(db.items, random.Random(5), 6000)
    migration = get_migration(transforms, NAME)
    arm(settings, migration)
    # The state as the earlier version left it: one position after 2,999, 3,000 scanned.
    db.cdc_migrator_state.update_one({"_id": NAME}, {"$set": {
        "phase": "backfilling", "backfill": {"total": 6000, "scanned": 3000, "done": False,
                                             "cursor": 2999}}})

    report = api.backfill(settings, NAME, show_progress=False)

    assert report.done and report.resumed
    assert report.scanned == 3000 and report.total_scanned == 6000
    ranges = RangeStore(db.cdc_migrator_state).ranges(NAME)
    assert len(ranges) > 1 and all(r.done for r in ranges)
    assert sum(r.scanned for r in ranges) == 3000


@pytest.mark.services
def test_backfill_reset_starts_every_range_over(db, settings, transforms):
    seed_items(db.items, random.Random(6), 5000)
    arm(settings, get_migration(transforms, NAME))
    first = api.backfill(settings, NAME, show_progress=False, workers=2)
    assert first.done and first.scanned == 5000
    assert api.backfill(settings, NAME, show_progress=False).scanned == 0  # done: nothing

    again = run_cli("backfill", NAME, "--reset", "-q", settings=settings)

    assert again.returncode == 0, again.stderr
    assert "5,000 documents produced in this run, 5,000 in all" in again.stdout
    ranges = RangeStore(db.cdc_migrator_state).ranges(NAME)
    assert len(ranges) == 5 and all(r.done for r in ranges)
    assert sum(r.scanned for r in ranges) == 5000


@pytest.mark.services
def test_a_reset_while_another_backfill_runs_replans_and_both_finish_the_new_pass(
        db, settings, transforms):
    seed_items(db.items, random.Random(10), 6000)
    arm(settings, get_migration(transforms, NAME))
    assert run_cli("throttle", NAME, "--rate", "1500", settings=settings).returncode == 0
    running = CliProcess(settings, "backfill", NAME, "--batch-size", "100", "-q")
    try:
        wait_for(lambda: _scanned(db) >= 1000, timeout=60, what="the first backfill at work")
        old = {r.id: r.scanned for r in RangeStore(db.cdc_migrator_state).ranges(NAME)}
        reset = run_cli("backfill", NAME, "--reset", "--batch-size", "100", "-q",
                        settings=settings)
        assert reset.returncode == 0, reset.stderr
        assert running.wait(timeout=120) == 0, running.log
    finally:
        running.stop()
    ranges = RangeStore(db.cdc_migrator_state).ranges(NAME)
    assert ranges and all(r.done for r in ranges)
    assert sum(r.scanned for r in ranges) >= 6000  # the new pass covered everything
    assert sum(old.values()) >= 1000 and "finished" in reset.stdout
    state = StateStore(db).get(NAME)
    assert state.backfill.done


def _scanned(db) -> int:
    return ((db.cdc_migrator_state.find_one({"_id": NAME}) or {}).get("backfill")
            or {}).get("scanned", 0)


# ----------------------------------------------------------- planning without reading it whole

def test_the_order_of_ids_is_known_where_mongodb_compares_them_simply():
    ordered = [MinKey(), None, -5, 1.5, Int64(7), Decimal128("8.25"), "B", "a", "zz",
               "\U0001F600", ObjectId("0" * 24), ObjectId("f" * 24), False, True,
               dt.datetime(1999, 1, 1), Timestamp(5, 1), MaxKey()]
    for i, a in enumerate(ordered):
        for j, b in enumerate(ordered):
            assert bsontypes.compare(a, b) == (i > j) - (i < j), (a, b)
    assert bsontypes.compare(1, 1.0) == 0 and bsontypes.compare("\ufffd", "\U0001F600") == -1
    assert bsontypes.compare({"a": 1}, {"a": 2}) is None  # not known here: left to the server
    assert bsontypes.compare(float("nan"), 1) is None


def test_chunk_boundaries_always_cut_and_sampled_points_fill_the_gaps_between():
    assert with_boundaries([5, 10, 15, 20, 25], [10, 18]) == [5, 10, 15, 18, 20, 25]
    assert with_boundaries([], [10, 18]) == [10, 18]
    # a point whose order is not known here is left out; the boundaries stay
    assert with_boundaries([30, {"b": 2}], [{"a": 1}]) == [30, {"a": 1}]


def test_planning_samples_the_collection_without_reading_the_filtered_documents_whole(
        private_mongo):
    # Regression (issue 25): $match before $sample read (and sorted) every matching document.
    items = private_mongo.plan.items
    items.insert_many([{"_id": i, "n": i} for i in range(20_000)])
    condition = {"n": {"$mod": [3, 0]}}

    before = scanned_objects(private_mongo)
    points = split_points(items, condition, 32)
    read = scanned_objects(private_mongo) - before
    found = sample(items, condition, 640)

    assert len(points) == 31 and read < 1000  # 640 sampled; $match first read all 20,000
    assert found.total == pytest.approx(6667, rel=0.25) and found.estimate
    assert "times the share of a sample of 640 that matches" in found.estimate
    small = sample(items, condition, 5000)  # more than 5%: read whole, counted exactly
    assert small.total == 6667 and small.estimate is None


@pytest.mark.parametrize(("key", "cut"), [({"_id": 1}, [100, 200, 300]),
                                          ({"_id": "hashed"}, [])])
def test_a_collection_sharded_on_id_is_cut_where_its_chunks_change_shard(
        mongos_mongo, tmp_path, key, cut):
    db = mongos_mongo[f"t_{uuid.uuid4().hex[:10]}"]
    seed_sharded_collection(mongos_mongo, f"{db.name}.items", key,
                            [100, 200, 300] if key["_id"] == 1 else [-10, 10], shards=2)
    seed_items(db.items, random.Random(7), 400)
    (tmp_path / "items.py").write_text(ITEMS_MIGRATION)
    host, port = mongos_mongo.address
    settings = Settings(mongodb_uri=f"mongodb://{host}:{port}/{db.name}?directConnection=true",
                        kafka_bootstrap_servers=KAFKA, transforms=tmp_path,
                        topic_prefix=f"t-{db.name}", group_prefix=f"g-{db.name}", partitions=2)
    try:
        arm(settings, get_migration(tmp_path, NAME))
        report = api.backfill(settings, NAME, show_progress=False)
        planned = RangeStore(db.cdc_migrator_state).ranges(NAME)
    finally:
        settings.close()
        mongos_mongo.drop_database(db.name)
    assert report.done and report.total_scanned == 400
    # 400 documents make one range by size alone: the cuts are the chunks' (shard00, shard01,
    # shard00, shard01), none for a hashed key (an _id range is on every shard there)
    assert [r.key_range.hi for r in planned[:-1]] == cut
    assert [r.key_range.lo for r in planned[1:]] == cut
