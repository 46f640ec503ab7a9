"""The applier: guarded, idempotent bulk writes that never overwrite what the application wrote
after a document was read, never bring a deleted document back, and leave the migration's
filter out of the write only where the guard keeps it; misses re-read and retried, one refused
write one document's failure, the simple collation stated."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import textwrap
import uuid
import warnings

import bson
import hypothesis
import pymongo
import pytest
from bson import Decimal128, Int64
from hypothesis import strategies as st
from kafka.admin import NewTopic

from cdc_migrator import DELETE, api, migration
from cdc_migrator.apply.applier import MAX_STATEMENT_BYTES, Applier, _too_large, size_bound
from cdc_migrator.base import topics, topology
from cdc_migrator.base.identity import id_key
from cdc_migrator.base.settings import Settings
from cdc_migrator.core.context import make_context
from cdc_migrator.core.deadletters import read as read_dead_letters
from cdc_migrator.core.patch import Outcome, decide, guard_filter
from cdc_migrator.migration import Migration, _defined, get_migration
from cdc_migrator.pipeline import run_pipeline

from ..harness import (
    KAFKA,
    MONGO_BASE,
    CommandRecorder,
    UsersWriter,
    run_cli,
    seed_sharded_collection,
    untargeted_writes,
)

ROLE_FROM_TIER = """
from cdc_migrator import migration


@migration(collection="users", batch_size=100)
def role_from_tier(doc, ctx):
    if doc.get("role") is None:
        return {"role": "member" if doc.get("tier") == "free" else "user"}
"""


def role_for(tier: str) -> str:
    return "member" if tier == "free" else "user"


@migration(collection="users")
def role_from_tier(doc, ctx):
    if doc.get("role") is None:
        return {"role": role_for(doc.get("tier"))}


_defined.remove(role_from_tier)  # used directly here, never loaded from a transforms directory


def seed_users(db, n: int, rng: random.Random) -> dict[int, str]:
    tiers = {i: rng.choice(["free", "paid"]) for i in range(n)}
    db.users.insert_many([{"_id": i, "name": f"user {i}", "tier": tier}
                          for i, tier in tiers.items()])
    return tiers


def test_apply_racing_the_application_loses_no_application_write(settings, db, tmp_path):
    n = 5_000
    seeded = seed_users(db, n, random.Random(7))
    (tmp_path / "role_from_tier.py").write_text(ROLE_FROM_TIER)
    user = dataclasses.replace(settings, transforms=tmp_path)
    app = UsersWriter(MONGO_BASE, db.name, range(n), settings.state_collection,
                      "role_from_tier", random.Random(2024))

    app.start()
    try:
        racing = api.apply(user, "role_from_tier", show_progress=False)
    finally:
        app.finish()
    # Writes after the scan passed a document are not seen by this run: one more run, as a
    # user would after `verify`, finishes them.
    final = api.apply(user, "role_from_tier", show_progress=False)

    print(f"\napplication writes during apply: {app.ops:,}; "
          f"apply retried {racing.result.retried:,} guarded writes; "
          f"racing run updated {racing.result.updated:,}, final run {final.result.updated:,}")
    if racing.result.retried == 0:
        warnings.warn("the application's writes never raced a guarded write in this run",
                      stacklevel=1)
    assert app.ops > 100, "the application did write while apply ran"
    assert racing.result.failed == final.result.failed == 0

    users = {d["_id"]: d for d in db.users.find()}
    assert users.keys() == set(range(n)) - app.deleted, "nothing deleted came back"
    admins = [i for i, role in app.role.items() if role == "admin" and i not in app.deleted]
    assert admins
    for _id in admins:
        assert users[_id]["role"] == "admin", "the application's role was overwritten"
    for _id, doc in users.items():
        assert doc["tier"] == app.tier.get(_id, seeded[_id]), "the application's tier stands"
        if app.role.get(_id) != "admin":
            # Migrated from the tier the document had when the role was written.
            assert doc["role"] == role_for(doc["tier"]), doc
    assert api.verify(user, "role_from_tier").ok


# --------------------------------------------------------------------------- one stale read


def stale_batch(db, n: int = 10):
    db.users.insert_many([{"_id": i, "tier": "free" if i % 2 else "paid"} for i in range(n)])
    return list(db.users.find(sort=[("_id", 1)]))


def test_a_write_made_after_the_read_makes_the_guard_miss_and_the_document_is_redecided(db):
    docs = stale_batch(db)
    db.users.update_one({"_id": 3}, {"$set": {"role": "admin"}})  # role, read and written
    db.users.update_one({"_id": 4}, {"$set": {"tier": "free"}})  # tier, only read

    result = Applier(role_from_tier, db.users, make_context(db, "t")).apply_documents(docs)

    assert (result.updated, result.retried, result.unchanged, result.failed) == (9, 2, 0, 0)
    roles = {d["_id"]: d["role"] for d in db.users.find()}
    assert roles[3] == "admin"
    assert roles[4] == "member", "decided again from the tier the application wrote"
    assert roles[2] == "user" and roles[1] == "member"


def test_a_document_deleted_after_the_read_is_not_brought_back(db):
    docs = stale_batch(db)
    db.users.delete_one({"_id": 5})

    result = Applier(role_from_tier, db.users, make_context(db, "t")).apply_documents(docs)

    assert (result.updated, result.retried) == (9, 1)
    assert db.users.find_one({"_id": 5}) is None
    assert db.users.count_documents({"role": {"$exists": True}}) == 9


# --------------------------------------------------------------------------- statement size

_bounded_values = st.one_of(
    st.text(max_size=40), st.booleans(), st.none(), st.floats(allow_nan=True),
    st.integers(-2**63, 2**63 - 1), st.builds(bson.ObjectId), st.binary(max_size=40),
    st.datetimes(timezones=st.just(dt.UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers()),
)
_names = st.text(max_size=12).filter(lambda k: k != "_id" and "\0" not in k)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    _id=st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=20), st.builds(bson.ObjectId),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    doc=st.dictionaries(_names, _bounded_values, max_size=6),
    read=st.sets(_names, max_size=6),
    to_set=st.dictionaries(_names.filter(lambda k: k and k[0] != "$" and "." not in k),
                           _bounded_values, max_size=4),
    to_unset=st.sets(_names, max_size=3),
)
def test_the_size_bound_of_a_guarded_statement_is_never_below_its_encoded_size(
        _id, doc, read, to_set, to_unset):
    """The size check encodes a statement only when its bound does not fit: a bound below the
    real size would let a statement MongoDB refuses through unchecked."""
    doc = {"_id": _id, **doc}
    outcome = Outcome("update", _id, guard=guard_filter(doc, read | set(to_set) | to_unset),
                      set=to_set, unset=tuple(sorted(to_unset - set(to_set))))
    bound = size_bound(outcome)
    if bound is not None:
        assert bound >= len(bson.encode({"q": outcome.guard, "u": outcome.update}))


def test_a_statement_of_large_strings_is_measured_exactly_and_refused_over_the_limit():
    big = "é" * (5 * 1024 * 1024)  # 10 MiB of UTF-8, 5 Mi characters
    doc = {"_id": 1, "text": big}
    fits = Outcome("update", 1, guard=guard_filter(doc, {"text", "n"}), set={"n": 1})
    assert size_bound(fits) > MAX_STATEMENT_BYTES  # the bound is loose: the exact size decides
    assert _too_large(fits) is None
    copied = Outcome("update", 1, guard=guard_filter(doc, {"text", "copy"}), set={"copy": big})
    assert "larger than MongoDB accepts" in _too_large(copied)


def _rename_or_drop(doc, ctx):
    if doc.get("gone"):
        from cdc_migrator import DELETE
        return DELETE
    if doc.get("slug") != doc["name"].lower():
        return {"slug": doc["name"].lower()}


def test_every_guarded_write_and_re_read_states_the_simple_collation(db, db_name):
    recorder = CommandRecorder()
    client = pymongo.MongoClient(db.client.address[0], db.client.address[1],
                                 directConnection=True, event_listeners=[recorder])
    try:
        coll = client[db_name].people  # the applier's client: its commands are recorded
        db.people.insert_many([{"_id": 1, "name": "Bob"}, {"_id": 2, "name": "Ann"},
                               {"_id": 3, "name": "Old", "gone": True}])
        migration = Migration(name="slugs", collection="people", transform=_rename_or_drop,
                              filter={"name": {"$exists": True}})
        applier = Applier(migration, coll, make_context(client[db_name], "slugs"))
        # Document 1's image is stale (the application changed its name to BOB): its guard
        # misses, it is read again and written from the current value. 2 has no image: read.
        db.people.update_one({"_id": 1}, {"$set": {"name": "BOB"}})
        result = applier.apply_ids([1, 2, 3], {
            id_key(1): {"_id": 1, "name": "Bob"},
            id_key(3): {"_id": 3, "name": "Old", "gone": True}})
    finally:
        client.close()
    assert result.retried == 1 and result.updated == 2 and result.deleted == 1
    assert db.people.find_one({"_id": 1})["slug"] == "bob"
    simple = {"locale": "simple"}
    updates = [u for c in recorder.named("update") for u in c["updates"]]
    deletes = [d for c in recorder.named("delete") for d in c["deletes"]]
    reads = [c for c in recorder.named("find") if c["find"] == "people"]
    assert len(updates) == 3 and len(deletes) == 1 and len(reads) == 2
    assert all(statement.get("collation") == simple for statement in updates + deletes)
    assert all(read.get("collation") == simple for read in reads)


def _add_tier(doc, ctx):
    if "tier" not in doc:
        return {"tier": "std"}


def _flag_active(doc, ctx):
    if "flag" not in doc:
        return {"flag": True}


def test_a_filter_the_guard_pins_is_left_out_of_the_write_and_still_holds(db):
    coll = db["accounts"]
    m = Migration(name="t", collection="accounts", transform=_add_tier,
                  filter={"tier": {"$exists": False}})
    applier = Applier(m, coll, make_context(db, "t"))
    op = applier._op(decide(m, {"_id": 1, "n": 1}, applier.ctx))
    assert "$and" not in op._filter and op._filter["tier"] == {"$exists": False}
    # The document left the filter after the image was taken: the guard alone refuses it.
    coll.insert_one({"_id": 1, "n": 1, "tier": "gold"})
    result = applier.apply_ids([1], {id_key(1): {"_id": 1, "n": 1}})
    assert result.updated == 0 and result.missing == 0
    assert coll.find_one({"_id": 1})["tier"] == "gold"


def test_a_filter_on_fields_the_transform_does_not_read_stays_in_the_write(db):
    coll = db["accounts"]
    m = Migration(name="t", collection="accounts", transform=_flag_active,
                  filter={"status": "active"})
    applier = Applier(m, coll, make_context(db, "t"))
    op = applier._op(decide(m, {"_id": 2, "status": "active"}, applier.ctx))
    assert op._filter["$and"][1] == {"status": "active"}
    # The application deactivated the document after the image was taken.
    coll.insert_one({"_id": 2, "status": "inactive"})
    result = applier.apply_ids([2], {id_key(2): {"_id": 2, "status": "active"}})
    assert result.updated == 0
    assert "flag" not in coll.find_one({"_id": 2})


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


MARK_MIGRATION = '''
    from cdc_migrator import migration

    @migration(collection="things")
    def mark(doc, ctx):
        if "marked" not in doc:
            return {"marked": True}
'''


def test_ids_mongodb_takes_as_one_are_one_document_to_the_applier(db, settings, tmp_path):
    migration = get_migration(_migrations(tmp_path, settings, MARK_MIGRATION), "mark")
    db.things.insert_many([{"_id": 1}, {"_id": True}, {"_id": {"a": 1}}])
    applier = Applier(migration, settings.db.things, make_context(settings.db, "mark"))
    result = applier.apply_ids([1, 1.0, Int64(1), Decimal128("1"), True, {"a": 1},
                                {"a": 1.0}])
    assert (result.seen, result.updated, result.missing) == (3, 3, 0)


REWRITE_MIGRATION = '''
    from cdc_migrator import migration

    @migration(collection="files")
    def reverse_blob(doc, ctx):
        if not doc.get("reversed"):
            return {"blob": doc["blob"][::-1], "reversed": True}
'''


def test_one_refused_write_is_that_documents_failure_and_the_rest_is_migrated(
        db, settings, tmp_path):
    _migrations(tmp_path, settings, REWRITE_MIGRATION)
    _create_topic(settings, "files", **{"max.message.bytes": str(topics.MAX_RECORD_BYTES)})
    # The guard pins the 9 MiB blob and the update sets a new one: 18 MiB in one statement,
    # more than MongoDB takes, while the document itself stays at 9 MiB.
    db.files.insert_many([{"_id": 1, "blob": b"ab"}, {"_id": 2, "blob": os.urandom(9 * MIB)},
                          {"_id": 3, "blob": b"cd"}])
    report = _run(settings, tmp_path, "reverse_blob")
    assert report.counts["updated"] == 2 and report.counts["failed"] == 1
    assert [d["_id"] for d in db.files.find({"reversed": True})] == [1, 3]
    letters = read_dead_letters(settings, get_migration(tmp_path, "reverse_blob"))
    assert [(letter.doc_id, letter.entry["kind"]) for letter in letters] == [(2, "transform")]
    assert "larger than MongoDB accepts for one statement" in letters[0].entry["error"]


# A write error the driver cannot read: one document's failure is that document's dead letter.

CODELESS = "write refused (no code): write error without a code, by the failCommand fail point"


@pytest.fixture
def codeless_write_error(mongo_client, local_servers):
    """Make the local server answer every update statement on one ``_id`` with a write error
    that has no code (FailCommand's test device, docs/testing.md). pymongo's bulk API then
    raises ``KeyError: 'code'``."""
    def on(doc_id: object) -> None:
        mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                    "data": {"failCommands": ["update"],
                                             "codelessWriteErrorFor": doc_id}})
    yield on
    mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


def dead_letters(settings) -> list[dict]:
    listed = run_cli("dlq", "list", "add_default_role", "--json", settings=settings)
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_a_write_error_the_driver_cannot_read_is_that_documents_dead_letter(
        db, settings, codeless_write_error):
    failing = f"codeless-{db.name}"  # an _id no other test run on the server writes
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(150)]
                         + [{"_id": failing, "name": "fails"}]
                         + [{"_id": i, "name": f"u{i}"} for i in range(150, 299)])
    codeless_write_error(failing)

    ran = run_cli("run", "add_default_role", "--timeout", "120s", "-q", settings=settings)
    letters = dead_letters(settings)
    again = run_cli("dlq", "retry", "add_default_role", settings=settings)

    assert ran.returncode == 1 and "1 failed documents unresolved" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr + again.stderr
    assert db.users.count_documents({"role": "user"}) == 299
    assert [(letter["id"], letter["error"]) for letter in letters] == [(repr(failing), CODELESS)]
    assert again.returncode == 1 and f"failed again {failing!r}: {CODELESS}" in again.stderr
    db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    retried = run_cli("dlq", "retry", "add_default_role", settings=settings)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert db.users.count_documents({"role": "user"}) == 300


def test_apply_writes_the_rest_of_a_batch_whose_bulk_write_the_driver_cannot_read(
        db, settings, codeless_write_error):
    failing = f"codeless-{db.name}"
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(249)]
                         + [{"_id": failing, "name": "fails"}])
    codeless_write_error(failing)

    applied = run_cli("apply", "add_default_role", "-q", settings=settings)

    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert f"failed {failing!r}: {CODELESS}" in applied.stderr, applied.stderr
    assert "Traceback" not in applied.stderr
    assert db.users.count_documents({"role": "user"}) == 249
    assert db.users.find_one({"_id": failing}) == {"_id": failing, "name": "fails"}
# ------------------------------------------------------------------- a sharded collection

ORDER_TOTALS = textwrap.dedent("""
    from cdc_migrator import migration, DELETE

    @migration(collection="orders")
    def order_totals(doc, ctx):
        if doc["qty"] == 0:
            return DELETE
        if doc.get("total") != doc["qty"] * 10:
            return {"total": doc["qty"] * 10}
""")


@migration(collection="orders")
def order_totals(doc, ctx):
    if doc["qty"] == 0:
        return DELETE
    if doc.get("total") != doc["qty"] * 10:
        return {"total": doc["qty"] * 10}


_defined.remove(order_totals)  # used directly here; the CLI loads ORDER_TOTALS


def _sharded_orders(client: pymongo.MongoClient) -> tuple[pymongo.database.Database, str]:
    db = client[f"t_{uuid.uuid4().hex[:10]}"]
    namespace = f"{db.name}.orders"
    seed_sharded_collection(client, namespace, {"region": 1, "_id": 1}, ["m"])
    db.orders.insert_many([{"_id": i, "region": "eu" if i % 2 else "us", "qty": i % 4}
                           for i in range(40)])
    return db, namespace


def test_guarded_writes_and_re_reads_of_a_sharded_collection_pin_its_shard_key(mongos_mongo):
    # Regression (issue 25): a guard pinned _id and the fields read, never the shard key, so
    # before MongoDB 7.1 mongos sent every guarded write to every shard (7.1+: a slower
    # two-phase write).
    db, namespace = _sharded_orders(mongos_mongo)
    docs = list(db.orders.find())
    db.orders.update_many({"_id": {"$in": [1, 2, 3]}}, {"$inc": {"qty": 4}})  # three guards miss
    recorder = CommandRecorder()
    host, port = mongos_mongo.address
    client = pymongo.MongoClient(host, port, directConnection=True, event_listeners=[recorder])
    try:
        applier = Applier(order_totals, client[db.name].orders,
                          make_context(client[db.name], "t"),
                          topology.shard_key(client, namespace))
        result = applier.apply_documents(docs)
    finally:
        client.close()
        mongos_mongo.drop_database(db.name)

    assert (result.deleted, result.retried, result.failed) == (10, 3, 0)
    assert untargeted_writes(mongos_mongo, namespace) == 0
    reread = [c["filter"] for c in recorder.named("find")][-1]
    assert {"_id": 1, "region": "eu"} in reread["$or"] and {"_id": 2, "region": "us"} in \
        reread["$or"]


@pytest.mark.parametrize("command", [["apply"], ["run", "--timeout", "120s"]])
def test_apply_and_run_write_a_sharded_collection_by_shard_key(mongos_mongo, tmp_path, command):
    db, namespace = _sharded_orders(mongos_mongo)
    (tmp_path / "orders.py").write_text(ORDER_TOTALS)
    host, port = mongos_mongo.address
    settings = Settings(mongodb_uri=f"mongodb://{host}:{port}/{db.name}?directConnection=true",
                        kafka_bootstrap_servers=KAFKA, transforms=tmp_path,
                        topic_prefix=f"t-{db.name}", group_prefix=f"g-{db.name}", partitions=2)
    try:
        ran = run_cli(*command, "order_totals", "-q", settings=settings)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert db.orders.count_documents({}) == 30
        assert db.orders.count_documents({"total": {"$exists": False}}) == 0
        assert untargeted_writes(mongos_mongo, namespace) == 0
    finally:
        mongos_mongo.drop_database(db.name)
