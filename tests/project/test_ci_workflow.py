"""The CI workflow for a CI that has Docker (.github/workflows/real-servers.yml): `make test-real`
against MongoDB 6.0, 7.0 and 8.0 replica sets and a Kafka broker, started from
docker-compose.yml. No Docker engine runs here: actionlint checks the workflow, and the tests
below that it agrees with the compose file and with `make test-real`.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from ..harness import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "real-servers.yml"


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    (only,) = yaml.safe_load(WORKFLOW.read_text())["jobs"].values()
    return only


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_actionlint_passes_the_workflow(go_tool):
    # No shellcheck or pyflakes: the findings must not depend on what else is installed.
    done = subprocess.run([str(go_tool("actionlint")), "-shellcheck=", "-pyflakes=", "-no-color",
                           str(WORKFLOW)], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr


def test_each_mongodb_release_of_the_matrix_gets_make_test_real(job):
    assert job["strategy"]["matrix"]["mongodb"] == ["6.0", "7.0", "8.0"]
    assert job["strategy"]["fail-fast"] is False  # one release failing hides no other
    assert job["env"]["MONGO_VERSION"] == "${{ matrix.mongodb }}"
    assert "make test-real" in runs(job)
    assert {"MONGODB_URI", "KAFKA_BOOTSTRAP_SERVERS"} <= set(job["env"])


def test_the_mongo_service_runs_the_release_the_matrix_names(job, compose):
    # The compose file takes the release from MONGO_VERSION (7.0 by default).
    assert compose["mongo"]["image"] == "mongo:${MONGO_VERSION:-7.0}"
    (up,) = [run for run in runs(job) if run.startswith("docker compose up")]
    assert up.split()[-2:] == ["mongo", "kafka"] and "--wait" in up.split()
    assert set(up.split()[-2:]) <= set(compose)


def test_the_uri_names_the_replica_set_the_mongo_service_initiates(job, compose):
    uri = urlsplit(job["env"]["MONGODB_URI"])
    check = " ".join(compose["mongo"]["healthcheck"]["test"])
    initiated = re.search(r"rs\.initiate\(\{_id: '([^']+)', members: \[\{_id: 0, host: "
                          r"'([^']+)'\}\]\}\)", check)

    assert initiated is not None
    assert parse_qs(uri.query) == {"replicaSet": [initiated.group(1)]}  # no directConnection
    assert uri.netloc == initiated.group(2)
    # The member's name resolves on the runner to the port the service publishes.
    host, port = uri.netloc.split(":")
    assert f'echo "127.0.0.1 {host}" | sudo tee -a /etc/hosts' in runs(job)
    assert f"{port}:27017" in compose["mongo"]["ports"]


def test_the_broker_address_is_the_listener_kafka_advertises_to_the_host(job, compose):
    kafka = compose["kafka"]["environment"]
    advertised = dict(reversed(listener.split("://", 1))
                      for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    address = job["env"]["KAFKA_BOOTSTRAP_SERVERS"]

    assert advertised.get(address) == "EXTERNAL"
    port = address.rsplit(":", 1)[1]
    assert f"{port}:{port}" in compose["kafka"]["ports"]
