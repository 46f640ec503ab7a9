"""Several processes sharing a backfill and the consumer group on the real services: killed at
random points, throttled while they run, held on a replication lag the server reports; a
bad throttle refused."""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from cdc_migrator.base import topology
from cdc_migrator.capture.leases import (
    RangeStore,
)
from cdc_migrator.capture.tailer import arm
from cdc_migrator.core.state import StateStore
from cdc_migrator.migration import get_migration

from ..harness import (
    ITEMS_MIGRATION,
    CliProcess,
    ItemsWriter,
    assert_invariant,
    run_cli,
    seed_items,
    wait_for,
)

NAME = "price_total"
TRANSFORMS = {"items.py": ITEMS_MIGRATION}


# ------------------------------------------------------------------ pure logic


# ------------------------------------------------------------------ on the real server


def _scanned(db) -> int:
    return ((db.cdc_migrator_state.find_one({"_id": NAME}) or {}).get("backfill")
            or {}).get("scanned", 0)


def _rate_over(read, docs: int, timeout: float) -> float:
    """Documents per second that ``read`` shows moving over the next ``docs`` documents."""
    start, started = read(), time.monotonic()
    wait_for(lambda: read() - start >= docs, timeout=timeout, what=f"{docs} documents")
    return (read() - start) / (time.monotonic() - started)


@pytest.mark.services
def test_three_backfills_and_two_consumers_killed_at_random_lose_nothing(db, settings,
                                                                        transforms):
    seed = int(os.environ.get("CDC_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed={seed}")
    rng = random.Random(seed)
    coll = db["items"]
    expected = seed_items(coll, rng, 12_000)
    lease = ["--lease-seconds", "2"]
    backfills = [("backfill", NAME, "--batch-size", "200", "--rate", "2500", "-q", *lease),
                 ("backfill", NAME, "--batch-size", "200", "--rate", "2500", "-q", *lease),
                 ("backfill", NAME, "--batch-size", "200", "--rate", "2500", "--workers", "2",
                  "-q", *lease)]
    tail = CliProcess(settings, "tail", NAME)
    consumers = [CliProcess(settings, "consume", NAME, "--instance-id", f"c{i}") for i in range(2)]
    procs: list[CliProcess] = []
    started: list[CliProcess] = []
    writer = ItemsWriter(coll, random.Random(seed + 1), next_id=12_000, expected=expected)
    try:
        wait_for(lambda: (db.cdc_migrator_state.find_one({"_id": NAME}) or {}).get(
            "tail", {}).get("armed_at"), what="armed")
        procs = [CliProcess(settings, *args) for args in backfills]
        started = list(procs)
        writer.start()
        kills = consumer_kills = 0
        finished = RangeStore(db.cdc_migrator_state)
        while kills < 6:
            # Kill a worker in the middle of its work: after it moved the count.
            before = _scanned(db)
            wait_for(lambda b=before: _scanned(db) > b or not any(p.alive for p in procs),
                     timeout=60, what="backfill progress")
            time.sleep(rng.uniform(0, 0.3))
            alive = [i for i, p in enumerate(procs) if p.alive]
            if not alive:
                break
            if rng.random() < 0.25:  # now and then a consumer, restarted under its name
                member = rng.randrange(len(consumers))
                consumers[member].kill()
                consumers[member] = CliProcess(settings, "consume", NAME, "--instance-id",
                                         f"c{member}")
                consumer_kills += 1
            victim = rng.choice(alive)
            procs[victim].kill()
            kills += 1
            if rng.random() < 0.7:  # mostly restarted; some ranges wait for their lease
                procs[victim] = CliProcess(settings, *backfills[victim])
                started.append(procs[victim])
        if not any(p.alive for p in procs):  # all killed: one more finishes the rest
            procs.append(CliProcess(settings, *backfills[0]))
            started.append(procs[-1])
        for proc in procs:
            if proc.alive:
                assert proc.wait(timeout=240) == 0, proc.log
        writer.finish()
        ranges = finished.ranges(NAME)
        assert ranges and all(r.done for r in ranges)
        done = run_cli("cutover", NAME, "--timeout", "120s", settings=settings, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        writer.stop.set()
        for proc in [*procs, *consumers, tail]:
            proc.stop()
    print(f"seed={seed}: {kills} backfill workers and {consumer_kills} consumers killed; "
          f"writer ops {writer.ops}")
    logs = "\n".join(p.log for p in started)
    assert kills >= 3 and "taken over from" in logs, logs[-3000:]
    owners = {r["finished_by"].rsplit(":", 2)[1] for r in db.cdc_migrator_state.find(
        {"range_of": NAME, "kind": "range"})}
    assert len(owners) >= 2, "the ranges were not shared"
    assert_invariant(coll, writer.expected, writer.deleted)
    verified = run_cli("verify", NAME, settings=settings)
    assert verified.returncode == 0, verified.stdout


def _unmigrated(db) -> int:
    return db.items.count_documents({"legacy": True})


@pytest.mark.services
def test_a_throttle_change_reaches_the_running_backfill_and_consumers(db, settings,
                                                                    transforms):
    seed_items(db.items, random.Random(8), 30_000)
    tail = CliProcess(settings, "tail", NAME)
    procs = [tail]
    try:
        wait_for(lambda: (db.cdc_migrator_state.find_one({"_id": NAME}) or {}).get(
            "tail", {}).get("armed_at"), what="armed")
        assert run_cli("throttle", NAME, "--rate", "150", settings=settings).returncode == 0
        procs.append(CliProcess(settings, "backfill", NAME, "--batch-size", "100", "--workers", "2",
                          "-q"))
        slow_read = _rate_over(lambda: _scanned(db), 450, timeout=60)
        shown = json.loads(run_cli("status", NAME, "--json", settings=settings).stdout)
        text = run_cli("status", NAME, settings=settings).stdout

        changed = run_cli("throttle", NAME, "--rate", "3000", settings=settings)
        assert changed.returncode == 0 and "3000 documents/s" in changed.stdout
        fast_read = _rate_over(lambda: _scanned(db), 6000, timeout=60)
        assert procs[-1].wait(timeout=120) == 0, procs[-1].log  # the backfill finished
        # The consumers start on the whole backlog: their own pace is what the count shows.
        assert run_cli("throttle", NAME, "--rate", "150", settings=settings).returncode == 0
        procs += [CliProcess(settings, "consume", NAME) for _ in range(2)]
        wait_for(lambda: _unmigrated(db) < 20_000 - 100, timeout=60, what="consumers at work")
        slow_applied = _rate_over(lambda: 30_000 - _unmigrated(db), 450, timeout=60)
        assert run_cli("throttle", NAME, "--off", settings=settings).returncode == 0
        fast_applied = _rate_over(lambda: 30_000 - _unmigrated(db), 6000, timeout=60)
    finally:
        for proc in procs:
            proc.stop()
    print(f"read {slow_read:.0f} -> {fast_read:.0f}/s, applied {slow_applied:.0f} -> "
          f"{fast_applied:.0f}/s")
    assert slow_read < 150 * 1.4 and slow_applied < 150 * 1.4
    assert fast_read > 4 * slow_read and fast_applied > 4 * slow_applied
    assert shown["throttle"]["rate"] == 150 and shown["throttle"]["reason"] == "manual"
    ranges = shown["backfill"]["ranges"]
    assert ranges["total"] == 30 and 1 <= len(ranges["in_progress"]) <= 2
    assert all(r["owner"] for r in ranges["in_progress"])
    assert ranges["done"] + len(ranges["in_progress"]) + ranges["left"] == 30
    assert "throttle: manual, 150 documents/s" in text
    assert f"in progress (#{ranges['in_progress'][0]['range']} by " in text


@pytest.fixture
def secondaries(mongo_client, local_servers):
    """The local server answers replSetGetStatus with secondaries this far behind (seconds)."""
    def lag(*seconds: float) -> None:
        mongo_client.admin.command({"setSecondaryLag": list(seconds)})
    yield lag
    lag()


@pytest.mark.services
def test_the_backfill_holds_while_replication_lags_and_status_says_why(
        db, settings, transforms, secondaries, mongo_client):
    assert topology.replica_set_lag(mongo_client).seconds is None  # standalone: no bound
    secondaries(0.5, 30)
    assert topology.replica_set_lag(mongo_client).seconds == pytest.approx(30, abs=1.5)
    seed_items(db.items, random.Random(9), 3000)
    arm(settings, get_migration(transforms, NAME))
    backfill = CliProcess(settings, "backfill", NAME, "--max-replication-lag", "5s", "-q")
    try:
        held = wait_for(lambda: json.loads(run_cli("status", NAME, "--json",
                                                   settings=settings).stdout)["throttle"]
                        ["hold"], timeout=60, what="a hold")
        text = run_cli("status", NAME, settings=settings).stdout
        assert _scanned(db) == 0, "read while the secondaries lagged"
        secondaries(0.5, 1)
        assert backfill.wait(timeout=120) == 0, backfill.log
    finally:
        backfill.stop()
    assert held["bound"] == "replication lag" and held["limit"] == 5 and held["value"] >= 29
    assert "throttle: auto, holding: replication lag" in text and "> 5.0 s" in text
    assert _scanned(db) == 3000
    assert "holding: replication lag" in backfill.log


@pytest.fixture
def members(mongo_client, local_servers):
    """The local server answers as the primary of a replica set with these members."""
    def declare(*declared: dict) -> None:
        mongo_client.admin.command({"setReplicaSetMembers": list(declared)})
    yield declare
    declare()


@pytest.mark.services
def test_a_delayed_hidden_member_does_not_hold_the_backfill(db, settings, transforms, members):
    # Regression (issue 25): a backup member an hour behind by design counted as replication
    # lag, and the backfill held ("replication lag 3600.0 s > 5.0 s") forever.
    members({"lag": 0.5}, {"secondaryDelaySecs": 3600, "hidden": True, "priority": 0,
                           "votes": 0}, {"arbiterOnly": True})
    seed_items(db.items, random.Random(4), 300)
    arm(settings, get_migration(transforms, NAME))
    backfill = CliProcess(settings, "backfill", NAME, "--max-replication-lag", "5s", "-q")
    try:
        wait_for(lambda: backfill.returncode is not None or backfill.count("holding"),
                 timeout=120, what="the backfill's end, or a hold")
        assert not backfill.count("holding"), backfill.log
        assert backfill.wait() == 0, backfill.log
    finally:
        backfill.stop()
    assert _scanned(db) == 300


@pytest.mark.services
@pytest.mark.parametrize(("args", "code", "message"), [
    (["--rate", "-5"], 2, "invalid value '-5' for throttle --rate: expected a finite number"),
    (["--rate", "0"], 2, "invalid value '0' for throttle --rate: expected a finite number"),
    (["--rate", "inf"], 2, "invalid value 'inf' for throttle --rate: expected a finite"),
    (["--rate", "1e309"], 2, "invalid value '1e309' for throttle --rate: expected a finite"),
    (["--rate", "nan"], 2, "invalid value 'nan' for throttle --rate: expected a finite"),
    ([], 2, "give either --rate DOCS/S or --off"),
    (["--rate", "5", "--off"], 2, "give either --rate DOCS/S or --off"),
])
def test_a_bad_throttle_is_refused_in_one_line_and_changes_nothing(db, settings, transforms,
                                                                   args, code, message):
    StateStore(db).ensure(NAME, "items")
    StateStore(db).set_throttle(NAME, 42)
    before = db.cdc_migrator_state.find_one({"_id": NAME})

    result = run_cli("throttle", NAME, *args, settings=settings)

    assert result.returncode == code and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert db.cdc_migrator_state.find_one({"_id": NAME}) == before


@pytest.mark.services
def test_throttling_a_migration_never_started_is_refused_and_creates_no_state(db, settings,
                                                                             transforms):
    result = run_cli("throttle", NAME, "--rate", "10", settings=settings)

    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"cdc-migrator: cannot throttle {NAME}: it has not started (no state yet); start it "
        "(tail, then backfill, or run), then throttle it; nothing changed")
    assert db.cdc_migrator_state.count_documents({}) == 0


@pytest.mark.services
@pytest.mark.parametrize("stored", [float("inf"), "fast", -3.0])
def test_an_invalid_throttle_in_the_state_is_refused_and_crashes_no_worker(db, settings,
                                                                          transforms, stored):
    """A throttle written by an older version (``throttle --rate inf`` was taken) or by hand:
    the backfill and the consumers go on at the pace they had (none), say why once, and
    ``status`` shows it refused. Before, every consumer died on ``int(inf)``."""
    seed_items(db.items, random.Random(10), 300)
    arm(settings, get_migration(transforms, NAME))
    db.cdc_migrator_state.update_one({"_id": NAME}, {"$set": {"throttle.rate": stored}})

    ran = run_cli("run", NAME, "--timeout", "120s", "-q", settings=settings)
    shown = json.loads(run_cli("status", NAME, "--json", settings=settings).stdout)
    text = run_cli("status", NAME, settings=settings).stdout

    assert ran.returncode == 0, ran.stderr
    assert _unmigrated(db) == 0
    refusal = (f"invalid value {stored!r} for throttle.rate in the state of {NAME}: expected "
               "a finite number of documents per second above 0; the workers keep the pace "
               f"they had. Replace it: `cdc-migrator throttle {NAME} --rate DOCS/S` or `--off`")
    assert refusal in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert shown["throttle"]["refused"] == refusal and shown["throttle"]["rate"] is None
    assert f"throttle REFUSED: {refusal}" in text
    replaced = run_cli("throttle", NAME, "--rate", "500", settings=settings)
    assert replaced.returncode == 0 and json.loads(run_cli(
        "status", NAME, "--json", settings=settings).stdout)["throttle"]["refused"] is None


@pytest.mark.services
def test_throttling_an_unknown_migration_is_refused_and_writes_nothing(db, settings,
                                                                      transforms):
    result = run_cli("throttle", "price_totl", "--rate", "10", settings=settings)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no migration named 'price_totl'" in lines[0], lines
    assert db.cdc_migrator_state.count_documents({}) == 0
