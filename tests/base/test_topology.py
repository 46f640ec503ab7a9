"""The deployment as the tool reads it: which replica-set members count for replication lag,
each shard's lag through mongos, and refusals told apart from outages."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pymongo
import pytest

from cdc_migrator.base import topology
from cdc_migrator.base.settings import Settings

from ..harness import KAFKA, local_mongo_missing, start_local_mongo, stop_local_mongo

NOW = dt.datetime(2025, 1, 1, 12, 0, 0)
CONFIG = {"members": [
    {"_id": 0, "host": "a:1"},
    {"_id": 1, "host": "b:1"},
    {"_id": 2, "host": "c:1", "secondaryDelaySecs": 3600, "hidden": True, "priority": 0,
     "votes": 0},
    {"_id": 3, "host": "d:1", "arbiterOnly": True},
    {"_id": 4, "host": "e:1", "priority": 0, "votes": 0},
    {"_id": 5, "host": "f:1", "hidden": True, "priority": 0},
    {"_id": 6, "host": "g:1", "slaveDelay": 60, "priority": 0},  # before MongoDB 5.0
]}


def member(_id: int, state: int, behind: float | None) -> dict[str, Any]:
    found: dict[str, Any] = {"_id": _id, "state": state}
    if behind is not None:
        found["optimeDate"] = NOW - dt.timedelta(seconds=behind)
    return found


def test_only_visible_voting_data_bearing_undelayed_members_count():
    assert topology.counting_members(CONFIG) == {0, 1}


def test_the_lag_is_the_slowest_counting_secondarys():
    status = {"members": [member(0, 1, 0), member(1, 2, 2.5), member(2, 2, 3600),
                          member(3, 7, None), member(4, 2, 90), member(5, 2, 50),
                          member(6, 2, 70)]}
    assert topology.lag_of(status, topology.counting_members(CONFIG)) == 2.5
    assert topology.lag_of(status, {0}) is None  # no counting secondary: nothing to bound


def test_a_shard_host_names_its_replica_set():
    assert topology.Shard.parse({"_id": "s0", "host": "rs0/a:27018,b:27018"}) == \
        topology.Shard("s0", "a:27018,b:27018", "rs0")
    assert topology.Shard.parse({"_id": "s1", "host": "c:27018"}) == \
        topology.Shard("s1", "c:27018", None)


# ------------------------------------------------------------------ against local servers

@pytest.fixture(scope="module")
def servers(tmp_path_factory, local_servers):
    """Two LocalMongos of this module's own: a router (mongos mode) and a shard's member."""
    missing = local_mongo_missing()
    if missing:
        pytest.skip(missing)
    started = [start_local_mongo(tmp_path_factory.mktemp(name)) for name in ("router", "shard")]
    yield [client for _, client in started]
    for proc, client in started:
        stop_local_mongo(proc, client)


@pytest.fixture
def shard(servers):
    client = servers[1]
    yield client
    client.admin.command({"setReplicaSetMembers": []})


@pytest.fixture
def router(servers):
    client = servers[0]
    client.admin.command({"setMongosMode": True})
    yield client
    client.admin.command({"setMongosMode": False})
    client.config.drop_collection("shards")


DELAYED_AND_HIDDEN = [{"lag": 2}, {"secondaryDelaySecs": 3600, "hidden": True, "priority": 0,
                                   "votes": 0},
                      {"arbiterOnly": True}, {"lag": 40, "votes": 0, "priority": 0}]


@pytest.mark.services
def test_a_delayed_hidden_arbiter_or_non_voting_member_does_not_count(shard):
    # Regression (issue 25): every member in state 2 counted, so a backup member an hour behind
    # by design held a migration bounded to 5 s forever.
    shard.admin.command({"setReplicaSetMembers": DELAYED_AND_HIDDEN})
    assert topology.replica_set_lag(shard).seconds == pytest.approx(2, abs=0.5)


@pytest.mark.services
def test_a_standalone_has_no_lag_to_bound(shard):
    assert topology.replica_set_lag(shard) == topology.Lag()


@pytest.mark.services
def test_through_mongos_the_lag_is_read_from_each_shards_members(router, shard):
    shard.admin.command({"setReplicaSetMembers": DELAYED_AND_HIDDEN})
    host, port = shard.address
    router.config.shards.insert_one({"_id": "shard00", "host": f"{host}:{port}", "state": 1})
    rhost, rport = router.address
    settings = Settings(mongodb_uri=f"mongodb://{rhost}:{rport}/app?directConnection=true",
                        kafka_bootstrap_servers=KAFKA)
    try:
        lag = topology.LagReader(settings.client, settings.client_for)()
    finally:
        settings.close()
    assert lag.unknown is None and lag.seconds == pytest.approx(2, abs=0.5)


@pytest.mark.services
def test_through_mongos_a_shard_out_of_reach_makes_the_lag_unknown_with_the_reason(router):
    router.config.shards.insert_one({"_id": "shard07", "host": "rs7/127.0.0.1:1", "state": 1})
    lag = topology.LagReader(router, lambda hosts, rs: pymongo.MongoClient(
        hosts, replicaSet=rs, serverSelectionTimeoutMS=200))()
    assert lag.seconds is None
    assert lag.unknown.startswith("shard shard07 (127.0.0.1:1) cannot be read: ")
    assert lag.fix == "let this machine reach every shard's members with the same user"


@pytest.mark.services
def test_through_mongos_without_shards_listed_the_lag_is_unknown(router):
    lag = topology.LagReader(router, lambda hosts, rs: pytest.fail("no shard to connect to"))()
    assert lag.unknown == ("through mongos the lag is read from each shard, and config.shards "
                           "lists none")
