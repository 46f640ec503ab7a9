"""`make test-real`: the suite against servers a user brings, and the marking it relies on: no
test it runs against a user's servers uses a device only the local servers have.

The devices: the local MongoDB server's test-only commands (every command its launcher answers,
services/mongo/*.java, that MongoDB has not got, or that a user's cluster must not get), its
own figures and replies, and the harness's servers and brokers of a test's own and the local
broker's TLS listeners. A test uses a device when its source names one, or the source of what
it calls or requests: the fixtures it takes, the functions and constants of its module and of
tests/harness.py, followed as far as they go. Every test that `make test-real` collects must
use none; mark the others ``local_server`` (docs/testing.md, "Against servers you bring").
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

from cdc_migrator.base import topics

from ..harness import ROOT, remove_kafka_leftovers, wait_for

JAVA = ROOT / "services" / "mongo"
# The commands the launcher answers itself that MongoDB has too: a test may send them to a
# user's server. Every other command it answers is the local server's own (setSecondaryLag,
# truncateChangeHistory, ...): a new one is a device from the moment it exists.
MONGODB_COMMANDS = frozenset({
    "aggregate", "collMod", "create", "delete", "dropDatabase", "find", "findAndModify",
    "getMore", "getParameter", "hello", "insert", "isMaster", "killCursors", "listCollections",
    "renameCollection", "replSetGetConfig", "replSetGetStatus", "update",
})
# MongoDB's commands a test must not send to a user's cluster: fail points exist only where
# mongod runs with enableTestCommands, and a parameter changes the server for every client.
SERVER_WIDE_COMMANDS = {"configureFailPoint": "a fail point (failCommand)",
                        "setParameter": "a server parameter changed for every client"}
# What the local servers alone give or say.
LOCAL_STRINGS = {
    "localMongo": "the local server's own figures (serverStatus.localMongo)",
    "no validators (59": "the local server's missing validators (collMod 59)",
    "this test server has no collations": "the local server's refusal of collations",
}
# The harness's servers and brokers of a test's own, and the local broker's own listeners,
# certificate and credentials.
LOCAL_NAMES = {
    "start_local_mongo": "a LocalMongo of its own", "local_mongo": "a LocalMongo of its own",
    "private_settings": "a LocalMongo of its own", "PrivateKafka": "a Kafka broker of its own",
    "seed_sharded_collection": "the local server's mongos mode",
    "KAFKA_SSL": "the local broker's TLS listener",
    "KAFKA_SASL_SSL": "the local broker's SASL_SSL listener",
    "KAFKA_CA": "the local broker's certificate",
    "SCRAM_USER": "the local broker's SCRAM user",
    "SCRAM_PASSWORD": "the local broker's SCRAM user",
}


@functools.cache
def launcher_only_commands() -> dict[str, str]:
    """Each command the launcher answers that only the local server has, with its class."""
    found: dict[str, str] = {}
    for source in sorted(JAVA.glob("*.java")):
        # A command compared by name, or the command of a test-only mode (ModeSwitch.java).
        for command in re.findall(r'(?:equalsIgnoreCase|new ModeSwitch)\("([a-z][A-Za-z]+)"\)',
                                  source.read_text()):
            if command not in MONGODB_COMMANDS:
                found.setdefault(command, f"the local server's test-only {command} "
                                          f"({source.name})")
    return found


def devices() -> dict[str, str]:
    """Every string a test may not use unmarked, with what it is."""
    return {**launcher_only_commands(), **SERVER_WIDE_COMMANDS, **LOCAL_STRINGS}


# --------------------------------------------------------------------------- the sources


@dataclass
class Module:
    """A test module's (or the harness's, conftest's) top-level definitions and fixtures."""

    path: Path
    definitions: dict[str, ast.AST] = field(default_factory=dict)
    fixtures: dict[str, ast.FunctionDef] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Module:
        module = cls(path)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                module.definitions[node.name] = node
                if isinstance(node, ast.FunctionDef) and any(
                        "fixture" in ast.unparse(d) for d in node.decorator_list):
                    module.fixtures[node.name] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            module.definitions[name.id] = node
        return module


@functools.cache
def module(path: Path) -> Module:
    return Module.read(path)


def uses(test: ast.AST, home: Module) -> dict[str, str]:
    """The devices ``test`` uses, through what it calls and requests, each with the name of
    the definition that holds it."""
    harness = module(ROOT / "tests" / "harness.py")
    conftest = module(ROOT / "tests" / "conftest.py")
    queue: list[tuple[ast.AST, Module, str]] = [(test, home, getattr(test, "name", "?"))]
    seen: set[int] = set()
    found: dict[str, str] = {}
    while queue:
        node, where, holder = queue.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                for device in _devices_in(sub.value):
                    found.setdefault(device, holder)
            # A name it reads or calls, or a parameter: the fixture of that name.
            ref = sub.id if isinstance(sub, ast.Name) else sub.arg if isinstance(
                sub, ast.arg) else None
            if ref is None:
                continue
            if ref in LOCAL_NAMES:
                found.setdefault(ref, holder)
                continue  # a device as a whole: what it holds says nothing more
            for scope in (where, harness, conftest):
                target = scope.definitions.get(ref)
                if target is not None:
                    queue.append((target, scope, ref))
                    break
    return found


def _devices_in(text: str) -> list[str]:
    """The commands ``text`` is, and the local phrases it holds."""
    return [device for device in devices()
            if device == text or (device in LOCAL_STRINGS and device in text)]


def definition_of(nodeid: str) -> tuple[ast.AST, Module]:
    """The function (or method) a collected test id names, and its module."""
    path, *names = nodeid.split("::")
    home = module(ROOT / path)
    node: ast.AST = home.definitions[names[0]]
    for name in names[1:]:
        name = name.split("[", 1)[0]
        node = next(n for n in ast.walk(node)
                    if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == name)
    return node, home


def make_test_real(*variables: str, env: dict[str, str] | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`make test-real VARIABLE=VALUE...`, with no variable of an outer make: a `make
    test-real PYTEST_ARGS=...` running this test must not hand its arguments down (they would
    run the whole suite again, inside itself)."""
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    clean = {k: v for k, v in (os.environ if env is None else env).items() if k not in outer}
    return subprocess.run(["make", "-s", "--no-print-directory", "test-real", *variables],
                          cwd=ROOT, env=clean, capture_output=True, text=True, timeout=timeout)


def collected_by_make_test_real() -> list[str]:
    """The ids of the tests `make test-real` runs: its own selection, collected only."""
    done = make_test_real("MONGODB_URI=mongodb://127.0.0.1:1/app?replicaSet=rs0",
                          "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1",
                          "PYTEST_ARGS=--collect-only -p no:cacheprovider")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


# --------------------------------------------------------------------------- the checks


def test_no_test_that_make_test_real_runs_uses_a_device_of_the_local_servers():
    collected = collected_by_make_test_real()
    unmarked = []
    for nodeid in sorted({n.split("[", 1)[0] for n in collected}):
        if nodeid.startswith(f"{Path(__file__).relative_to(ROOT)}::"):
            continue  # this check names every device itself
        node, home = definition_of(nodeid)
        for device, holder in uses(node, home).items():
            what = (devices() | LOCAL_NAMES)[device]
            unmarked.append(f"{nodeid}: {device!r} in {holder} ({what})")

    assert collected, "make test-real collected nothing"
    assert not unmarked, ("tests make test-real would run against a user's servers use devices "
                          "only the local servers have; mark each @pytest.mark.local_server"
                          "(\"why\") (docs/testing.md):\n  " + "\n  ".join(unmarked))


def test_the_check_finds_a_device_used_directly_through_a_helper_or_a_fixture(tmp_path):
    source = tmp_path / "test_example.py"
    source.write_text('''
from ..harness import KAFKA_SSL, seed_items

LAG = {"setSecondaryLag": [30]}

def _lag(client):
    client.admin.command(LAG)

@pytest.fixture
def denied(mongo_client):
    mongo_client.admin.command({"setReplicaSetMembers": []})

def test_direct(db):
    db.client.admin.command({"truncateChangeHistory": 1})

def test_helper(db):
    _lag(db.client)

def test_fixture(denied):
    pass

def test_listener(settings):
    settings.kafka_bootstrap_servers = KAFKA_SSL

def test_counters(db):
    return db.command("serverStatus")["localMongo"]

def test_real(db):
    seed_items(db.items, None, 3)
    db.command("collMod", "items", changeStreamPreAndPostImages={"enabled": True})
''')
    home = Module.read(source)
    found = {name: set(uses(home.definitions[name], home))
             for name in home.definitions if name.startswith("test_")}

    assert found == {"test_direct": {"truncateChangeHistory"},
                     "test_helper": {"setSecondaryLag"}, "test_fixture": {"setReplicaSetMembers"},
                     "test_listener": {"KAFKA_SSL"}, "test_counters": {"localMongo"},
                     "test_real": set()}


def test_every_test_only_command_the_docs_name_is_found_in_the_launcher():
    # The launcher's test-only commands are read from its source: a rename there must not
    # silently leave a test's use of the old name unchecked.
    expected = {"truncateChangeHistory", "setServerVersion", "setReplicaSetMembers",
                "setSecondaryLag", "setMongosMode", "holdOplogHole",
                "releaseOplogHole", "configureFailPoint"}
    assert expected <= set(devices())
    documented = (ROOT / "docs" / "testing.md").read_text()
    for command in launcher_only_commands():
        assert f"`{{{command}:" in documented or f"`{command}:" in documented, command


def test_a_local_server_test_is_skipped_when_make_test_real_selects_it_anyway():
    env = {**os.environ, "CDC_TEST_REAL_SERVERS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         f"{Path(__file__).relative_to(ROOT)}::"
         "test_the_check_finds_a_device_used_directly_through_a_helper_or_a_fixture",
         "tests/services/test_server_limits.py::test_only_the_simple_collation_is_accepted"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout, done.stdout
    assert "needs the local servers (the local server's refusal of collations" in done.stdout


def test_make_test_real_without_the_servers_named_is_one_line_and_exit_2():
    done = make_test_real(env={k: v for k, v in os.environ.items()
                               if k not in ("MONGODB_URI", "KAFKA_BOOTSTRAP_SERVERS")})

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines()[0] == (
        "make test-real: name your servers: MONGODB_URI=<a replica set's URI> "
        "KAFKA_BOOTSTRAP_SERVERS=<a broker> make test-real")
    assert done.stdout == ""


def test_a_local_server_mark_without_a_reason_is_a_usage_error(tmp_path):
    (tmp_path / "test_bare.py").write_text(
        "import pytest\n\n@pytest.mark.local_server\ndef test_bare():\n    pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "tests.conftest", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_bare.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "test_bare.py::test_bare: a local_server mark says why" in done.stderr


def test_a_tests_topics_and_groups_are_deleted_and_nothing_else(settings):
    mine = [settings.topic("items"), settings.dlq_topic("items")]
    neighbour = f"{settings.topic_prefix}x.items"  # another prefix that only starts the same
    for topic in [*mine, neighbour]:
        topics.ensure_topic(settings, topic, partitions=1)
    group = settings.group("price_total")
    consumer = KafkaConsumer(mine[0], group_id=group, enable_auto_commit=False,
                             bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        wait_for(lambda: consumer.poll(timeout_ms=200) is not None and consumer.assignment(),
                 what="the group's member with its partition")
        consumer.commit({TopicPartition(mine[0], 0): OffsetAndMetadata(0, "", -1)})
    finally:
        consumer.close()
    admin = topics.admin(settings)
    # A test may leave producer options in its settings (test_topics.py does), which an admin
    # client refuses: the cleanup connects as the conftest's settings did.
    settings.kafka_options = {"compression_type": "gzip", "linger_ms": 20}
    try:
        assert group in {g["group_id"] for g in admin.list_groups()}

        remove_kafka_leftovers(settings)

        wait_for(lambda: not set(mine) & set(admin.list_topics()), what="the topics deleted")
        assert group not in {g["group_id"] for g in admin.list_groups()}
        assert neighbour in admin.list_topics()
        admin.delete_topics([neighbour])
    finally:
        admin.close()


def test_the_check_collects_what_make_test_real_selects_whatever_an_outer_make_hands_down(
        monkeypatch):
    # As in `make test-real PYTEST_ARGS=...` running this suite: the arguments reach every make
    # below it through MAKEFLAGS, and used to replace the check's --collect-only.
    monkeypatch.setenv("MAKEFLAGS", " -- PYTEST_ARGS=--version")

    assert any("::" in nodeid for nodeid in collected_by_make_test_real())
