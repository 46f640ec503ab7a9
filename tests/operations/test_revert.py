"""revert: after cutover, the inverse through the same pipeline, while the application writes."""

from __future__ import annotations

import json
import os
import random
import threading
import time

import pymongo
from pymongo import monitoring

from cdc_migrator import api
from cdc_migrator.apply.consumer import TransformConsumer
from cdc_migrator.base import codec
from cdc_migrator.capture.backfill import backfill
from cdc_migrator.capture.tailer import arm
from cdc_migrator.core.state import Phase, StateStore

from ..harness import ROOT, PeopleWriter, run_cli, wait_for

NAME = "split_full_name"  # transforms/split_full_name.py, with its inverse join_full_name
REVERSE = "split_full_name-revert"


def _seed(coll, n: int) -> dict[int, str]:
    expected = {}
    docs = []
    for i in range(n):
        full = f"Given{i}" if i % 7 == 0 else f"Given{i} Family {i}"
        docs.append({"_id": i, "full_name": full, "age": i % 80})
        expected[i] = full
    coll.insert_many(docs)
    return expected


def _phase(db, name: str) -> Phase | None:
    state = StateStore(db).get(name)
    return state.phase if state else None


def test_migrate_cut_over_and_revert_under_application_writes(db, settings):
    seed = int(os.environ.get("CDC_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed={seed}")
    coll = db.people
    expected = _seed(coll, 3000)
    app = PeopleWriter(coll, random.Random(seed), expected, next_id=100_000)
    app.start()
    try:
        forward = api.run(settings, NAME, then_cutover=True, timeout=300, show_progress=False,
                          rate=3000)
        assert forward.drained and forward.cutover is not None and forward.cutover.ok, \
            forward.cutover and forward.cutover.summary()
        assert _phase(db, NAME) is Phase.CUT_OVER
        assert coll.count_documents({"full_name": {"$exists": True}}) == 0

        def deploy_the_old_shape_once_the_reverse_backfill_is_done() -> None:
            while not app.stop.is_set():
                state = StateStore(db).get(REVERSE)
                if state and state.backfill and state.backfill.done:
                    app.mode = "old"
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=deploy_the_old_shape_once_the_reverse_backfill_is_done,
                                   daemon=True)
        before_revert = dict(app.by_mode)
        watcher.start()
        # The rate cap keeps the reverse backfill running while the application writes.
        result = run_cli("revert", NAME, "--rate", "1000", "--quiet", "--timeout", "300s",
                         settings=settings, timeout=400)
        assert result.returncode == 0, result.stdout + result.stderr
        assert app.mode == "old", "the reverse backfill never finished"
    finally:
        app.finish()
    print(f"application writes {app.by_mode}; revert said: {result.stdout}")
    assert app.by_mode["new"] - before_revert["new"] > 50, \
        "no new-shape writes raced the revert"
    assert app.by_mode["old"] > 20, "no old-shape writes raced the reverse cutover"
    assert "reverted; split_full_name-revert cut over" in result.stdout
    assert "the server has no validators" in result.stdout  # the expand schema step ran
    docs = {d["_id"]: d for d in coll.find()}
    assert not (app.deleted & docs.keys()), "a deleted person came back"
    assert docs.keys() == app.expected.keys()
    wrong = [i for i, d in docs.items()
             if set(d) - {"age"} != {"_id", "full_name"} or d["full_name"] != app.expected[i]]
    assert not wrong, f"{len(wrong)} people wrong, e.g. {docs[wrong[0]]} vs " \
                      f"{app.expected[wrong[0]]!r}"
    assert _phase(db, NAME) is Phase.REVERTED and _phase(db, REVERSE) is Phase.CUT_OVER

    verified = run_cli("verify", REVERSE, settings=settings)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    status = run_cli("status", NAME, settings=settings)
    assert f"{NAME} (people): reverted" in status.stdout and "reverted at" in status.stdout
    assert "old shape: nothing enforces the old shape: people.old.json was checked on every " \
           "document, but the server has no validators" in status.stdout  # the local server
    status = run_cli("status", REVERSE, settings=settings)
    # Its lag is shown (its group is known); events of writes after its cutover may wait
    # there for an always-on `consume NAME-revert`, as after `run --cutover`.
    assert f"{REVERSE} (people): cut over" in status.stdout and "  lag: " in status.stdout
    nxt = run_cli("next", "people", settings=settings)
    assert nxt.returncode == 0 and nxt.stdout.strip() == f"{NAME} (reverted)"
    again = run_cli("revert", NAME, settings=settings)
    assert again.returncode == 0 and "already reverted" in again.stdout


def _refusal(settings, name: str) -> str:
    result = run_cli("revert", name, settings=settings)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    return line


def test_revert_refuses_a_migration_without_an_inverse_and_changes_nothing(db, settings):
    db.users.insert_one({"_id": 1})
    line = _refusal(settings, "add_default_role")
    assert "cannot revert add_default_role: it declares no inverse" in line
    assert db.list_collection_names() == ["users"]


def test_revert_refuses_a_migration_never_cut_over_and_changes_nothing(db, settings):
    db.people.insert_one({"_id": 1, "full_name": "Ada Lovelace"})
    line = _refusal(settings, NAME)
    assert "it was never cut over (it has not started)" in line
    assert db.list_collection_names() == ["people"]
    run = api.run(settings, NAME, timeout=120, show_progress=False)  # drained, not cut over
    assert run.drained
    state_before = StateStore(db).get(NAME)
    line = _refusal(settings, NAME)
    assert "it was never cut over (it is ready for cutover)" in line
    assert StateStore(db).get(REVERSE) is None
    assert StateStore(db).get(NAME).phase is state_before.phase


def test_a_reverting_migrations_own_consumer_holds_instead_of_migrating_forward_again(
        db, settings):
    """An always-on `consume NAME` left running beside a revert must not undo the reverse."""
    db.people.insert_many([{"_id": i, "full_name": f"Given{i} Family"} for i in range(50)])
    forward = api.load(settings, NAME)
    store = StateStore(db)
    arm(settings, forward)
    assert backfill(settings, forward, show_progress=False).done  # events for all 50
    store.mark_cut_over(NAME)
    store.mark_reverting(NAME)
    consumer = TransformConsumer(settings, forward)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        # The consumer reads the flag before its first poll, so holding from the start it
        # has taken no event: the documents are unchanged now, with every event waiting.
        wait_for(lambda: consumer._paused, what="the forward consumer holding")
        assert db.people.count_documents({"first_name": {"$exists": True}}) == 0
        store.mark_cut_over(NAME)  # not reverting any more: the same consumer applies them
        wait_for(lambda: db.people.count_documents({"first_name": {"$exists": True}}) == 50,
                 what="the held events applied once the revert is over")
    finally:
        consumer.stop()
        thread.join(timeout=60)


# The revert's enforcement: the old shape's schema as the validator, or status says none.

class CollMods(monitoring.CommandListener):
    """Every collMod this process sends."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def started(self, event) -> None:
        if event.command_name == "collMod":
            self.sent.append(dict(event.command))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def test_the_reverse_cutover_installs_the_old_shapes_schema_as_the_validator(db, settings):
    """split_full_name names people.old.json, the old shape: revert puts back the expand schema,
    then its cutover checks every document against the old shape's schema and installs it, as
    the forward cutover installs the contract, so that the server refuses new-shape writes.
    (The local server has no validators: it answers 59, and status says nothing enforces it
    here. The collMod sent is what a MongoDB would take.)"""
    _seed(db.people, 200)
    assert api.run(settings, NAME, then_cutover=True, timeout=120, show_progress=False).cutover.ok
    recorder = CollMods()
    settings.client = pymongo.MongoClient(settings.mongodb_uri, event_listeners=[recorder],
                                          **codec.client_options())

    report = api.revert(settings, NAME, timeout=120, show_progress=False)
    status = run_cli("status", NAME, settings=settings).stdout

    old_shape = json.loads((ROOT / "schemas" / "people.old.json").read_text())
    expand = json.loads((ROOT / "schemas" / "people.expand.json").read_text())
    assert report.ok, report.summary()
    assert [(c["collMod"], c["validator"]) for c in recorder.sent] == [
        ("people", {"$jsonSchema": expand}), ("people", {"$jsonSchema": old_shape})]
    assert recorder.sent[1]["validationLevel"] == "strict"
    note = ("nothing enforces the old shape: people.old.json was checked on every document, "
            "but the server has no validators, so writes in the new shape are not refused")
    assert report.summary().endswith(f"every document is in the old shape; {note}")
    assert f"  old shape: {note}" in status, status
    assert StateStore(db).get(NAME).old_shape == {"schema": "people.old.json",
                                                  "enforced": False}


WITHOUT_OLD_SCHEMA = '''
from cdc_migrator import UNSET, migration


@migration(collection="people")
def split_name(doc, ctx):
    if isinstance(doc.get("full_name"), str):
        first, _, last = doc["full_name"].partition(" ")
        return {"first_name": first, "last_name": last, "full_name": UNSET}


@split_name.down
def join_name(doc, ctx):
    if "first_name" in doc:
        return {"full_name": f"{doc['first_name']} {doc['last_name']}",
                "first_name": UNSET, "last_name": UNSET}
'''


def test_status_says_nothing_enforces_the_old_shape_without_an_old_schema(db, settings,
                                                                          tmp_path):
    (tmp_path / "split_name.py").write_text(WITHOUT_OLD_SCHEMA)
    settings.transforms = tmp_path
    db.people.insert_many([{"_id": i, "full_name": f"Given{i} Family"} for i in range(50)])
    assert api.run(settings, "split_name", then_cutover=True, timeout=120,
                   show_progress=False).cutover.ok

    reverted = run_cli("revert", "split_name", "--quiet", settings=settings, timeout=300)
    shown = run_cli("status", "split_name", "--json", settings=settings).stdout

    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    note = ("nothing enforces the old shape: the migration names no old_schema, so writes in "
            "the new shape are not refused (deploy old-shape writes first)")
    assert note in reverted.stdout
    assert json.loads(shown)["old_shape"] == {"schema": None, "enforced": None, "note": note}


def test_reset_after_a_revert_that_installed_the_old_shape_puts_back_the_expand_schema(
        db, settings):
    """Migrating again writes the new shape, which the old shape's validator would refuse."""
    db.people.insert_one({"_id": 1, "full_name": "Ada Lovelace"})
    store = StateStore(db)
    store.ensure(NAME, "people")
    store.mark_reverted(NAME, {"schema": "people.old.json", "enforced": True})  # on a MongoDB
    recorder = CollMods()
    settings.client = pymongo.MongoClient(settings.mongodb_uri, event_listeners=[recorder],
                                          **codec.client_options())

    note = api.reset(settings, NAME)

    expand = json.loads((ROOT / "schemas" / "people.expand.json").read_text())
    assert [(c["collMod"], c["validator"]) for c in recorder.sent] == [
        ("people", {"$jsonSchema": expand})]
    assert note == "the server has no validators: no validator (people.old.json) to take back"
    assert store.get(NAME) is None
