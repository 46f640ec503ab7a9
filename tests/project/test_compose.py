"""docker-compose.yml and the Dockerfile, read by real parsers; no Docker engine is used.

docker-compose (Debian's package) validates the compose file against the Compose schema and
resolves it (anchors, defaults) without a daemon; BuildKit's parser (the ``dockerfile`` package)
reads the Dockerfile. What a parser cannot know is checked here: that the parts of the stack
agree with each other and with the tool. That the image's Python steps build, install and run
is tests/project/test_install.py.

Where docker-compose is not installed these tests are skipped, unless
CDC_MIGRATOR_REQUIRE_COMPOSE=1 (CI sets it) turns that into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import dockerfile
import pytest
import yaml

from cdc_migrator.cli import cli

from ..harness import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_SERVICES = ("tail", "consume")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    """The compose file as docker-compose resolves it."""
    command = shutil.which("docker-compose")
    if command is None:
        if os.environ.get("CDC_MIGRATOR_REQUIRE_COMPOSE") == "1":
            pytest.fail("docker-compose is not installed, and CDC_MIGRATOR_REQUIRE_COMPOSE=1")
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    done = subprocess.run([command, "-f", str(COMPOSE_FILE), "config"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"docker-compose rejects {COMPOSE_FILE.name}: {done.stderr}"
    return yaml.safe_load(done.stdout)["services"]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd.upper() == "FROM":
            env = {}
        elif command.cmd.upper() == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


def _envvars_the_tool_reads() -> set[str]:
    names: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(cli)
    return names


def test_the_stack_is_mongo_kafka_and_the_always_on_tail_and_consume(services: dict) -> None:
    assert set(services) == {"mongo", "kafka", *APP_SERVICES}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_a_real_subcommand_with_settings_the_tool_reads(
        services: dict, name: str) -> None:
    service = services[name]
    help_run = subprocess.run([sys.executable, "-m", "cdc_migrator", *service["command"],
                               "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0, help_run.stderr
    unknown = set(service["environment"]) - _envvars_the_tool_reads()
    assert not unknown, f"{name} sets variables cdc-migrator never reads: {sorted(unknown)}"


def test_the_image_runs_the_command_the_package_installs() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = [c for c in dockerfile.parse_file(str(ROOT / "Dockerfile"))
                     if c.cmd.upper() == "ENTRYPOINT"]
    assert entrypoint.json and list(entrypoint.value) == ["cdc-migrator"]
    assert "cdc-migrator" in scripts


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_mount_transforms_where_the_image_looks(services: dict, name: str) -> None:
    looks = services[name]["environment"].get("CDC_MIGRATOR_TRANSFORMS") \
        or _image_env()["CDC_MIGRATOR_TRANSFORMS"]
    mounts = {target: mode for _, target, mode in
              (f"{volume}:rw".split(":")[:3] for volume in services[name]["volumes"])}
    assert mounts.get(looks) == "ro", f"{looks} is not mounted read-only: {mounts}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_connect_to_the_replica_set_the_mongo_service_initiates(
        services: dict, name: str) -> None:
    uri = urlsplit(services[name]["environment"]["CDC_MIGRATOR_MONGODB_URI"])
    replica_set = parse_qs(uri.query)["replicaSet"][0]
    mongo = services["mongo"]
    command = mongo["command"]
    assert command[command.index("--replSet") + 1] == replica_set
    check = " ".join(mongo["healthcheck"]["test"])
    initiated = re.search(r"rs\.initiate\(\{_id: '([^']+)', members: \[\{_id: 0, host: "
                          r"'([^']+)'\}\]\}\)", check)
    assert initiated, "the mongo healthcheck must initiate the replica set"
    assert initiated.groups() == (replica_set, uri.netloc)
    assert services[name]["depends_on"]["mongo"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_bootstrap_from_a_listener_kafka_advertises(services: dict,
                                                                 name: str) -> None:
    kafka = services["kafka"]["environment"]
    advertised = dict(reversed(listener.split("://", 1))
                      for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = {listener.split("://", 1)[0] for listener in kafka["KAFKA_LISTENERS"].split(",")}
    protocols = dict(pair.split(":") for pair in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                     .split(","))
    for server in services[name]["environment"]["CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS"].split(","):
        assert server in advertised, f"{server} is not an advertised listener"
        listener = advertised[server]
        assert listener in listeners and protocols[listener] == "PLAINTEXT"
    assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_healthcheck_probes_where_the_tool_serves_health(services: dict, name: str) -> None:
    service = services[name]
    port = service["environment"]["CDC_MIGRATOR_METRICS_PORT"]
    probe = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in probe
    assert port in [str(p) for p in service.get("expose", [])]
