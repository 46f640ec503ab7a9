"""Fixtures for tests against the real local services (`make services-up`).

Every test gets its own database (and its own topics, through a per-test topic prefix), so
tests never see each other's data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo
import pytest

from cdc_migrator.base.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MONGO_BASE = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/app?directConnection=true")
KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
# The local broker's TLS listeners (scripts/services.sh): SSL, and SASL/SCRAM over TLS.
KAFKA_SSL = f"127.0.0.1:{os.environ.get('KAFKA_SSL_PORT', '9094')}"
KAFKA_SASL_SSL = f"127.0.0.1:{os.environ.get('KAFKA_SASL_SSL_PORT', '9095')}"
KAFKA_CA = ROOT / ".services" / "tls" / "ca.pem"
KAFKA_TLS_PASSWORD = "cdc-migrator-local"  # of the broker's keystore
SCRAM_USER, SCRAM_PASSWORD = "cdc-migrator", "cdc-migrator-local-secret"


def uri_for(database: str) -> str:
    """MONGO_BASE with its path replaced by ``database``."""
    head, _, tail = MONGO_BASE.partition("://")
    hostpart, _, rest = tail.partition("/")
    query = rest.partition("?")[2]
    return f"{head}://{hostpart}/{database}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def mongo_client():
    client = pymongo.MongoClient(MONGO_BASE, serverSelectionTimeoutMS=5000, tz_aware=True)
    try:
        client.admin.command("ping")
    except pymongo.errors.PyMongoError as exc:
        pytest.exit(f"MongoDB not reachable at {MONGO_BASE}: run `make services-up` ({exc})", 3)
    yield client
    client.close()


@pytest.fixture
def db_name(request) -> str:
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


def cli_env(settings: Settings | None = None, env: dict | None = None) -> dict[str, str]:
    """The environment of a ``cdc-migrator`` subprocess: ours, ``settings``, then ``env``."""
    full_env = dict(os.environ)
    if settings is not None:
        full_env.update(settings.environment())
    full_env.update(env or {})
    return full_env


def run_cli(*args: str, settings: Settings | None = None, env: dict | None = None,
            timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cdc-migrator ARGS`` as a user would, in a subprocess."""
    full_env = cli_env(settings, env)
    return subprocess.run(
        [sys.executable, "-m", "cdc_migrator", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, cwd=cwd or ROOT,
    )


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "condition",
             interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something true (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s")
