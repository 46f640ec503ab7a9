"""The local server with access control on (``LocalMongo -Dauth=true``), as MongoDB answers:
SCRAM authentication, users and roles as ``createUser``/``createRole`` define them, the
built-in roles' privileges, ``connectionStatus`` with ``showPrivileges``, and every command
checked against the privileges of the connection's user (13 Unauthorized). Then the proof issue
26 asks of the server: a whole migration runs for a user holding only readWrite and dbAdmin on
its database, and one without the collMod action is refused at cutover.

Each module-scoped server is this file's own, on a free port (tests/harness.py:
``start_local_mongo(auth=True)``); its first user is made through the localhost exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from bson import Binary
from pymongo.errors import OperationFailure

from cdc_migrator.base.settings import Settings
from cdc_migrator.core.state import Phase

from ..harness import (
    KAFKA,
    local_mongo_missing,
    run_cli,
    start_local_mongo,
    state_of,
    stop_local_mongo,
)

pytestmark = [pytest.mark.services,
              pytest.mark.local_server("a LocalMongo of its own with access control")]

ROOT_USER, ROOT_PASSWORD = "root", "root-secret"


class Secured:
    """A server with access control on, its root user, and clients for other users."""

    def __init__(self, home: Path) -> None:
        missing = local_mongo_missing()
        if missing:
            pytest.skip(missing)
        self.proc, self.anonymous = start_local_mongo(home, auth=True)
        address = self.anonymous.address
        assert address is not None
        self.host, self.port = address
        self.clients: list[pymongo.MongoClient] = []
        self.anonymous.admin.command("createUser", ROOT_USER, pwd=ROOT_PASSWORD, roles=["root"])
        self.root = self.client(ROOT_USER, ROOT_PASSWORD)

    def client(self, user: str, password: str, source: str = "admin",
               **options: Any) -> pymongo.MongoClient:
        options = {"serverSelectionTimeoutMS": 10_000, "tz_aware": True, **options}
        client: pymongo.MongoClient = pymongo.MongoClient(self.uri(user, password, source),
                                                          **options)
        self.clients.append(client)
        return client

    def uri(self, user: str, password: str, source: str, db: str = "") -> str:
        return (f"mongodb://{user}:{password}@{self.host}:{self.port}/{db}"
                f"?authSource={source}&directConnection=true")

    def user(self, roles: list, db: str = "admin") -> pymongo.MongoClient:
        """A client for a new user of ``db`` holding ``roles``."""
        name = f"u{uuid.uuid4().hex[:8]}"
        self.root[db].command("createUser", name, pwd="pw-" + name, roles=roles)
        return self.client(name, "pw-" + name, db)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        stop_local_mongo(self.proc, self.anonymous)


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[Secured]:
    server = Secured(tmp_path_factory.mktemp("auth"))
    app = server.root.app
    app.items.insert_many([{"_id": i, "qty": i} for i in range(5)])
    app.other.insert_many([{"_id": i, "item": i} for i in range(3)])
    server.root.config.settings.insert_one({"_id": "balancer"})
    yield server
    server.close()


def refused(action: Callable[[], Any]) -> dict[str, Any]:
    """The reply of the Unauthorized refusal ``action`` met (fails the test if it ran)."""
    with pytest.raises(OperationFailure) as caught:
        action()
    reply = dict(caught.value.details or {})
    assert (caught.value.code, reply.get("codeName")) == (13, "Unauthorized"), reply
    return reply


def privilege(collection: str, *actions: str, db: str = "app") -> dict[str, Any]:
    return {"resource": {"db": db, "collection": collection}, "actions": list(actions)}


def role(name: str, db: str = "app") -> dict[str, str]:
    return {"role": name, "db": db}


def allowed(action: Callable[[], Any]) -> None:
    """``action`` passed the privilege check (it may still fail for another reason)."""
    try:
        action()
    except OperationFailure as exc:
        assert exc.code != 13, exc.details


# --------------------------------------------------------------------------- authentication

def test_before_login_only_commands_that_need_no_authentication_answer(secured):
    anonymous = secured.anonymous
    assert anonymous.admin.command("ping")["ok"] == 1
    assert anonymous.admin.command("buildInfo")["ok"] == 1
    status = anonymous.admin.command("connectionStatus")["authInfo"]
    assert status == {"authenticatedUsers": [], "authenticatedUserRoles": []}

    refusal = refused(lambda: anonymous.app.items.find_one())
    assert refusal["errmsg"] == "Command find requires authentication"
    assert refused(lambda: anonymous.admin.command("serverStatus"))["errmsg"] == \
        "Command serverStatus requires authentication"


def test_the_localhost_exception_allows_the_first_user_on_admin_and_then_closes(tmp_path):
    proc, anonymous = start_local_mongo(tmp_path, auth=True)
    try:
        # Before any user exists, localhost may only create one on admin (MongoDB's exception).
        refusal = refused(lambda: anonymous.app.items.find_one())
        assert refusal["errmsg"].startswith(
            'not authorized on app to execute command { find: "items"')
        refused(lambda: anonymous.app.command("createUser", "early", pwd="x", roles=["read"]))
        anonymous.admin.command("createUser", "first", pwd="first-secret", roles=["root"])

        closed = refused(lambda: anonymous.admin.command("createUser", "second", pwd="x", roles=[]))
        assert closed["errmsg"] == "Command createUser requires authentication"
    finally:
        stop_local_mongo(proc, anonymous)


@pytest.mark.parametrize("mechanism", [None, "SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_a_user_authenticates_with_scram(secured, mechanism):
    options = {"authMechanism": mechanism} if mechanism else {}
    client = secured.client(ROOT_USER, ROOT_PASSWORD, **options)
    status = client.admin.command("connectionStatus")["authInfo"]
    assert status["authenticatedUsers"] == [{"user": ROOT_USER, "db": "admin"}]


@pytest.mark.parametrize("user, password", [(ROOT_USER, "wrong"), ("nobody", ROOT_PASSWORD)])
def test_a_wrong_password_or_unknown_user_fails_with_authentication_failed(secured, user, password):
    client = secured.client(user, password, serverSelectionTimeoutMS=3000)
    with pytest.raises(OperationFailure) as caught:
        client.admin.command("ping")
    reply = caught.value.details or {}
    assert (caught.value.code, reply.get("codeName"), reply.get("errmsg")) == (
        18, "AuthenticationFailed", "Authentication failed.")


def test_a_user_of_another_database_authenticates_there_with_its_mechanisms(secured):
    secured.root.shop.command("createUser", "clerk", pwd="clerk-pw", roles=["read"],
                              mechanisms=["SCRAM-SHA-1"])
    hello = secured.anonymous.admin.command("hello", saslSupportedMechs="shop.clerk")
    assert hello["saslSupportedMechs"] == ["SCRAM-SHA-1"]
    assert "saslSupportedMechs" not in secured.anonymous.admin.command(
        "hello", saslSupportedMechs="shop.nobody")

    clerk = secured.client("clerk", "clerk-pw", "shop")  # the driver picks SCRAM-SHA-1
    assert clerk.shop.command("connectionStatus")["authInfo"]["authenticatedUsers"] == \
        [{"user": "clerk", "db": "shop"}]
    only_sha256 = secured.client("clerk", "clerk-pw", "shop", authMechanism="SCRAM-SHA-256",
                                 serverSelectionTimeoutMS=3000)
    with pytest.raises(OperationFailure) as caught:
        only_sha256.shop.command("ping")
    assert caught.value.code == 18


def test_hello_starts_a_speculative_authentication_as_mongodb_4_4_and_later_do(secured):
    first = b"n,,n=" + ROOT_USER.encode() + b",r=clientnonce0123456789"
    start = {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": Binary(first), "db": "admin",
             "options": {"skipEmptyExchange": True}}
    reply = secured.anonymous.admin.command("hello", speculativeAuthenticate=start)
    assert reply["speculativeAuthenticate"]["conversationId"] == 1
    assert reply["speculativeAuthenticate"]["done"] is False
    server_first = bytes(reply["speculativeAuthenticate"]["payload"]).decode()
    assert server_first.startswith("r=clientnonce0123456789") and ",s=" in server_first
    assert server_first.endswith(",i=15000")
    # A start that cannot succeed is dropped without a word, as MongoDB drops it.
    unknown = dict(start, payload=Binary(b"n,,n=nobody,r=clientnonce0123456789"))
    assert "speculativeAuthenticate" not in secured.anonymous.admin.command(
        "hello", speculativeAuthenticate=unknown)


def _scram_sha_256(db: Any, user: str, password: str) -> dict:
    """A SCRAM-SHA-256 conversation (RFC 7677) run by hand on ``db``'s connection: the reply to
    its last step."""
    nonce = base64.b64encode(os.urandom(24)).decode()
    first_bare = f"n={user},r={nonce}"
    started = db.command("saslStart", mechanism="SCRAM-SHA-256",
                         payload=Binary(b"n,," + first_bare.encode()),
                         options={"skipEmptyExchange": True})
    server_first = bytes(started["payload"]).decode()
    fields = dict(field.split("=", 1) for field in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]),
                                 int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c=biws,r={fields['r']}"
    message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    return db.command("saslContinue", conversationId=started["conversationId"],
                      payload=Binary(without_proof.encode() + b",p=" + proof))


def test_a_connection_holds_one_user_until_it_logs_out(secured):
    one = secured.user([role("read")])
    user = one.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"][0]["user"]
    # One connection for every command below, so that they share its login.
    client = secured.client(user, "pw-" + user, maxPoolSize=1)
    reply = _scram_sha_256(client.admin, user, "pw-" + user)  # the same user again: fine
    assert reply["done"] is True and bytes(reply["payload"]).startswith(b"v=")

    with pytest.raises(OperationFailure) as other:
        _scram_sha_256(client.admin, ROOT_USER, ROOT_PASSWORD)
    assert other.value.code == 5626701
    assert str(other.value).startswith("Each client connection may only be authenticated once")
    with pytest.raises(OperationFailure) as plain:
        client.admin.command("saslStart", mechanism="PLAIN", payload=Binary(b"\0u\0p"))
    assert plain.value.code == 334

    client.admin.command("logout")
    assert refused(lambda: client.app.items.find_one())["errmsg"] == \
        "Command find requires authentication"


def test_a_dropped_user_is_logged_out_of_its_open_connections(secured):
    client = secured.user([role("read")])
    assert client.app.items.find_one({"_id": 0}) == {"_id": 0, "qty": 0}
    name = client.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"][0]["user"]

    secured.root.admin.command("dropUser", name)

    assert refused(lambda: client.app.items.find_one())["errmsg"] == \
        "Command find requires authentication"


# -------------------------------------------------------------------- the built-in roles

ROLES = {
    "read": [role("read")],
    "readWrite": [role("readWrite")],
    "dbAdmin": [role("dbAdmin")],
    "dbOwner": [role("dbOwner")],
    "clusterMonitor": ["clusterMonitor"],
    "readAnyDatabase": ["readAnyDatabase"],
    "readWriteAnyDatabase": ["readWriteAnyDatabase"],
    "root": ["root"],
}


def _watch(target: Any) -> None:
    with target.watch(max_await_time_ms=10) as stream:
        stream.try_next()


# What each command needs, run on the app database (or admin, local, config), and the built-in
# roles that hold it, as MongoDB's built-in roles define them.
OPERATIONS: dict[str, tuple[Callable[[pymongo.MongoClient], Any], set[str]]] = {
    "find": (lambda c: c.app.items.find_one(),
             {"read", "readWrite", "dbOwner", "readAnyDatabase", "readWriteAnyDatabase", "root"}),
    "insert": (lambda c: c.app.scratch.insert_one({"_id": uuid.uuid4().hex}),
               {"readWrite", "dbOwner", "readWriteAnyDatabase", "root"}),
    "update": (lambda c: c.app.scratch.update_one({"_id": "x"}, {"$set": {"n": 1}}),
               {"readWrite", "dbOwner", "readWriteAnyDatabase", "root"}),
    "remove": (lambda c: c.app.scratch.delete_one({"_id": "none"}),
               {"readWrite", "dbOwner", "readWriteAnyDatabase", "root"}),
    "createCollection": (lambda c: c.app.command("create", "c" + uuid.uuid4().hex[:8]),
                         {"readWrite", "dbAdmin", "dbOwner", "readWriteAnyDatabase", "root"}),
    "createIndex": (lambda c: c.app.command("createIndexes", "scratch",
                                            indexes=[{"key": {"n": 1}, "name": "n_1"}]),
                    {"readWrite", "dbAdmin", "dbOwner", "readWriteAnyDatabase", "root"}),
    "dropCollection": (lambda c: c.app.command("drop", "never_there"),
                       {"readWrite", "dbAdmin", "dbOwner", "readWriteAnyDatabase", "root"}),
    "listCollections": (lambda c: c.app.list_collection_names(),
                        {"read", "readWrite", "dbAdmin", "dbOwner", "readAnyDatabase",
                         "readWriteAnyDatabase", "root"}),
    "listIndexes": (lambda c: list(c.app.items.list_indexes()),
                    {"read", "readWrite", "dbAdmin", "dbOwner", "readAnyDatabase",
                     "readWriteAnyDatabase", "root"}),
    "collMod": (lambda c: c.app.command("collMod", "items", validator={"$jsonSchema": {}}),
                {"dbAdmin", "dbOwner", "root"}),
    "changeStream on a collection": (lambda c: _watch(c.app.items),
                                     {"read", "readWrite", "dbOwner", "readAnyDatabase",
                                      "readWriteAnyDatabase", "root"}),
    "changeStream on a database": (lambda c: _watch(c.app),
                                   {"read", "readWrite", "dbOwner", "readAnyDatabase",
                                    "readWriteAnyDatabase", "root"}),
    "changeStream on the cluster": (lambda c: _watch(c),
                                    {"readAnyDatabase", "readWriteAnyDatabase", "root"}),
    "count": (lambda c: c.app.command("count", "items"),
              {"read", "readWrite", "dbOwner", "readAnyDatabase", "readWriteAnyDatabase", "root"}),
    "findAndModify": (lambda c: c.app.scratch.find_one_and_update({"_id": "x"}, {"$set": {"n": 2}}),
                      {"readWrite", "dbOwner", "readWriteAnyDatabase", "root"}),
    "$lookup of another collection": (
        lambda c: list(c.app.items.aggregate([{"$lookup": {"from": "other", "localField": "_id",
                                                           "foreignField": "item", "as": "o"}}])),
        {"read", "readWrite", "dbOwner", "readAnyDatabase", "readWriteAnyDatabase", "root"}),
    "replSetGetStatus": (lambda c: c.admin.command("replSetGetStatus"), {"clusterMonitor", "root"}),
    "replSetGetConfig": (lambda c: c.admin.command("replSetGetConfig"), {"clusterMonitor", "root"}),
    "serverStatus": (lambda c: c.admin.command("serverStatus"), {"clusterMonitor", "root"}),
    "dbStats": (lambda c: c.app.command("dbStats"), set(ROLES)),
    "collStats": (lambda c: c.app.command("collStats", "items"), set(ROLES)),
    "local.oplog.rs": (lambda c: c.local["oplog.rs"].find_one(sort=[("$natural", 1)]),
                       {"clusterMonitor", "root"}),
    "config.settings": (lambda c: c.config.settings.find_one(), {"clusterMonitor", "root"}),
}


@pytest.fixture(scope="module")
def role_clients(secured) -> dict[str, pymongo.MongoClient]:
    return {role: secured.user(roles) for role, roles in ROLES.items()}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("built_in", list(ROLES))
def test_each_built_in_role_allows_exactly_what_mongodb_grants_it(role_clients, built_in,
                                                                  operation):
    run, holders = OPERATIONS[operation]
    client = role_clients[built_in]
    if built_in in holders:
        allowed(lambda: run(client))
    else:
        refusal = refused(lambda: run(client))
        assert refusal["errmsg"].startswith("not authorized on "), refusal


def test_a_refusal_names_the_database_and_prints_the_command_as_mongodb_does(role_clients):
    reader = role_clients["read"]
    refusal = refused(lambda: reader.app.command("collMod", "items", validator={"$jsonSchema": {}}))
    assert refusal["errmsg"] == ('not authorized on app to execute command '
                                         '{ collMod: "items", validator: { $jsonSchema: {} }, '
                                         '$db: "app" }')


def test_only_the_user_who_opened_a_cursor_may_continue_or_kill_it(secured, role_clients):
    secured.root.app.many.insert_many([{"_id": i} for i in range(10)])
    owner = secured.user([role("read")])
    first = owner.app.command("find", "many", batchSize=2)
    cursor_id = first["cursor"]["id"]
    stranger = role_clients["read"]

    taken = refused(lambda: stranger.app.command("getMore", cursor_id, collection="many"))
    assert taken["errmsg"] == f"cursor id {cursor_id} was not created by the authenticated user"
    killed = refused(lambda: stranger.app.command("killCursors", "many", cursors=[cursor_id]))
    assert killed["errmsg"].startswith("not authorized on app to execute command { killCursors")

    assert len(owner.app.command("getMore", cursor_id, collection="many", batchSize=2)
               ["cursor"]["nextBatch"]) == 2
    # killAnyCursor (root holds it through hostManager) may kill anyone's cursor.
    reply = secured.root.app.command("killCursors", "many", cursors=[cursor_id])
    assert reply["cursorsKilled"] == [cursor_id]


def test_the_server_s_test_commands_are_for_root_only(role_clients):
    admin_of_app = role_clients["dbOwner"].admin
    refused(lambda: admin_of_app.command({"configureFailPoint": "failCommand", "mode": "off"}))
    refused(lambda: admin_of_app.command({"setSecondaryLag": []}))
    root = role_clients["root"].admin
    assert root.command({"configureFailPoint": "failCommand", "mode": "off"})["ok"] == 1
    assert root.command({"setSecondaryLag": []})["ok"] == 1


def test_list_databases_shows_only_the_databases_a_user_has_privileges_in(role_clients):
    names = set(role_clients["read"].list_database_names())
    assert "app" in names and "config" not in names
    assert {"app", "config"} <= set(role_clients["root"].list_database_names())


# ------------------------------------------------------------ connectionStatus, createRole

def test_connection_status_shows_the_user_its_roles_and_its_merged_privileges(secured):
    owner = secured.user([role("dbOwner")])
    plain = owner.admin.command("connectionStatus")["authInfo"]
    assert "authenticatedUserPrivileges" not in plain
    info = owner.admin.command("connectionStatus", showPrivileges=True)["authInfo"]

    assert [u["db"] for u in info["authenticatedUsers"]] == ["admin"]
    assert sorted((r["role"], r["db"]) for r in info["authenticatedUserRoles"]) == [
        ("dbAdmin", "app"), ("dbOwner", "app"), ("readWrite", "app"), ("userAdmin", "app")]
    privileges = info["authenticatedUserPrivileges"]
    resources = [json.dumps(p["resource"], sort_keys=True) for p in privileges]
    assert len(resources) == len(set(resources)), "one privilege per resource"
    on_app = next(p["actions"] for p in privileges
                  if p["resource"] == {"db": "app", "collection": ""})
    assert on_app == sorted(on_app)
    assert {"find", "insert", "update", "remove", "collMod", "changeStream", "createIndex",
            "listCollections", "createUser", "dropDatabase"} <= set(on_app)
    assert {"resource": {"db": "app", "collection": "system.profile"},
            "actions": sorted({"changeStream", "collStats", "convertToCapped", "createCollection",
                               "dbHash", "dbStats", "dropCollection", "find", "killCursors",
                               "listCollections", "listIndexes", "listSearchIndexes",
                               "planCacheRead"})} in privileges


def test_a_custom_role_grants_exactly_its_privileges_and_those_of_the_roles_it_inherits(secured):
    app = secured.root.app
    app.command("createRole", "itemsReader", roles=[],
                privileges=[privilege("items", "find")])
    app.command("createRole", "itemsWriter", roles=["itemsReader"],
                privileges=[privilege("items", "insert", "update")])
    reader = secured.user([role("itemsReader")])
    writer = secured.user([role("itemsWriter")])

    assert reader.app.items.find_one({"_id": 1}) == {"_id": 1, "qty": 1}
    refused(lambda: reader.app.other.find_one())
    refused(lambda: list(reader.app.items.aggregate(
        [{"$lookup": {"from": "other", "localField": "_id", "foreignField": "item", "as": "o"}}])))
    refused(lambda: reader.app.items.insert_one({"_id": "r"}))
    status = reader.admin.command("connectionStatus", showPrivileges=True)["authInfo"]
    assert status["authenticatedUserPrivileges"] == [
        privilege("items", "find")]

    writer.app.items.insert_one({"_id": "w"})
    assert writer.app.items.find_one({"_id": "w"}) == {"_id": "w"}
    refused(lambda: writer.app.items.delete_one({"_id": "w"}))
    status = writer.admin.command("connectionStatus", showPrivileges=True)["authInfo"]
    assert status["authenticatedUserPrivileges"] == [
        privilege("items", "find", "insert", "update")]
    held = sorted(r["role"] for r in status["authenticatedUserRoles"])
    assert held == ["itemsReader", "itemsWriter"]


def test_roles_info_describes_a_role_as_mongodb_does(secured):
    app = secured.root.app
    app.command("createRole", "auditor", roles=[role("read")],
                privileges=[privilege("", "collStats")])
    plain = app.command("rolesInfo", "auditor")["roles"]
    assert plain == [{"_id": "app.auditor", "role": "auditor", "db": "app",
                      "roles": [role("read")], "isBuiltin": False,
                      "inheritedRoles": [role("read")]}]
    full = app.command("rolesInfo", role("auditor"), showPrivileges=True)["roles"][0]
    assert full["privileges"] == [privilege("", "collStats")]
    inherited = [p["resource"] for p in full["inheritedPrivileges"]]
    assert {"db": "app", "collection": "system.js"} in inherited
    builtin = app.command("rolesInfo", "dbOwner")["roles"][0]
    assert builtin["isBuiltin"] is True and "_id" not in builtin
    assert sorted(r["role"] for r in builtin["roles"]) == ["dbAdmin", "readWrite", "userAdmin"]
    assert app.command("rolesInfo", "noSuchRole")["roles"] == []


def test_granting_revoking_and_updating_roles_applies_to_open_connections(secured):
    app = secured.root.app
    client = secured.user([role("read")])
    name = client.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"][0]["user"]
    refused(lambda: client.app.scratch.insert_one({"_id": uuid.uuid4().hex}))

    secured.root.admin.command("grantRolesToUser", name, roles=[role("readWrite")])
    client.app.scratch.insert_one({"_id": uuid.uuid4().hex})
    secured.root.admin.command("revokeRolesFromUser", name, roles=[role("readWrite"),
                                                                   role("read")])
    refused(lambda: client.app.items.find_one())

    app.command("createRole", "temporary", roles=[],
                privileges=[privilege("other", "find")])
    secured.root.admin.command("grantRolesToUser", name, roles=[role("temporary")])
    assert client.app.other.find_one({"_id": 0}) == {"_id": 0, "item": 0}
    app.command("updateRole", "temporary",
                privileges=[privilege("items", "find")])
    refused(lambda: client.app.other.find_one())
    assert client.app.items.find_one({"_id": 0}) == {"_id": 0, "qty": 0}
    app.command("dropRole", "temporary")
    refused(lambda: client.app.items.find_one())
    assert secured.root.admin.command("usersInfo", name)["users"][0]["roles"] == []


def test_users_info_shows_the_stored_user_and_its_privileges_on_request(secured):
    secured.root.app.command("createUser", "viewer", pwd="viewer-pw", roles=["read"],
                             customData={"team": "data"})
    viewer = secured.client("viewer", "viewer-pw", "app")
    # Everyone may read their own entry; the credentials only when asked.
    user = viewer.app.command("usersInfo", "viewer")["users"][0]
    assert user["_id"] == "app.viewer" and user["user"] == "viewer" and user["db"] == "app"
    assert user["mechanisms"] == ["SCRAM-SHA-1", "SCRAM-SHA-256"]
    assert user["roles"] == [role("read")] and user["customData"] == {"team": "data"}
    assert "credentials" not in user and "inheritedPrivileges" not in user
    refused(lambda: viewer.app.command("usersInfo", {"user": ROOT_USER, "db": "admin"}))

    shown = secured.root.app.command("usersInfo", "viewer", showCredentials=True,
                                     showPrivileges=True)["users"][0]
    assert set(shown["credentials"]["SCRAM-SHA-256"]) == {"iterationCount", "salt", "storedKey",
                                                          "serverKey"}
    assert shown["credentials"]["SCRAM-SHA-256"]["iterationCount"] == 15000
    assert shown["inheritedRoles"] == [role("read")]
    assert {"resource": {"db": "app", "collection": ""}, "actions": sorted(
        ["changeStream", "collStats", "dbHash", "dbStats", "find", "killCursors", "listCollections",
         "listIndexes", "listSearchIndexes", "planCacheRead"])} in shown["inheritedPrivileges"]


def test_a_user_changes_its_own_password_only_with_the_change_own_password_action(secured):
    shop = secured.root.shop
    shop.command("createRole", "selfService", roles=["read"], privileges=[
        privilege("", "changeOwnPassword", db="shop")])
    shop.command("createUser", "reader", pwd="reader-pw", roles=["read"])
    shop.command("createUser", "keeper", pwd="keeper-pw", roles=["selfService"])
    reader = secured.client("reader", "reader-pw", "shop")
    keeper = secured.client("keeper", "keeper-pw", "shop")

    refused(lambda: reader.shop.command("updateUser", "reader", pwd="new-reader-pw"))
    refused(lambda: keeper.shop.command("updateUser", "reader", pwd="new-reader-pw"))
    keeper.shop.command("updateUser", "keeper", pwd="new-keeper-pw")

    renewed = secured.client("keeper", "new-keeper-pw", "shop")
    assert renewed.shop.command("connectionStatus")["authInfo"]["authenticatedUsers"] == [
        {"user": "keeper", "db": "shop"}]
    stale = secured.client("keeper", "keeper-pw", "shop", serverSelectionTimeoutMS=3000)
    with pytest.raises(OperationFailure) as caught:
        stale.shop.command("ping")
    assert caught.value.code == 18


@pytest.mark.parametrize("command, code, message", [
    ({"createUser": ROOT_USER, "pwd": "x", "roles": []}, 51003, 'User "root@admin" already exists'),
    ({"createUser": "nopwd", "roles": []}, 2,
     "Must provide a 'pwd' field for all user documents, except those with '$external' as the "
     "user's source db"),
    ({"createUser": "x", "pwd": "x"}, 40414,
     "BSON field 'createUser.roles' is missing but a required field"),
    ({"createUser": "x", "pwd": "x", "roles": ["noSuchRole"]}, 31,
     "No role named noSuchRole@admin"),
    ({"dropUser": "nobody"}, 11, "User 'nobody@admin' not found"),
    ({"createRole": "read", "roles": [], "privileges": []}, 2,
     "Cannot create roles with the same name as a built-in role"),
    ({"createRole": "bad", "roles": [], "privileges": [
        privilege("", "find", "fly")]},
     2, "Unrecognized action privilege strings: fly"),
    ({"dropRole": "read"}, 2, "read@admin is a built-in role and cannot be modified"),
    ({"updateRole": "nobody", "roles": []}, 31, "No role named nobody@admin"),
])
def test_user_and_role_commands_refuse_as_mongodb_does(secured, command, code, message):
    with pytest.raises(OperationFailure) as caught:
        secured.root.admin.command(command)
    assert (caught.value.code, (caught.value.details or {}).get("errmsg")) == (code, message)


def test_a_role_cannot_inherit_itself_or_reach_outside_its_database(secured):
    app = secured.root.app
    app.command("createRole", "loopA", roles=[], privileges=[])
    app.command("createRole", "loopB", roles=["loopA"], privileges=[])
    with pytest.raises(OperationFailure) as cycle:
        app.command("updateRole", "loopA", roles=["loopB"])
    assert (cycle.value.code, (cycle.value.details or {}).get("errmsg")) == (
        49, "Granting roles to loopA@app would introduce a cycle in the role graph")
    with pytest.raises(OperationFailure) as outside:
        app.command("createRole", "wide", roles=[], privileges=[
            {"resource": {"cluster": True}, "actions": ["serverStatus"]}])
    assert outside.value.code == 49
    assert "cannot be granted privileges that target other" in str(outside.value)


# ------------------------------------------------------------------------ a whole migration

CONTRACTED = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="users", contract_schema="users.contract.json")
    def add_role(doc, ctx):
        if doc.get("role") is None:
            return {"role": "user"}
''')


def _migration_as(secured: Secured, tmp_path: Path, roles: list[Any]) -> tuple[Settings, str]:
    """A database with 30 users to migrate, and settings that connect as a user of that database
    holding ``roles`` (a name: the role on that database) and nothing else."""
    db = f"mig{uuid.uuid4().hex[:8]}"
    secured.root[db].users.insert_many([{"_id": i, "name": f"user {i}"} for i in range(30)])
    secured.root[db].command("createUser", "migrator", pwd="migrator-pw", roles=roles)
    (tmp_path / "transforms").mkdir()
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "users.contract.json").write_text(json.dumps(
        {"bsonType": "object", "required": ["role"], "properties": {"role": {"enum": ["user"]}}}))
    (tmp_path / "transforms" / "users.py").write_text(CONTRACTED)
    settings = Settings(mongodb_uri=secured.uri("migrator", "migrator-pw", db, db),
                        kafka_bootstrap_servers=KAFKA, transforms=tmp_path / "transforms",
                        topic_prefix=f"t-{db}", group_prefix=f"g-{db}", partitions=2)
    return settings, db


CLUSTER_MONITOR = role("clusterMonitor", "admin")  # replSetGetStatus, for --max-replication-lag


def test_a_whole_migration_runs_for_a_user_with_readwrite_and_dbadmin_on_its_database(secured,
                                                                                     tmp_path):
    settings, db = _migration_as(secured, tmp_path, ["readWrite", "dbAdmin", CLUSTER_MONITOR])
    try:
        ran = run_cli("run", "add_role", "--cutover", "--timeout", "120s",
                      "--max-replication-lag", "5s", settings=settings)
    finally:
        settings.close()

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "add_role: cut over." in ran.stdout
    migrated = secured.root[db]
    assert migrated.users.count_documents({"role": "user"}) == 30
    assert state_of(migrated, "add_role")["phase"] == Phase.CUT_OVER


def test_cutover_is_refused_with_unauthorized_for_a_user_without_the_collmod_action(secured,
                                                                                    tmp_path):
    settings, db = _migration_as(secured, tmp_path, ["readWrite", CLUSTER_MONITOR])
    try:  # preflight would refuse the run at its start (tests/operations/test_preflight_role.py)
        ran = run_cli("run", "add_role", "--cutover", "--timeout", "120s",
                      "--max-replication-lag", "5s", "--skip-check", "privileges",
                      settings=settings)
    finally:
        settings.close()

    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "drained; lag 0" in ran.stdout  # everything up to cutover ran on readWrite alone
    assert ("the server refused the contract schema users.contract.json as a validator (collMod "
            f'13: not authorized on {db} to execute command {{ collMod: "users"') in ran.stdout
    migrated = secured.root[db]
    assert migrated.users.count_documents({"role": "user"}) == 30
    assert state_of(migrated, "add_role")["phase"] != Phase.CUT_OVER


def test_a_missing_privilege_is_reported_as_such_and_not_as_a_failed_authentication(secured,
                                                                                   tmp_path):
    # Regression: the tool reported any 13 Unauthorized as "MongoDB authentication failed",
    # sending a user whose login worked to check the password instead of the user's roles.
    settings, db = _migration_as(secured, tmp_path, [])
    secured.root[db].command("grantRolesToUser", "migrator", roles=[role("read", "elsewhere")])
    try:
        ran = run_cli("apply", "add_role", settings=settings)
    finally:
        settings.close()

    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "authentication failed" not in ran.stderr
    assert f"MongoDB refused the command: not authorized on {db} to execute command" in ran.stderr
    assert "the MongoDB user lacks a privilege this command needs" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_wrong_password_is_still_reported_as_a_failed_authentication(secured, tmp_path):
    settings, db = _migration_as(secured, tmp_path, ["readWrite"])
    settings.mongodb_uri = secured.uri("migrator", "not-the-password", db, db)
    try:
        ran = run_cli("apply", "add_role", settings=settings)
    finally:
        settings.close()

    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "MongoDB authentication failed: Authentication failed." in ran.stderr


def test_a_lag_bound_without_the_replsetgetstatus_privilege_is_refused_at_start_naming_it(
        secured, tmp_path):
    # Regression (issue 25): the run started, and stopped at the backfill's first measure with
    # the refusal alone, nothing said what to grant or how to run without the bound.
    settings, db = _migration_as(secured, tmp_path, ["readWrite", "dbAdmin"])
    try:
        ran = run_cli("run", "add_role", "--timeout", "120s", "--max-replication-lag", "5s",
                      settings=settings)
    finally:
        settings.close()

    assert ran.returncode == 1, ran.stdout + ran.stderr
    error = ran.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "cdc-migrator: --max-replication-lag: the replication lag cannot be read: "
        "replSetGetStatus refused (13 Unauthorized: not authorized on admin to execute command "
        '{ replSetGetStatus: 1, $db: "admin" }); grant the user the clusterMonitor role '
        "(on admin), or run with --on-lag-unknown run"), error
    assert "Traceback" not in ran.stderr
    assert state_of(secured.root[db], "add_role") == {}  # refused before anything was armed


def test_a_lag_bound_the_operator_lets_run_unknown_runs_and_status_says_why(secured, tmp_path):
    settings, db = _migration_as(secured, tmp_path, ["readWrite", "dbAdmin"])
    settings.on_lag_unknown = "run"
    try:
        ran = run_cli("run", "add_role", "--timeout", "120s", "--max-replication-lag", "5s",
                      settings=settings)
        shown = run_cli("status", "add_role", settings=settings)
    finally:
        settings.close()

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "--max-replication-lag is not enforced: the replication lag cannot be read: " \
           "replSetGetStatus refused (13 Unauthorized" in ran.stderr
    assert secured.root[db].users.count_documents({"role": "user"}) == 30
    assert "replication lag: unknown, --max-replication-lag not enforced (replSetGetStatus " \
           "refused (13 Unauthorized" in shown.stdout, shown.stdout
    assert "grant the user the clusterMonitor role (on admin))" in shown.stdout
