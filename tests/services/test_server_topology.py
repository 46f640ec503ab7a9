"""The local server answering as MongoDB's deployments do (issue 25): a replica set's members
and configuration, refusals through mongos, the metadata of a sharded cluster, large events
split by ``$changeStreamSplitLargeEvent``, an oplog hole held open (and majority reads waiting
for it), ``$sample``'s random cursor, and updates of documents whose field names hold ``.`` or
start with ``$``. Refusals to an unprivileged user are the access control's
(tests/services/test_server_auth.py).

Each test pins the reply MongoDB gives (code, codeName, message, fields), over TCP with
pymongo. The modes these tests switch on (mongos, a reported version, an oplog hole) change the
server for every client, so they run on a LocalMongo of this module's own, and each test puts
back what it set.
"""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from pymongo.errors import OperationFailure, WriteError

from cdc_migrator import api
from cdc_migrator.base.settings import Settings

from ..harness import (
    KAFKA,
    local_mongo_missing,
    seed_sharded_collection,
    start_local_mongo,
    stop_local_mongo,
)

pytestmark = [pytest.mark.services,
              pytest.mark.local_server("a LocalMongo of this module's own, in its modes")]
MIB = 1 << 20
NO_ANSWER_MS = 200  # how long an awaiting getMore waits before answering that nothing came


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    missing = local_mongo_missing()
    if missing:
        pytest.skip(missing)
    proc, client = start_local_mongo(tmp_path_factory.mktemp("topology"), heap="1g")
    yield client
    stop_local_mongo(proc, client)


@pytest.fixture
def sdb(server, request):
    name = f"t_{request.node.name[:40]}_{os.getpid()}"
    yield server[name]
    server.drop_database(name)


def refused(call) -> OperationFailure:
    with pytest.raises(OperationFailure) as failure:
        call()
    return failure.value


# ----------------------------------------------------------------------- replica set members

MEMBERS = [{"lag": 2},
           {"secondaryDelaySecs": 3600, "hidden": True, "priority": 0, "votes": 0},
           {"arbiterOnly": True}]
CONFIG_FIELDS = ["_id", "host", "arbiterOnly", "buildIndexes", "hidden", "priority", "tags",
                 "secondaryDelaySecs", "votes"]


@pytest.fixture
def members(server):
    def declare(declared: list[dict[str, Any]]) -> None:
        server.admin.command({"setReplicaSetMembers": declared})
    yield declare
    declare([])


def test_a_standalone_refuses_both_replica_set_commands_with_76(server):
    for command in ("replSetGetStatus", "replSetGetConfig"):
        failure = refused(lambda c=command: server.admin.command(c))
        assert (failure.code, failure.details["codeName"]) == (76, "NoReplicationEnabled")
        assert failure.details["errmsg"] == "not running with --replSet"


def test_repl_set_get_config_lists_delayed_hidden_arbiter_and_non_voting_members(server, members):
    members(MEMBERS)
    config = server.admin.command("replSetGetConfig")["config"]

    assert config["_id"] and config["version"] >= 1 and config["protocolVersion"] == 1
    assert {"heartbeatIntervalMillis", "electionTimeoutMillis", "replicaSetId"} <= set(
        config["settings"])
    listed = config["members"]
    assert [list(m) for m in listed] == [CONFIG_FIELDS] * 4
    assert [m["_id"] for m in listed] == [0, 1, 2, 3] and len({m["host"] for m in listed}) == 4
    primary, lagging, delayed, arbiter = listed
    assert (primary["priority"], primary["votes"], primary["hidden"]) == (1, 1, False)
    assert (lagging["secondaryDelaySecs"], lagging["priority"]) == (0, 1)
    assert (delayed["secondaryDelaySecs"], delayed["hidden"], delayed["priority"],
            delayed["votes"]) == (3600, True, 0, 0)
    # an arbiter's priority defaults to 0 (member_config.cpp)
    assert (arbiter["arbiterOnly"], arbiter["priority"], arbiter["votes"]) == (True, 0, 1)


def test_repl_set_get_status_shows_the_delay_and_an_arbiter_without_optimes(server, members):
    members(MEMBERS)
    status = server.admin.command("replSetGetStatus")
    primary, lagging, delayed, arbiter = status["members"]

    assert (primary["state"], primary["stateStr"], primary.get("self")) == (1, "PRIMARY", True)
    # a hidden or delayed member is a SECONDARY to replSetGetStatus: only the config tells
    assert [(m["state"], m["stateStr"]) for m in (lagging, delayed)] == [(2, "SECONDARY")] * 2
    assert (arbiter["state"], arbiter["stateStr"]) == (7, "ARBITER")
    assert not {"optime", "optimeDate", "optimeDurable", "optimeDurableDate"} & set(arbiter)
    newest = primary["optimeDate"]
    assert (newest - lagging["optimeDate"]).total_seconds() == pytest.approx(2, abs=0.01)
    assert (newest - delayed["optimeDate"]).total_seconds() == pytest.approx(3600, abs=0.01)
    assert lagging["optime"]["ts"] > delayed["optime"]["ts"]
    assert (status["votingMembersCount"], status["writableVotingMembersCount"]) == (3, 2)
    assert {"lastCommittedOpTime", "readConcernMajorityOpTime", "appliedOpTime"} <= set(
        status["optimes"])


@pytest.mark.parametrize(("member", "message"), [
    ({"hidden": True}, "priority must be 0 when hidden=true"),
    ({"secondaryDelaySecs": 60}, "priority must be 0 when secondaryDelaySecs is used"),
    ({"votes": 0}, "priority must be 0 when non-voting (votes:0)"),
    ({"arbiterOnly": True, "votes": 0}, "Arbiter must vote (cannot have 0 votes)"),
])
def test_member_options_are_checked_as_mongodb_checks_them(server, members, member, message):
    failure = refused(lambda: members([member]))
    assert (failure.code, failure.details["errmsg"]) == (2, message)
    assert refused(lambda: server.admin.command("replSetGetConfig")).code == 76  # unchanged


# ---------------------------------------------------------------------------------- mongos

@pytest.fixture
def mongos(server):
    server.admin.command({"setMongosMode": True})
    yield server
    server.admin.command({"setMongosMode": False})
    for name in ("shards", "collections", "chunks"):
        server.config.drop_collection(name)


def test_mongos_mode_answers_hello_and_server_status_as_a_router(mongos):
    hello = mongos.admin.command("hello")
    assert hello["msg"] == "isdbgrid" and hello["isWritablePrimary"] is True
    assert not {"setName", "hosts"} & set(hello)
    assert mongos.admin.command("serverStatus")["process"] == "mongos"


def test_mongos_refuses_repl_set_commands_and_the_local_database_as_mongos_does(mongos, members):
    members([{"lag": 1}])  # a replica set behind it changes nothing: mongos has no such status

    status = refused(lambda: mongos.admin.command("replSetGetStatus"))
    # mongos's stub: an errmsg and info "mongos", no code (cluster_repl_set_get_status_cmd.cpp)
    assert status.code is None and status.details["info"] == "mongos"
    assert status.details["errmsg"] == "replSetGetStatus is not supported through mongos"
    config = refused(lambda: mongos.admin.command("replSetGetConfig"))
    assert (config.code, config.details["codeName"]) == (59, "CommandNotFound")
    oplog = refused(lambda: mongos.local["oplog.rs"].find_one(sort=[("$natural", 1)]))
    assert (oplog.code, oplog.details["errmsg"]) == (
        20, "Can't use 'local' database through mongos")


def untargeted(client: pymongo.MongoClient, namespace: str) -> int:
    counter = client.admin.command("serverStatus")["localMongo"]["untargetedSingleWrites"]
    return counter["byNamespace"].get(namespace, 0)


def test_mongos_mode_counts_single_writes_whose_filter_lacks_the_shard_key(mongos, sdb):
    orders = f"{sdb.name}.orders"
    seed_sharded_collection(mongos, orders, {"region": 1, "_id": 1}, ["m"])
    sdb.orders.insert_many([{"_id": i, "region": "eu" if i % 2 else "us", "n": 0}
                            for i in range(4)])

    sdb.orders.update_one({"_id": 1, "region": "eu"}, {"$set": {"n": 1}})
    sdb.orders.update_one({"region": {"$eq": "us"}, "_id": 0}, {"$set": {"n": 1}})
    sdb.orders.update_many({"n": 0}, {"$set": {"n": 2}})  # multi: sent everywhere by design
    assert untargeted(mongos, orders) == 0

    sdb.orders.update_one({"_id": 1}, {"$set": {"n": 3}})  # the guard's _id only
    sdb.orders.delete_one({"region": "us"})  # half the key
    sdb.orders.find_one_and_update({"_id": 3, "region": {"$in": ["eu"]}}, {"$set": {"n": 4}})
    assert untargeted(mongos, orders) == 3


def test_an_unsplittable_or_dropped_collection_entry_is_not_sharded(mongos, sdb):
    for field in ("unsplittable", "dropped"):  # 8.0 tracks unsharded collections too
        namespace = f"{sdb.name}.{field}"
        seed_sharded_collection(mongos, namespace, {"k": 1}, [])
        mongos.config.collections.update_one({"_id": namespace}, {"$set": {field: True}})
        sdb[field].insert_one({"_id": 1, "k": 1})
        sdb[field].update_one({"_id": 1}, {"$set": {"n": 1}})
        assert untargeted(mongos, namespace) == 0


@pytest.mark.parametrize("version", ["4.4", "6.0", "7.0", "8.0"])
def test_the_config_database_holds_a_sharded_collections_metadata_in_each_versions_shape(
        mongos, sdb, version):
    namespace = f"{sdb.name}.items"
    entry = seed_sharded_collection(mongos, namespace, {"sku": "hashed"}, [-100, 100], shards=3,
                                    version=version)

    collection = mongos.config.collections.find_one({"_id": namespace})
    assert collection["key"] == {"sku": "hashed"} and collection["unique"] is False
    keyed = {"ns": namespace} if version == "4.4" else {"uuid": entry["uuid"]}
    chunks = list(mongos.config.chunks.find(keyed).sort("min.sku", 1))
    assert [c["shard"] for c in chunks] == ["shard00", "shard01", "shard02"]
    assert chunks[0]["min"] == {"sku": bson.MinKey()} and chunks[-1]["max"] == {
        "sku": bson.MaxKey()}
    assert [c["max"]["sku"] for c in chunks[:-1]] == [c["min"]["sku"] for c in chunks[1:]]
    assert ("onCurrentShardSince" in chunks[0]) == (version in ("7.0", "8.0"))
    assert mongos.config.shards.count_documents({}) == 3


# ------------------------------------------------------------ $changeStreamSplitLargeEvent

SPLIT = [{"$changeStreamSplitLargeEvent": {}}]


@pytest.fixture
def reported(server):
    def version(text: str) -> None:
        server.admin.command({"setServerVersion": text})
    yield version
    version("6.0.0")


@pytest.mark.parametrize(("version", "known"), [
    ("6.0.0", False), ("6.0.8", False), ("6.0.9", True), ("6.3.0", False), ("7.0.0", True),
    ("8.0.4", True)])
def test_the_split_stage_exists_from_6_0_9_and_7_0(server, sdb, reported, version, known):
    reported(version)
    assert server.admin.command("buildInfo")["version"] == version
    if known:
        sdb.events.watch(SPLIT).close()
    else:
        failure = refused(lambda: sdb.events.watch(SPLIT))
        assert failure.code == 40324
        assert failure.details["errmsg"] == (
            "Unrecognized pipeline stage name: '$changeStreamSplitLargeEvent'")


@pytest.mark.parametrize(("pipeline", "code", "message"), [
    ([*SPLIT, {"$match": {}}], 7182802,
     "$changeStreamSplitLargeEvent must be the last stage in the pipeline"),
    ([{"$changeStreamSplitLargeEvent": {"x": 1}}], 7182800,
     "$changeStreamSplitLargeEvent spec should be an empty object"),
])
def test_the_split_stage_is_refused_out_of_place_as_mongodb_refuses_it(sdb, reported, pipeline,
                                                                      code, message):
    reported("7.0.0")
    failure = refused(lambda: sdb.events.watch(pipeline))
    assert (failure.code, failure.details["errmsg"]) == (code, message)


def large_update(sdb) -> tuple[Any, list[dict[str, Any]]]:
    """An update event of about 27 MiB (the new document looked up, the old one as pre-image,
    the new value in its description), read through the split stage: (token before it, the
    fragments)."""
    sdb.create_collection("big", changeStreamPreAndPostImages={"enabled": True})
    sdb.big.insert_one({"_id": 1, "blob": os.urandom(9 * MIB)})
    with sdb.big.watch(SPLIT, full_document="updateLookup",
                       full_document_before_change="whenAvailable",
                       max_await_time_ms=NO_ANSWER_MS) as stream:
        assert stream.try_next() is None
        before = stream.resume_token
        sdb.big.update_one({"_id": 1}, {"$set": {"blob": os.urandom(9 * MIB)}})
        fragments = [stream.next()]
        while fragments[-1]["splitEvent"]["fragment"] < fragments[-1]["splitEvent"]["of"]:
            fragments.append(stream.next())
    return before, fragments


def test_an_event_over_16_mib_comes_as_fragments_each_with_its_own_resume_token(sdb, reported):
    reported("7.0.0")
    _, fragments = large_update(sdb)

    count = len(fragments)
    assert count == 3
    assert [f["splitEvent"] for f in fragments] == [
        {"fragment": n, "of": count} for n in range(1, count + 1)]
    assert len({f["_id"]["_data"] for f in fragments}) == count
    for fragment in fragments:
        assert list(fragment)[:2] == ["_id", "splitEvent"]
        assert len(bson.encode(fragment)) <= 16 * MIB + 8 * 1024
    fields = [name for f in fragments for name in f if name not in ("_id", "splitEvent")]
    assert sorted(fields) == sorted(["operationType", "clusterTime", "wallTime", "ns",
                                     "documentKey", "updateDescription", "fullDocument",
                                     "fullDocumentBeforeChange"])
    whole = {name: value for f in fragments for name, value in f.items()}
    assert whole["operationType"] == "update" and whole["documentKey"] == {"_id": 1}
    assert whole["fullDocument"]["blob"] == whole["updateDescription"]["updatedFields"]["blob"]
    assert whole["fullDocumentBeforeChange"]["blob"] != whole["fullDocument"]["blob"]


def test_a_split_stream_resumes_after_any_fragment(sdb, reported):
    reported("7.0.0")
    before, fragments = large_update(sdb)
    sdb.big.insert_one({"_id": 2})

    for n, fragment in enumerate(fragments):
        with sdb.big.watch(SPLIT, resume_after=fragment["_id"], full_document="updateLookup",
                           full_document_before_change="whenAvailable") as resumed:
            following = resumed.next()
        if n + 1 < len(fragments):
            assert following["splitEvent"] == fragments[n + 1]["splitEvent"]
            assert following["_id"] == fragments[n + 1]["_id"]
        else:
            assert following["documentKey"] == {"_id": 2}
    with sdb.big.watch(SPLIT, resume_after=before, full_document="updateLookup",
                       full_document_before_change="whenAvailable") as again:
        assert again.next()["_id"] == fragments[0]["_id"]


def test_without_the_stage_a_large_event_fails_the_stream_and_a_fragment_token_is_refused(
        sdb, reported):
    reported("7.0.0")
    before, fragments = large_update(sdb)

    failure = refused(lambda: sdb.big.watch(resume_after=before, full_document="updateLookup",
                                            full_document_before_change="whenAvailable").next())
    assert (failure.code, failure.details["codeName"]) == (10334, "BSONObjectTooLarge")
    resumed = refused(lambda: sdb.big.watch(resume_after=fragments[0]["_id"]))
    assert (resumed.code, resumed.details["errmsg"]) == (280, (
        "To resume from a split event, the $changeStream pipeline must include a "
        "$changeStreamSplitLargeEvent stage"))


# ------------------------------------------------------------------------------ oplog hole

@pytest.fixture
def hole(server):
    """Holds an oplog hole open (a write whose timestamp is reserved now, committed later);
    releases it at the end if the test did not."""
    held: list[bool] = []

    def open_hole(database: str, write: dict[str, Any]) -> bson.Timestamp:
        held.append(True)
        return server.admin.command({"holdOplogHole": database, "write": write})["ts"]

    def release() -> dict[str, Any]:
        held.clear()
        return server.admin.command({"releaseOplogHole": 1})

    yield open_hole, release
    if held:
        release()


def test_an_oplog_hole_hides_later_writes_from_change_streams_until_it_closes(sdb, hole,
                                                                             members):
    open_hole, release = hole
    members([{"lag": 0}])
    sdb.items.insert_one({"_id": 0})
    tailing = sdb.items.watch(max_await_time_ms=NO_ANSWER_MS)
    assert tailing.try_next() is None

    t1 = open_hole(sdb.name, {"insert": "items", "documents": [{"_id": 1}]})
    sdb.items.insert_one({"_id": 2})
    t2 = sdb.command("ping")["operationTime"]

    assert t2 > t1  # operationTime: the last applied write, past the hole
    assert sdb.items.find_one({"_id": 1}) is None  # the held write has not happened yet
    assert tailing.try_next() is None  # T2 is applied, but not visible to a stream
    assert bson_ts(tailing.resume_token) < t1
    optimes = sdb.client.admin.command("replSetGetStatus")["optimes"]
    assert optimes["lastCommittedOpTime"]["ts"] < t1 <= optimes["appliedOpTime"]["ts"]

    assert release()["ts"] == t1
    delivered = [tailing.next(), tailing.next()]
    assert [(e["documentKey"]["_id"], e["clusterTime"]) for e in delivered] == [(1, t1), (2, t2)]


def test_a_stream_armed_at_pings_operation_time_during_a_hole_misses_the_held_write(sdb, hole):
    open_hole, release = hole
    t1 = open_hole(sdb.name, {"insert": "items", "documents": [{"_id": 1}]})
    sdb.items.insert_one({"_id": 2})
    armed_at = sdb.command("ping")["operationTime"]
    armed = sdb.items.watch(start_at_operation_time=armed_at, max_await_time_ms=NO_ANSWER_MS)
    # MongoDB starts a stream without a start point one tick after the last applied write
    # (getStartTimeForNewStream), past the hole too: it misses T1 as well.
    fresh = sdb.items.watch(max_await_time_ms=NO_ANSWER_MS)
    assert fresh.try_next() is None and bson_ts(fresh.resume_token) >= armed_at > t1

    release()
    sdb.items.insert_one({"_id": 3})

    assert [armed.next()["documentKey"]["_id"], armed.next()["documentKey"]["_id"]] == [2, 3]
    assert fresh.next()["documentKey"]["_id"] == 3
    assert sdb.items.find_one({"_id": 1}) == {"_id": 1}  # committed, and missed by both


def test_a_held_update_or_delete_takes_its_reserved_timestamp(sdb, hole):
    open_hole, release = hole
    sdb.items.insert_many([{"_id": 1, "n": 0}, {"_id": 2}])
    with sdb.items.watch(max_await_time_ms=NO_ANSWER_MS) as stream:
        t1 = open_hole(sdb.name, {"update": "items",
                                  "updates": [{"q": {"_id": 1}, "u": {"$set": {"n": 1}}}]})
        sdb.items.delete_one({"_id": 2})
        assert sdb.items.find_one({"_id": 1}) == {"_id": 1, "n": 0}
        assert release()["nModified"] == 1
        update, delete = stream.next(), stream.next()
    assert (update["operationType"], update["clusterTime"]) == ("update", t1)
    assert delete["operationType"] == "delete" and delete["clusterTime"] > t1


def test_an_oplog_hole_takes_one_single_document_write(server, sdb, hole):
    open_hole, _ = hole
    for write in ({"insert": "items", "documents": [{"_id": 1}, {"_id": 2}]},
                  {"update": "items", "updates": [{"q": {}, "u": {"$set": {"n": 1}},
                                                   "multi": True}]}):
        assert refused(lambda w=write: server.admin.command(
            {"holdOplogHole": sdb.name, "write": w})).code == 2
    assert refused(lambda: server.admin.command({"releaseOplogHole": 1})).code == 2


def majority_find(db, after: bson.Timestamp, **options: Any) -> dict[str, Any]:
    return db.command({"find": "items", "filter": {}, "readConcern": {
        "level": "majority", "afterClusterTime": after}, **options})


def test_a_majority_read_after_a_time_past_an_open_hole_waits_until_the_hole_closes(sdb, hole):
    open_hole, release = hole
    sdb.items.insert_one({"_id": 0})
    before = sdb.command("ping")["operationTime"]
    open_hole(sdb.name, {"insert": "items", "documents": [{"_id": 1}]})
    sdb.items.insert_one({"_id": 2})
    t2 = sdb.command("ping")["operationTime"]

    failure = refused(lambda: majority_find(sdb, t2, maxTimeMS=NO_ANSWER_MS))
    assert (failure.code, failure.details["codeName"], failure.details["errmsg"]) == (
        50, "MaxTimeMSExpired", "operation exceeded time limit")
    # before the hole, and at the level "local", nothing is waited for (the answer is the
    # latest data here; MongoDB's would be the majority snapshot, without _id 2)
    assert majority_find(sdb, before, maxTimeMS=NO_ANSWER_MS)["ok"] == 1
    local = sdb.command({"find": "items", "filter": {}, "readConcern": {
        "level": "local", "afterClusterTime": t2}})
    assert [d["_id"] for d in local["cursor"]["firstBatch"]] == [0, 2]

    answers: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: answers.append(majority_find(sdb, t2)))
    waiting.start()
    release()
    waiting.join(timeout=30)
    assert sorted(d["_id"] for d in answers[0]["cursor"]["firstBatch"]) == [0, 1, 2]


def bson_ts(token: dict[str, Any]) -> bson.Timestamp:
    """The timestamp in one of the local server's resume tokens (docs/testing.md: "82", 16 hex
    digits of the timestamp, a kind byte); opaque on MongoDB."""
    value = int(token["_data"][2:18], 16)
    return bson.Timestamp(value >> 32, value & 0xFFFFFFFF)


# ------------------------------------------------------- field names with "." or a leading $

ODD = {"_id": 1, "price.usd": 5, "$currency": "EUR", "$meta": {"seen": 1}, "qty": 2}


def test_operator_updates_of_a_document_with_dotted_and_dollar_names_keep_those_fields(sdb):
    sdb.odd.insert_one(dict(ODD))
    guard = {"_id": 1, "$expr": {"$eq": [{"$getField": {"field": {"$literal": "price.usd"}}}, 5]}}

    updated = sdb.odd.update_one(guard, {"$set": {"total": 10}, "$inc": {"qty": 1},
                                         "$unset": {"$currency": ""}})
    sdb.odd.update_one({"_id": 1}, {"$set": {"$meta.seen": 2, "price.usd": 7}})

    assert updated.modified_count == 1
    # "price.usd" in $set is a path (price -> usd), never the field of that name
    assert sdb.odd.find_one() == {"_id": 1, "price.usd": 5, "$meta": {"seen": 2}, "qty": 3,
                                  "total": 10, "price": {"usd": 7}}


@pytest.mark.parametrize(("update", "name"), [
    ({"$set": {"$currency": "USD"}}, "$currency"), ({"$inc": {"$count": 1}}, "$count"),
    ({"$set": {"$new.x": 1}}, "$new"), ({"$rename": {"qty": "$qty"}}, "$qty")])
def test_operators_that_set_a_top_level_dollar_field_are_refused_with_52(sdb, update, name):
    sdb.odd.insert_one(dict(ODD))
    failure = refused(lambda: sdb.odd.update_one({"_id": 1}, update))
    assert isinstance(failure, WriteError) and failure.code == 52
    assert failure.details["errmsg"] == (
        f"The dollar ($) prefixed field '{name}' in '{name}' is not allowed in the context of "
        "an update's replacement document. Consider using an aggregation pipeline with "
        "$replaceWith.")
    assert sdb.odd.find_one() == ODD


def test_a_replacement_may_hold_dotted_names_and_no_top_level_dollar_name(sdb):
    sdb.odd.insert_one(dict(ODD))
    sdb.odd.replace_one({"_id": 1}, {"a.b": 1, "nested": {"$ok": True}})
    assert sdb.odd.find_one() == {"_id": 1, "a.b": 1, "nested": {"$ok": True}}
    failure = refused(lambda: sdb.odd.replace_one({"_id": 1}, {"x": 1, "$y": 2}))
    assert failure.code == 52 and "'$y' in '$y'" in failure.details["errmsg"]


def test_pipeline_updates_set_read_and_unset_fields_by_name(sdb):
    sdb.odd.insert_one(dict(ODD))
    sdb.odd.update_one({"_id": 1}, [
        {"$replaceWith": {"$setField": {"field": {"$literal": "$currency"}, "input": "$$ROOT",
                                        "value": "USD"}}},
        {"$replaceWith": {"$unsetField": {"field": "price.usd", "input": "$$ROOT"}}},
        {"$set": {"copied": {"$getField": {"$literal": "$currency"}},
                  "total": {"$multiply": [{"$getField": "qty"}, 3]}}},
        {"$unset": ["qty"]}])
    assert sdb.odd.find_one() == {"_id": 1, "$currency": "USD", "$meta": {"seen": 1},
                                  "copied": "USD", "total": 6}
    value = sdb.odd.find_one_and_update(
        {"_id": 1}, [{"$replaceWith": {"$literal": {"_id": 1, "a.b": 1, "$c": 2}}}],
        return_document=pymongo.ReturnDocument.AFTER)
    assert value == {"_id": 1, "a.b": 1, "$c": 2}


@pytest.mark.parametrize(("pipeline", "code"), [
    ([{"$set": {"x": {"$getField": "$qty"}}}], 5654600),  # a path, not a name
    ([{"$set": {"x": {"$getField": {"field": {"$concat": ["q", "ty"]}}}}}], 5654601),
    ([{"$replaceWith": {"$setField": {"field": "$qty", "input": "$$ROOT", "value": 1}}}],
     4161108),
    ([{"$replaceWith": {"$setField": {"field": 5, "input": "$$ROOT", "value": 1}}}], 4161107),
    ([{"$replaceWith": {"$setField": {"field": "a", "input": "$qty", "value": 1}}}], 4161105),
    ([{"$replaceWith": {"_id": 1, "a.b": 1}}], 16412),  # dotted names only through $literal
    ([{"$set": {"$x": 1}}], 16410),
    ([{"$group": {"_id": 1}}], 72),
    ([{"$frobnicate": {}}], 40324),
    ([{"$replaceWith": {"_id": 2}}], 66),
])
def test_pipeline_updates_are_refused_as_mongodb_refuses_them(sdb, pipeline, code):
    sdb.odd.insert_one(dict(ODD))
    assert refused(lambda: sdb.odd.update_one({"_id": 1}, pipeline)).code == code
    assert sdb.odd.find_one() == ODD


def test_updates_of_such_documents_are_change_events(sdb):
    sdb.odd.insert_one(dict(ODD))
    with sdb.odd.watch(max_await_time_ms=NO_ANSWER_MS) as stream:
        sdb.odd.update_one({"_id": 1}, {"$set": {"total": 10}})
        sdb.odd.update_one({"_id": 1}, [{"$replaceWith": {"$setField": {
            "field": {"$literal": "price.usd"}, "input": "$$ROOT", "value": 6}}}])
        first, second = stream.next(), stream.next()
    assert first["updateDescription"]["updatedFields"] == {"total": 10}
    assert second["operationType"] == "update"
    assert second["updateDescription"]["updatedFields"] == {"price.usd": 6}


ADD_TOTAL = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="odd")
    def add_total(doc, ctx):
        if "total" not in doc:
            return {"total": doc["qty"] * doc["price.usd"]}
''')


def test_apply_migrates_documents_with_dotted_and_dollar_names(server, sdb, tmp_path: Path):
    (tmp_path / "odd.py").write_text(ADD_TOTAL)
    host, port = server.address
    settings = Settings(mongodb_uri=f"mongodb://{host}:{port}/{sdb.name}?directConnection=true",
                        kafka_bootstrap_servers=KAFKA, transforms=tmp_path)
    sdb.odd.insert_many([{**ODD, "_id": i, "price.usd": i} for i in range(5)])
    try:
        applied = api.apply(settings, "add_total", show_progress=False)
    finally:
        settings.close()
    assert (applied.result.updated, applied.result.failed) == (5, 0)
    for doc in sdb.odd.find():
        assert doc["total"] == 2 * doc["_id"] and doc["$currency"] == "EUR"


def test_an_upsert_that_inserts_may_create_top_level_dollar_fields_and_one_that_updates_not(sdb):
    # dot-dollar-considerations: an upsert that inserts is checked as an insert
    sdb.plain.update_one({"_id": 7}, {"$set": {"$hotel": 320}}, upsert=True)
    assert sdb.plain.find_one({"_id": 7}) == {"_id": 7, "$hotel": 320}
    failure = refused(lambda: sdb.plain.update_one({"_id": 7}, {"$set": {"$hotel": 1}},
                                                   upsert=True))
    assert failure.code == 52
    # $setOnInsert changes nothing of a document that exists: nothing to refuse there
    sdb.plain.update_one({"_id": 7}, {"$setOnInsert": {"$spa": 1}, "$set": {"n": 1}}, upsert=True)
    sdb.plain.update_one({"_id": 8}, {"$setOnInsert": {"$spa": 1}, "$set": {"n": 1}}, upsert=True)
    assert list(sdb.plain.find()) == [{"_id": 7, "$hotel": 320, "n": 1},
                                      {"_id": 8, "$spa": 1, "n": 1}]


# ------------------------------------------------------------ $sample's pseudo-random cursor

def scanned(client: pymongo.MongoClient) -> int:
    return client.admin.command("serverStatus")["metrics"]["queryExecutor"]["scannedObjects"]


@pytest.mark.parametrize(("pipeline", "size", "reads_all"), [
    ([], 50, False),  # first stage, 1% of the collection: a random cursor
    ([], 250, False),  # 5%: still
    ([], 251, True),  # over 5%: every document, then a random choice
    ([{"$match": {"n": {"$gte": 0}}}], 50, True),  # not the first stage
])
def test_sample_reads_only_its_documents_as_the_first_stage_below_5_percent(
        server, sdb, pipeline, size, reads_all):
    sdb.items.insert_many([{"_id": i, "n": i} for i in range(5000)])
    before = scanned(server)

    sample = list(sdb.items.aggregate([*pipeline, {"$sample": {"size": size}}]))

    read = scanned(server) - before
    assert len(sample) == size and len({d["_id"] for d in sample}) == size
    assert read >= 5000 if reads_all else size <= read < 5000


def test_sample_of_a_collection_of_100_documents_reads_them_all(server, sdb):
    sdb.items.insert_many([{"_id": i} for i in range(100)])
    before = scanned(server)
    assert len(list(sdb.items.aggregate([{"$sample": {"size": 2}}]))) == 2
    assert scanned(server) - before == 100
