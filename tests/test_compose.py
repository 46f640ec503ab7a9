"""Specification of docker-compose.yml, Dockerfile and .dockerignore.

Pure file checks: no Docker engine is needed (or used). They pin down what the
compose stack must provide so that `docker compose up` works for users who do
have Docker.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("tail", "consume")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {key: value for key, value in pairs}
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _argv(value) -> list[str]:
    """A command/entrypoint in either string or list form, as argv."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(part) for part in value]


def _healthcheck_script(service: dict) -> str:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(str(part) for part in test[1:])


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


def _dockerfile(keyword: str) -> list[str]:
    return [args for kw, args in _dockerfile_instructions() if kw == keyword]


def _exec_form(args: str) -> list[str]:
    try:
        parsed = json.loads(args)
    except json.JSONDecodeError:
        return shlex.split(args)
    assert isinstance(parsed, list)
    return parsed


def _image_entrypoint() -> list[str]:
    entrypoints = _dockerfile("ENTRYPOINT")
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    return _exec_form(entrypoints[-1])


def _header_comment() -> list[str]:
    lines = []
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


# --------------------------------------------------------------------------- services


def test_compose_defines_mongo_kafka_tail_and_consume_services(services):
    assert {"mongo", "kafka", "tail", "consume"} <= set(services)


def test_mongo_uses_official_mongo_image(services):
    assert services["mongo"]["image"].startswith("mongo:")
    assert services["mongo"]["image"] == "mongo:7.0"


def test_mongo_runs_as_replica_set_listening_on_all_interfaces(services):
    argv = _argv(services["mongo"]["command"])
    assert "--replSet" in argv
    assert argv[argv.index("--replSet") + 1] == "rs0"
    assert "--bind_ip_all" in argv


def test_mongo_healthcheck_initiates_the_replica_set_with_its_service_address(services):
    script = _healthcheck_script(services["mongo"])
    assert "mongosh" in script
    assert "rs.initiate" in script
    assert re.search(r"_id\s*:\s*['\"]rs0['\"]", script), "rs.initiate must name replica set rs0"
    assert "mongo:27017" in script, "the member must be reachable by the other containers"


def test_mongo_healthcheck_is_healthy_only_when_primary(services):
    script = _healthcheck_script(services["mongo"])
    # mongosh exits 0 whatever --eval prints, so "primary" must decide the exit code.
    decides_exit = r"(isWritablePrimary|myState)[^;{}]*\)\s*(quit\(\s*[1-9]|throw\b)"
    assert re.search(decides_exit, script), script


def test_mongo_data_lives_in_a_named_volume(compose, services):
    mounts = services["mongo"]["volumes"]
    named = [m.split(":", 1)[0] for m in mounts if m.endswith(":/data/db")]
    assert named and named[0] in compose["volumes"]


def test_mongo_is_published_on_host_port_27017(services):
    assert "27017:27017" in [str(p) for p in services["mongo"]["ports"]]


def test_app_services_mongodb_uri_names_the_replica_set(services):
    replset = _argv(services["mongo"]["command"])
    replset = replset[replset.index("--replSet") + 1]
    for name in APP_SERVICES:
        uri = _env(services[name])["MONGODB_URI"]
        assert uri.startswith("mongodb://mongo:27017/app"), uri
        assert f"replicaSet={replset}" in uri, uri


def test_app_services_bootstrap_from_kafka_in_network_listener(services):
    for name in APP_SERVICES:
        assert _env(services[name])["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_kafka_uses_apache_kafka_4_image(services):
    image = services["kafka"]["image"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", image), image


def test_kafka_runs_kraft_single_node_as_broker_and_controller(services):
    env = _env(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    listeners = env["KAFKA_LISTENERS"].split(",")
    assert "PLAINTEXT://:9092" in listeners
    assert "CONTROLLER://:9093" in listeners
    protocol_map = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert {"CONTROLLER", "PLAINTEXT", "EXTERNAL"} <= set(protocol_map)


def test_kafka_cluster_id_is_a_base64_uuid(services):
    # kafka-storage.sh format rejects anything that does not decode to 16 bytes.
    import base64

    cluster_id = _env(services["kafka"])["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_no_zookeeper_anywhere():
    assert "zookeeper" not in COMPOSE_FILE.read_text().lower()


def test_kafka_single_node_settings(services):
    env = _env(services["kafka"])
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_advertises_in_network_and_host_listeners(services):
    env = _env(services["kafka"])
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT://kafka:9092" in advertised
    assert "EXTERNAL://localhost:29092" in advertised
    assert "EXTERNAL://:29092" in env["KAFKA_LISTENERS"].split(",")
    ports = [str(p) for p in services["kafka"]["ports"]]
    assert "29092:29092" in ports
    # The in-network listener advertises kafka:9092, useless from the host.
    assert not any(p.split(":")[-1] == "9092" for p in ports)


def test_kafka_healthcheck_queries_the_broker(services):
    script = _healthcheck_script(services["kafka"])
    assert re.search(r"/opt/kafka/bin/kafka-(broker-api-versions|topics)\.sh", script), script
    assert "--bootstrap-server localhost:9092" in script


def test_kafka_data_lives_in_a_named_volume_at_its_log_dir(compose, services):
    log_dir = _env(services["kafka"])["KAFKA_LOG_DIRS"]
    mounts = dict(reversed(m.split(":", 1)) for m in services["kafka"]["volumes"])
    assert log_dir in mounts
    assert mounts[log_dir] in compose["volumes"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_its_subcommand_of_the_cdc_migrator_entrypoint(services, name):
    assert _image_entrypoint() == ["cdc-migrator"]
    assert "entrypoint" not in services[name]
    # The entrypoint already is cdc-migrator: the command is only the subcommand.
    assert _argv(services[name]["command"]) == [name]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_is_built_from_the_repository_dockerfile(services, name):
    build = services[name]["build"]
    if isinstance(build, dict):
        assert build.get("context", ".") in (".", "./")
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    else:
        assert build in (".", "./")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_waits_for_healthy_mongo_and_kafka(services, name):
    depends_on = services[name]["depends_on"]
    assert isinstance(depends_on, dict), "the short form cannot wait for health"
    for dependency in ("mongo", "kafka"):
        assert depends_on[dependency]["condition"] == "service_healthy"
        assert "healthcheck" in services[dependency]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_restarts_unless_stopped(services, name):
    assert services[name]["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_mounts_transforms_read_only_where_it_looks_for_them(services, name):
    target = _env(services[name]).get("CDC_MIGRATOR_TRANSFORMS", "/app/transforms")
    assert f"./transforms:{target}:ro" in services[name]["volumes"]


def test_consume_can_be_scaled(services):
    consume = services["consume"]
    assert "container_name" not in consume
    assert not consume.get("ports")


def test_header_comment_explains_host_access():
    header = "\n".join(_header_comment())
    assert "KAFKA_BOOTSTRAP_SERVERS=localhost:29092" in header
    assert "directConnection=true" in header


def test_header_comment_shows_one_off_commands_without_repeating_the_entrypoint():
    commands = [line for line in _header_comment() if line.startswith("docker compose run")]
    assert "docker compose run --rm tail backfill NAME" in commands
    for command in commands:
        argv = shlex.split(command)
        service_at = argv.index("tail")
        assert argv[service_at + 1] != "cdc-migrator", command


# --------------------------------------------------------------------------- image


def test_dockerfile_builds_on_python_311_slim():
    assert _dockerfile("FROM")[0].split()[0] == "python:3.11-slim"


def test_dockerfile_installs_the_package_with_pip():
    copies = " ".join(_dockerfile("COPY"))
    assert "pyproject.toml" in copies
    assert "cdc_migrator" in copies
    runs = _dockerfile("RUN")
    assert any(re.search(r"\bpip install\b[^&]*\s/src\b", run) for run in runs), runs


def test_dockerfile_copies_transforms_and_schemas_into_the_working_directory():
    workdir = _dockerfile("WORKDIR")[-1]
    destinations = {_exec_form(args)[-1].rstrip("/") for args in _dockerfile("COPY")}
    assert f"{workdir}/transforms" in destinations
    assert f"{workdir}/schemas" in destinations


def test_dockerfile_points_transforms_env_at_the_mounted_directory(services):
    env = " ".join(_dockerfile("ENV"))
    assert "CDC_MIGRATOR_TRANSFORMS=/app/transforms" in env
    for name in APP_SERVICES:
        assert _env(services[name])["CDC_MIGRATOR_TRANSFORMS"] == "/app/transforms"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".services"} <= ignored
    for needed in ("pyproject.toml", "cdc_migrator", "transforms", "schemas"):
        assert needed not in ignored
