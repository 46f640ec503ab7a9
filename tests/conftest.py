"""Fixtures for tests against the real local services (`make services-up`); what the tests
share besides fixtures is in harness.py.

Every test gets its own database (and its own topics, through a per-test topic prefix), so
tests never see each other's data.

A test that talks to Kafka or MongoDB is marked ``services``: by the fixtures it uses
(``SERVICE_FIXTURES``), or by hand where it reaches a service without them. ``make unit``
(``pytest -m "not services"``) runs the others, with no service up. When the services are
down, each service test errors with one line naming them and `make services-up`.

A test that only the local servers can run is marked ``local_server`` (with the reason): by the
fixtures it uses (``LOCAL_SERVER_FIXTURES``: a server or broker of its own, the local broker's
TLS listeners, and ``local_servers``, which a module's fixture requests to say the same of
itself), or by hand where it uses a test-only command of the local server, its own figures or a
reply only it gives. ``make test-real`` (``CDC_TEST_REAL_SERVERS=1``) runs the others against
the servers MONGODB_URI and KAFKA_BOOTSTRAP_SERVERS name, and skips a ``local_server`` test
even where ``-m`` selects it. tests/project/test_real_servers.py fails on an unmarked
user of such a device.

A test that runs one of the Go tools (prometheus, promtool, helm, actionlint) takes it from the
``go_tool`` fixture: skipped when `make tools` has not built it, failed instead when
CDC_MIGRATOR_REQUIRE_TOOLS=1 (CI sets it; `make test` builds the tools first).
"""

from __future__ import annotations

import functools
import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import pymongo
import pytest

from cdc_migrator.base.settings import Settings, mask_uri

from .harness import (
    CURSOR_TIMEOUT_MS,
    KAFKA,
    KAFKA_CA,
    LIMITS_MIGRATIONS,
    MONGO_BASE,
    ROOT,
    kill_children,
    local_mongo,
    remove_kafka_leftovers,
    services_unreachable,
    stop_local_mongo,
    tool,
    tool_missing,
    uri_for,
    write_transforms,
)

# A test using one of these talks to a service (the shared ones, or a server of its own).
SERVICE_FIXTURES = frozenset({"mongo_client", "db", "settings", "private_kafka",
                              "private_mongo", "short_cursors", "tls_listeners",
                              "mongos_mongo"})
# A test using one of these needs the local servers themselves: a server or broker of its
# own, or the local broker's TLS and SASL listeners, which a user's broker does not have.
LOCAL_SERVER_FIXTURES = frozenset({"local_servers", "private_kafka", "private_mongo",
                                   "short_cursors", "tls_listeners", "mongos_mongo"})
REAL_SERVERS = os.environ.get("CDC_TEST_REAL_SERVERS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SERVICE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.services)
        for mark in item.iter_markers("local_server"):
            if not (mark.args or mark.kwargs.get("reason")):
                raise pytest.UsageError(f"{item.nodeid}: a local_server mark says why: "
                                        '@pytest.mark.local_server("failCommand"), say')
        for name in sorted(LOCAL_SERVER_FIXTURES & fixtures):
            item.add_marker(pytest.mark.local_server(f"fixture {name}"))


def pytest_report_header(config: pytest.Config) -> str | None:
    if not REAL_SERVERS:
        return None
    return (f"servers brought by the user (make test-real): MongoDB {mask_uri(MONGO_BASE)}, "
            f"Kafka {KAFKA}; tests marked local_server are left out")


@functools.cache
def _unreachable() -> str | None:
    return services_unreachable(real=REAL_SERVERS)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Kill the test's background commands still running, whichever way it ended, before its
    fixtures' teardown (which drops its database and stops servers of its own)."""
    left = kill_children()
    if left:
        warnings.warn(f"{item.nodeid} left running, killed: {', '.join(left)}", stacklevel=1)


def pytest_runtest_setup(item: pytest.Item) -> None:
    local = item.get_closest_marker("local_server")
    if REAL_SERVERS and local is not None:
        # Never let a device of the local server (a fail point, a changed parameter, ...)
        # reach a user's cluster, whatever -m selected.
        pytest.skip(f"needs the local servers ({local.args[0] if local.args else ''}"
                    f"{local.kwargs.get('reason', '')}): make test-real leaves it out")
    if item.get_closest_marker("services") is not None:
        reason = _unreachable()
        if reason is not None:
            pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="session")
def mongo_client():
    client = pymongo.MongoClient(MONGO_BASE, serverSelectionTimeoutMS=5000, tz_aware=True)
    try:
        client.admin.command("ping")
    except pymongo.errors.PyMongoError as exc:
        client.close()
        pytest.fail(f"MongoDB not reachable at {mask_uri(MONGO_BASE)}: run `make services-up` "
                    f"({exc})", pytrace=False)
    if REAL_SERVERS:
        _require_change_streams(client)
    yield client
    client.close()


def _require_change_streams(client: pymongo.MongoClient) -> None:
    """A user's server must have change streams (a replica set or a sharded cluster; a
    standalone mongod has none), or every test of capture would fail on it, one by one."""
    try:
        client["t_change_streams"].watch().close()
    except pymongo.errors.OperationFailure as exc:
        client.close()
        pytest.fail(f"MongoDB at {mask_uri(MONGO_BASE)} has no change streams ({exc.code}: "
                    f"{exc.details.get('errmsg') if exc.details else exc}): `make test-real` "
                    "needs a replica set, e.g. a single node started with --replSet and "
                    "rs.initiate()", pytrace=False)


@pytest.fixture
def db_name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def db(mongo_client, db_name):
    database = mongo_client[db_name]
    yield database
    mongo_client.drop_database(db_name)


@pytest.fixture
def settings(db, tmp_path) -> Settings:
    s = Settings(
        mongodb_uri=uri_for(db.name),
        kafka_bootstrap_servers=KAFKA,
        transforms=ROOT / "transforms",
        topic_prefix=f"t-{db.name}",
        group_prefix=f"g-{db.name}",
        partitions=3,
    )
    yield s
    if REAL_SERVERS:
        remove_kafka_leftovers(s)
    s.close()


@pytest.fixture
def transforms(request, tmp_path, settings):
    """A transforms directory holding the test module's ``TRANSFORMS`` ({file name: source}),
    made the settings' transforms directory."""
    return write_transforms(tmp_path, settings, request.module.TRANSFORMS)


@pytest.fixture
def items_settings(settings, tmp_path):
    """The settings, with :data:`~tests.harness.LIMITS_MIGRATIONS` as their transforms."""
    (tmp_path / "items.py").write_text(LIMITS_MIGRATIONS)
    settings.transforms = tmp_path
    return settings


@pytest.fixture(scope="module")
def short_cursors(tmp_path_factory):
    """A LocalMongo of the module's own whose idle cursors time out after CURSOR_TIMEOUT_MS."""
    proc, client = local_mongo(tmp_path_factory.mktemp("cursors"),
                               f"-DcursorTimeoutMillis={CURSOR_TIMEOUT_MS}")
    yield client
    stop_local_mongo(proc, client)


@pytest.fixture(scope="module")
def mongos_mongo(tmp_path_factory):
    """A LocalMongo of the module's own answering as a mongos (its ``config`` database holds what
    a test seeds with :func:`~tests.harness.seed_sharded_collection`; nothing is sharded)."""
    proc, client = local_mongo(tmp_path_factory.mktemp("mongos"), heap="512m")
    client.admin.command({"setMongosMode": True})
    yield client
    stop_local_mongo(proc, client)


@pytest.fixture
def private_mongo(tmp_path):
    """A LocalMongo of the test's own (its change history can be truncated)."""
    proc, client = local_mongo(tmp_path, heap="512m")
    yield client
    stop_local_mongo(proc, client)


@pytest.fixture
def tls_listeners():
    """The local broker's TLS listeners (SSL, SASL_SSL), which need the CA services.sh made."""
    if not KAFKA_CA.is_file():
        pytest.skip("no .services/tls/ca.pem: start the services with scripts/services.sh up")


@pytest.fixture(scope="session")
def local_servers() -> None:
    """Nothing but a sign: a fixture that needs the local servers themselves (a test-only
    command, a server of its own) requests it, and every test using that fixture is marked
    ``local_server``."""


@pytest.fixture(scope="session")
def go_tool() -> Callable[[str], Path]:
    """``go_tool(NAME)``: the path of a Go tool built by scripts/tools.sh, current with its pin."""
    def path(name: str) -> Path:
        reason = tool_missing(name)
        if reason is not None:
            if os.environ.get("CDC_MIGRATOR_REQUIRE_TOOLS") == "1":
                pytest.fail(f"{reason}, and CDC_MIGRATOR_REQUIRE_TOOLS=1", pytrace=False)
            pytest.skip(reason)
        return Path(tool(name))
    return path
