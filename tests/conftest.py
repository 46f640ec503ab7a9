"""Fixtures for tests against the real local services (`make services-up`); what the tests
share besides fixtures is in harness.py.

Every test gets its own database (and its own topics, through a per-test topic prefix), so
tests never see each other's data.

A test that talks to Kafka or MongoDB is marked ``services``: by the fixtures it uses
(``SERVICE_FIXTURES``), or by hand where it reaches a service without them. ``make unit``
(``pytest -m "not services"``) runs the others, with no service up. When the services are
down, each service test errors with one line naming them and `make services-up`.

A test that runs one of the Go tools (prometheus, promtool, helm, actionlint) takes it from the
``go_tool`` fixture: skipped when `make tools` has not built it, failed instead when
CDC_MIGRATOR_REQUIRE_TOOLS=1 (CI sets it; `make test` builds the tools first).
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pymongo
import pytest

from cdc_migrator.base.settings import Settings

from .harness import (
    CURSOR_TIMEOUT_MS,
    KAFKA,
    KAFKA_CA,
    LIMITS_MIGRATIONS,
    MONGO_BASE,
    ROOT,
    local_mongo,
    services_unreachable,
    stop_local_mongo,
    tool,
    tool_missing,
    uri_for,
    write_transforms,
)

# A test using one of these talks to a service (the shared ones, or a server of its own).
SERVICE_FIXTURES = frozenset({"mongo_client", "db", "settings", "private_kafka",
                              "private_mongo", "short_cursors", "tls_listeners"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@functools.cache
def _unreachable() -> str | None:
    return services_unreachable()


def pytest_runtest_setup(item: pytest.Item) -> None:
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
        pytest.fail(f"MongoDB not reachable at {MONGO_BASE}: run `make services-up` ({exc})",
                    pytrace=False)
    yield client
    client.close()


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
