"""Cutover: a fence that proves the lag, a refusal with every reason, the contract schema checked
and applied (or refused by the server); the operator's commands around it (pause, cancel,
next), cutover catching up by itself after `run`, and `status` saying why cutover waits for
the partitions of a killed consumer."""

from __future__ import annotations

import json
import textwrap
import threading

import pytest

from cdc_migrator.base import topics
from cdc_migrator.base.naming import FENCE_COLLECTION
from cdc_migrator.capture.tailer import arm
from cdc_migrator.core.state import Phase, StateStore
from cdc_migrator.errors import UsageError
from cdc_migrator.migration import get_migration
from cdc_migrator.operations.schema import dialect_problems

from ..harness import (
    CliProcess,
    run_cli,
    state_of,
    wait_drained,
    wait_for,
    wait_for_state,
    write_transforms,
)

MIGRATIONS = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="accounts")
    def add_tier(doc, ctx):
        if doc.get("tier") is None:
            if doc.get("explode"):
                raise ValueError("cannot migrate an exploding account")
            return {"tier": "free"}

    @migration(collection="accounts")
    def add_region(doc, ctx):
        if "region" not in doc:
            return {"region": "eu"}
''')
TRANSFORMS = {"accounts.py": MIGRATIONS}


def seed(db, n, start=0):
    db.accounts.insert_many([{"_id": start + i, "name": f"a{i}"} for i in range(n)])


class Deployment:
    """tail and consume (at -v) as separate processes, stopped with SIGTERM at the end."""

    def __init__(self, settings, name, consumers=1):
        self.procs = [CliProcess(settings, "tail", name)]
        self.consumers = [CliProcess(settings, "consume", name, "-v") for _ in range(consumers)]
        self.procs += self.consumers

    def stop(self):
        for proc in self.procs:
            if proc.alive:
                proc.proc.terminate()
        return [proc.wait(timeout=60) for proc in self.procs]


def test_cutover_refuses_until_backfill_lag_and_unmigrated_documents_clear(db, settings,
                                                                          transforms):
    seed(db, 3000)
    arm(settings, get_migration(transforms, "add_tier"))
    refused = run_cli("cutover", "add_tier", "--timeout", "1s", settings=settings)
    assert refused.returncode == 1
    assert "backfill unfinished" in refused.stdout
    assert "3,000 documents unmigrated" in refused.stdout

    tail = CliProcess(settings, "tail", "add_tier")
    consume = None
    try:
        wait_for_state(db, "add_tier", lambda s: (s.get("tail") or {}).get("heartbeat"))
        assert run_cli("backfill", "add_tier", "-q", settings=settings).returncode == 0
        # Paused, no consumer applies anything (not even the one cutover would start).
        assert run_cli("pause", "add_tier", settings=settings).returncode == 0
        behind = run_cli("cutover", "add_tier", "--timeout", "2s", settings=settings)
        assert behind.returncode == 1
        assert "events behind" in behind.stdout and "backfill" not in behind.stdout
        assert run_cli("resume", "add_tier", settings=settings).returncode == 0

        consume = CliProcess(settings, "consume", "add_tier")
        wait_drained(settings, get_migration(transforms, "add_tier"), process=consume)
        ok = run_cli("cutover", "add_tier", "--timeout", "60s", settings=settings)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "cut over" in ok.stdout
        state = db.cdc_migrator_state.find_one({"_id": "add_tier"})
        assert state["phase"] == Phase.CUT_OVER and state["completed_at"]
        assert db.accounts.count_documents({"tier": "free"}) == 3000
        assert consume.stop() == 0
    finally:
        for process in (consume, tail):
            if process is not None and process.alive:
                process.stop()


def test_cutover_refuses_while_documents_fail_and_names_them(db, settings, transforms):
    seed(db, 200)
    db.accounts.update_many({"_id": {"$in": [3, 7]}}, {"$set": {"explode": True}})
    assert run_cli("apply", "add_tier", "-q", settings=settings).returncode == 1
    refused = run_cli("cutover", "add_tier", settings=settings)
    assert refused.returncode == 1
    assert "2 documents make the transform raise" in refused.stdout
    db.accounts.update_many({}, {"$unset": {"explode": ""}})
    db.accounts.insert_one({"_id": 999, "name": "late"})
    late = run_cli("cutover", "add_tier", settings=settings)
    assert late.returncode == 1 and "3 documents unmigrated" in late.stdout
    assert run_cli("apply", "add_tier", "-q", settings=settings).returncode == 0
    assert run_cli("cutover", "add_tier", settings=settings).returncode == 0


def test_fence_waits_for_every_partition_with_several_consumers(db, settings, transforms):
    seed(db, 6000)
    deployment = Deployment(settings, "add_tier", consumers=2)
    try:
        wait_for_state(db, "add_tier", lambda s: (s.get("tail") or {}).get("heartbeat"))
        assert run_cli("backfill", "add_tier", "-q", settings=settings).returncode == 0
        # Cut over at once: the fence makes cutover wait for every event before it. How far
        # the fence got is watched while cutover waits (it forgets the fence when done).
        store = StateStore(db, settings.state_collection)
        reached: list[int] = []
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                state = store.get("add_tier")
                reached.extend(len(p) for p in (state.fences.values() if state else ()))
                watching.wait(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        result = run_cli("cutover", "add_tier", "--timeout", "120s", settings=settings)
        watching.set()
        watcher.join()
        assert result.returncode == 0, result.stdout + result.stderr
        assert max(reached) == settings.partitions, "a fence passed by every partition"
        # Done: the fence document and what the state knew of it are gone.
        assert store.get("add_tier").fences == {}
        assert db[FENCE_COLLECTION].count_documents({}) == 0
        assert db.accounts.count_documents({"tier": {"$ne": "free"}}) == 0
        lag = topics.group_lag(settings, settings.topic("accounts"),
                               settings.group("add_tier"))
        assert lag.total == 0
    finally:
        assert deployment.stop() == [0, 0, 0]


def test_pause_holds_and_resume_continues(db, settings, transforms):
    seed(db, 100)
    deployment = Deployment(settings, "add_tier")
    try:
        wait_for_state(db, "add_tier", lambda s: (s.get("tail") or {}).get("heartbeat"))
        assert run_cli("backfill", "add_tier", "-q", settings=settings).returncode == 0
        migration = get_migration(transforms, "add_tier")
        wait_drained(settings, migration)
        assert run_cli("pause", "add_tier", settings=settings).returncode == 0
        (consumer,) = deployment.consumers
        wait_for(lambda: consumer.count("paused: holding the position"),
                 what="the consumer holding after pause")
        produced = db.cdc_migrator_state.find_one({"_id": "add_tier"})["counts"]["produced"]
        seed(db, 50, start=1000)
        topic, group = settings.topic("accounts"), settings.group("add_tier")
        # The tailer counts them once the broker acknowledged them. The lag counts records,
        # and the tailer sends a partition's changes of one round trip as one record.
        wait_for_state(db, "add_tier", lambda s: s["counts"]["produced"] >= produced + 50)
        lag = topics.group_lag(settings, topic, group).total
        assert 0 < lag <= 50
        # The paused consumer checks the flag every second and polls (every partition
        # paused) for 200 ms at a time in between. Three checks after the events were on its
        # partitions are two seconds of polls to which they were there to take: a consumer
        # that did not hold would have applied them within the first (its fetches wait at
        # most 500 ms). The checks are logged at -v, so the window is what it says.
        held = consumer.count("still paused")
        wait_for(lambda: consumer.count("still paused") >= held + 3,
                 what="three pause checks with the events on the topic")
        assert db.accounts.count_documents({"tier": None}) == 50, "paused, yet applied"
        status = json.loads(run_cli("status", "add_tier", "--json", settings=settings).stdout)
        assert status["paused"] and status["lag"]["total"] == lag
        assert run_cli("resume", "add_tier", settings=settings).returncode == 0
        wait_drained(settings, migration)
        assert db.accounts.count_documents({"tier": None}) == 0
    finally:
        assert deployment.stop() == [0, 0]


def test_cancel_refuses_further_work_and_reset_starts_over(db, settings, transforms):
    seed(db, 10)
    assert run_cli("cancel", "add_tier", settings=settings).returncode == 0
    tail = run_cli("tail", "add_tier", settings=settings, timeout=60)
    assert tail.returncode == 1 and "cancelled" in tail.stderr
    assert db.accounts.count_documents({"tier": "free"}) == 0
    assert run_cli("reset", "add_tier", "--yes", settings=settings).returncode == 0
    assert db.cdc_migrator_state.find_one({"_id": "add_tier"}) is None
    assert run_cli("apply", "add_tier", "-q", settings=settings).returncode == 0
    assert db.accounts.count_documents({"tier": "free"}) == 10


def test_next_runs_migrations_of_a_collection_in_series(db, settings, transforms):
    seed(db, 10)
    first = run_cli("next", "accounts", settings=settings)
    assert first.returncode == 0 and first.stdout.strip() == "add_tier"
    assert run_cli("apply", "add_tier", "-q", settings=settings).returncode == 0
    assert run_cli("next", "accounts", settings=settings).stdout.strip() == "add_tier"
    assert run_cli("cutover", "add_tier", settings=settings).returncode == 0
    assert run_cli("next", "accounts", settings=settings).stdout.strip() == "add_region"
    assert run_cli("apply", "add_region", "-q", settings=settings).returncode == 0
    assert run_cli("cutover", "add_region", settings=settings).returncode == 0
    done = run_cli("next", "accounts", settings=settings)
    assert done.returncode == 1 and "every migration" in done.stdout


def test_next_run_cuts_over_each_migration_before_starting_the_next(db, settings, transforms):
    seed(db, 300)
    result = run_cli("next", "accounts", "--run", "--timeout", "120s", settings=settings,
                     timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    states = {s["_id"]: s for s in db.cdc_migrator_state.find()}
    assert states["add_tier"]["phase"] == states["add_region"]["phase"] == Phase.CUT_OVER
    assert states["add_tier"]["completed_at"] <= states["add_region"]["created_at"]
    assert db.accounts.count_documents({"tier": "free", "region": "eu"}) == 300


def _ordered(tmp_path, settings, files: dict[str, str]) -> None:
    """Transforms of accounts: ``{file name: "name[:after]" ...}`` (space-separated)."""
    transforms = tmp_path / "ordered"
    transforms.mkdir()
    for file, names in files.items():
        lines = ["from cdc_migrator import migration"]
        for spec in names.split():
            name, _, after = spec.partition(":")
            lines += ["", "@migration(collection='accounts'"
                          + (f", after={after!r})" if after else ")"),
                      f"def {name}(doc, ctx):",
                      f"    return {{{name!r}: 1}} if {name!r} not in doc else None"]
        (transforms / file).write_text("\n".join(lines) + "\n")
    settings.transforms = transforms


def test_next_follows_after_rather_than_the_file_order(db, settings, tmp_path):
    seed(db, 10)
    _ordered(tmp_path, settings, {"a.py": "add_tier", "b.py": "add_region:add_flag",
                                  "c.py": "add_flag:add_tier"})
    assert run_cli("next", "accounts", settings=settings).stdout.strip() == "add_tier"
    assert run_cli("apply", "add_tier", "-q", settings=settings).returncode == 0
    assert run_cli("cutover", "add_tier", settings=settings).returncode == 0
    assert run_cli("next", "accounts", settings=settings).stdout.strip() == "add_flag"


@pytest.mark.parametrize("files, refusal", [
    ({"a.py": "add_tier", "b.py": "add_region:add_tier", "c.py": "add_flag:add_tier"},
     "the order of accounts forks: add_region and add_flag follow add_tier; give one of them "
     "after= the other"),
    ({"a.py": "add_tier add_region:add_flag add_flag:add_region"},
     "the order of accounts has a cycle: add_flag -> add_region -> add_flag"),
])
def test_next_refuses_a_fork_or_a_cycle_in_one_line_and_runs_nothing(db, settings, tmp_path,
                                                                     files, refusal):
    seed(db, 10)
    _ordered(tmp_path, settings, files)
    for args in (("next", "accounts"), ("next", "accounts", "--run")):
        result = run_cli(*args, settings=settings)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == "" and result.stderr == f"cdc-migrator: {refusal}\n"
    assert db.list_collection_names() == ["accounts"]


CONTRACTED = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="users", contract_schema="{schema}")
    def add_role(doc, ctx):
        if doc.get("role") is None:
            return {{"role": "user"}}
''')


def _contracted(settings, tmp_path, schema: dict) -> None:
    transforms = tmp_path / "transforms"
    transforms.mkdir(exist_ok=True)
    (tmp_path / "schemas").mkdir(exist_ok=True)
    (tmp_path / "schemas" / "users.contract.json").write_text(json.dumps(schema))
    (transforms / "users.py").write_text(CONTRACTED.format(schema="users.contract.json"))
    settings.transforms = transforms


GOOD_SCHEMA = {"bsonType": "object", "required": ["role"],
               "properties": {"role": {"enum": ["user", "admin"]}}}


@pytest.mark.local_server("failCommand; and collMod answers 59 (no validators) here")
def test_cutover_refuses_and_records_nothing_when_the_server_refuses_collmod(db, settings,
                                                                             tmp_path):
    _contracted(settings, tmp_path, GOOD_SCHEMA)
    db.users.insert_many([{"_id": i} for i in range(5)])
    assert run_cli("apply", "add_role", "-q", settings=settings).returncode == 0
    admin = db.client.admin
    admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                   "data": {"failCommands": ["collMod"], "errorCode": 13}})
    try:
        refused = run_cli("cutover", "add_role", settings=settings)
    finally:
        admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the server refused the contract schema users.contract.json" in refused.stdout
    assert "(collMod 13:" in refused.stdout
    assert state_of(db, "add_role")["phase"] != Phase.CUT_OVER
    # This server has no validators at all (59): that is no refusal, and cutover says so.
    done = run_cli("cutover", "add_role", settings=settings)
    assert done.returncode == 0, done.stdout
    assert "The server has no validators (59" in done.stdout
    assert state_of(db, "add_role")["phase"] == Phase.CUT_OVER


def test_a_contract_schema_mongodb_rejects_stops_cutover_before_it_writes(db, settings,
                                                                        tmp_path):
    _contracted(settings, tmp_path, {"bsonType": "object", "properties": {
        "role": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}})
    db.users.insert_many([{"_id": i} for i in range(5)])
    assert run_cli("apply", "add_role", "-q", settings=settings).returncode == 0
    before = state_of(db, "add_role")
    refused = run_cli("cutover", "add_role", settings=settings)
    assert refused.returncode == 2
    assert "type 'integer' is not supported by MongoDB" in refused.stderr
    assert "schema.properties.age" in refused.stderr and "Traceback" not in refused.stderr
    assert state_of(db, "add_role") == before
    assert "cdc_migrator_fences" not in db.list_collection_names()


def test_the_dialect_check_names_what_mongodb_rejects():
    assert dialect_problems(GOOD_SCHEMA) == []
    assert dialect_problems({"bsonType": ["int", "long"], "anyOf": [{"minimum": 1}],
                             "description": "ok"}) == []
    problems = dialect_problems({
        "$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
        "bsonType": "object", "definitions": {}, "properties": {
            "n": {"type": ["integer", "null"], "default": 0},
            "d": {"format": "date-time", "id": "x"},
            "k": {"bsonType": "uuid", "exclusiveMinimum": 1},
        }, "required": [], "additionalProperties": {"$ref": "#/x"}, "examples": []})
    expected = [
        "schema: keyword '$schema' is not supported by MongoDB",
        "schema: keyword 'definitions' is not supported by MongoDB",
        "schema: unknown keyword 'examples'",
        "schema: 'type' and 'bsonType' cannot both be given",
        "schema: 'required' must be a non-empty list of distinct names",
        "schema.properties.n: keyword 'default' is not supported by MongoDB",
        "schema.properties.n: type 'integer' is not supported by MongoDB (use bsonType 'int' "
        "or 'long', or ['int', 'long'])",
        "schema.properties.d: keyword 'format' is not supported by MongoDB",
        "schema.properties.d: keyword 'id' is not supported by MongoDB",
        "schema.properties.k: unknown bsonType 'uuid'",
        "schema.properties.k: 'exclusiveMinimum' must be true or false (draft 4)",
        "schema.properties.k: 'exclusiveMinimum' needs 'minimum'",
        "schema.additionalProperties: keyword '$ref' is not supported by MongoDB",
    ]
    assert problems == expected


def test_load_schema_refuses_a_schema_mongodb_rejects(settings, tmp_path):
    _contracted(settings, tmp_path, {"properties": {"x": {"type": "integer"}}})
    from cdc_migrator.operations.cutover import load_schema
    with pytest.raises(UsageError, match="not one MongoDB's \\$jsonSchema accepts"):
        load_schema(settings, "users.contract.json")


ACCOUNTS = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="accounts")
    def add_plan(doc, ctx):
        if "plan" not in doc:
            if doc.get("broken"):
                raise ValueError(f"account {doc['_id']} has no owner")
            return {"plan": "free"}
''')


def test_cutover_after_run_finished_catches_up_by_itself(db, settings, tmp_path):
    write_transforms(tmp_path, settings, {"accounts.py": ACCOUNTS})
    db.accounts.insert_many([{"_id": i} for i in range(500)])
    assert run_cli("run", "add_plan", "--timeout", "60s", "-q", settings=settings).returncode == 0
    # Written after the run ended, with nothing running: only the change stream has them.
    db.accounts.insert_many([{"_id": 1000 + i} for i in range(50)])
    db.accounts.update_one({"_id": 3}, {"$unset": {"plan": ""}})

    done = run_cli("cutover", "add_plan", "--timeout", "60s", settings=settings)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "add_plan: cut over." in done.stdout
    assert "No tailer or consumer was running: cutover caught up itself" in done.stdout
    assert db.accounts.count_documents({"plan": "free"}) == 550
    state = db.cdc_migrator_state.find_one({"_id": "add_plan"})
    assert state["phase"] == Phase.CUT_OVER


def holding_partitions(settings, name: str) -> list[topics.GroupMember]:
    return [m for m in topics.group_description(settings, settings.group(name),
                                                settings.topic("accounts")) if m.partitions]


def test_status_says_a_killed_consumer_holds_its_partitions_until_its_session_times_out(
        db, settings, transforms):
    """A consumer killed without --instance-id stays a member of the group until its session
    times out (30 s): its partitions are consumed by nobody meanwhile, and the next cutover
    waited 73 s. `status` says why while it lasts."""
    seed(db, 20)
    arm(settings, get_migration(settings.transforms, "add_tier"))
    survivor = CliProcess(settings, "consume", "add_tier")
    killed = CliProcess(settings, "consume", "add_tier")
    try:
        wait_for(lambda: len(StateStore(db).get("add_tier").consumers) == 2,
                 what="both consumers reporting themselves alive")
        wait_for(lambda: len(holding_partitions(settings, "add_tier")) == 2,
                 what="both members holding partitions")
        killed.kill()

        silent = wait_for(lambda: json.loads(run_cli(
            "status", "add_tier", "--json", settings=settings).stdout)["group"]["silent"],
            timeout=25, what="the killed member shown silent")
        text = run_cli("status", "add_tier", settings=settings).stdout
    finally:
        survivor.stop()
    (member,) = silent
    assert member["instance_id"] is None and member["session_timeout_seconds"] == 30
    assert member["partitions"] and member["silent_seconds"] >= 10
    assert f"consumer {member['member_id']} on 127.0.0.1 silent for" in text, text
    assert "still in the group, holding p" in text and "killed without --instance-id" in text
    assert "when its session times out (30 s after its last heartbeat)" in text
    assert "Until then they are not consumed, and cutover waits." in text
