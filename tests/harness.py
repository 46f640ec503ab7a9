"""What the tests share, and what bench/run.py may import: the services' addresses, the
``cdc-migrator`` command in the foreground (:func:`run_cli`) and in the background
(:class:`CliProcess`, :class:`Service`), polling on observable signals (:func:`wait_for` and
the readers of the state document built on it), a LocalMongo of one's own, and the
application writing while a migration runs (:class:`ItemsWriter`, :class:`UsersWriter`).

Plain functions and classes only, no pytest: the fixtures that use them are in conftest.py.
``sys.path`` must hold the repository's root (``from tests.harness import ...``).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import io
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from unittest import mock

import bson
import pymongo
from kafka import KafkaAdminClient
from pymongo import monitoring, uri_parser

from cdc_migrator import cli
from cdc_migrator.base import logs, topics
from cdc_migrator.base.naming import STATE_COLLECTION
from cdc_migrator.base.settings import Settings, mask_uri
from cdc_migrator.migration import Migration

ROOT = Path(__file__).resolve().parent.parent
MONGO_BASE = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/app?directConnection=true")
KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
# The local broker's TLS listeners (scripts/services.sh): SSL, and SASL/SCRAM over TLS.
KAFKA_SSL = f"127.0.0.1:{os.environ.get('KAFKA_SSL_PORT', '9094')}"
KAFKA_SASL_SSL = f"127.0.0.1:{os.environ.get('KAFKA_SASL_SSL_PORT', '9095')}"
KAFKA_CA = ROOT / ".services" / "tls" / "ca.pem"
KAFKA_TLS_PASSWORD = "cdc-migrator-local"  # of the broker's keystore
SCRAM_USER, SCRAM_PASSWORD = "cdc-migrator", "cdc-migrator-local-secret"
# What scripts/services.sh fetched and compiled: the servers a test may start of its own.
LIB = ROOT / ".services" / "lib"
CLASSES = ROOT / ".services" / "classes"
LOG4J = f"-Dlog4j2.configurationFile={ROOT / 'services' / 'log4j2.properties'}"
FAST_JVM = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]  # quick to start, enough for tests


# ------------------------------------------------------------------------------ the services


def examples(count: int) -> int:
    """How many examples a property test tries: ``count``, or a tenth of it (at least 10) when
    ``CDC_TEST_QUICK=1``. `make unit` sets it for a quick loop; `make test` (and CI) try all."""
    if os.environ.get("CDC_TEST_QUICK") == "1":
        return max(10, count // 10)
    return count

def uri_for(database: str) -> str:
    """MONGO_BASE with its path replaced by ``database``. A user named in it keeps the
    database it authenticates against (the path's, else admin), which the path named."""
    head, _, tail = MONGO_BASE.partition("://")
    hostpart, _, rest = tail.partition("/")
    query = rest.partition("?")[2]
    auth_source = _auth_source(MONGO_BASE)
    if auth_source is not None:
        query = f"{query}&authSource={auth_source}" if query else f"authSource={auth_source}"
    return f"{head}://{hostpart}/{database}" + (f"?{query}" if query else "")


@functools.cache
def _auth_source(uri: str) -> str | None:
    """The database a user named in ``uri`` authenticates against when nothing but the URI's
    path names it (None: no user, or an authSource given, by the URI or its SRV record)."""
    parsed = uri_parser.parse_uri(uri)
    if parsed["username"] is None or "authsource" in {k.lower() for k in parsed["options"]}:
        return None
    return parsed["database"] or "admin"


def _first_address(hosts: str, default_port: int) -> tuple[str, int]:
    host, _, port = hosts.split(",")[0].rpartition("@")[2].partition(":")
    return host, int(port or default_port)


def services_unreachable(timeout: float = 2.0, real: bool = False) -> str | None:
    """Why the services cannot be used (one line naming them), or None when both accept
    connections: the local ones, or with ``real`` those a user brought to `make test-real`.
    A ``mongodb+srv://`` URI names no host to try: the driver's ping tells."""
    mongo = MONGO_BASE.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0]
    probes = [("Kafka", _first_address(KAFKA, 9092), KAFKA)]
    if not MONGO_BASE.startswith("mongodb+srv://"):
        probes.insert(0, ("MongoDB", _first_address(mongo, 27017), mask_uri(MONGO_BASE)))
    down = []
    for what, address, shown in probes:
        try:
            socket.create_connection(address, timeout=timeout).close()
        except OSError as exc:
            down.append(f"{what} at {shown} ({exc})")
    if not down:
        return None
    if real:
        return (f"{' and '.join(down)} not reachable: `make test-real` uses the servers that "
                "MONGODB_URI and KAFKA_BOOTSTRAP_SERVERS name")
    return (f"{' and '.join(down)} not reachable: run `make services-up` (with the ports of "
            "MONGODB_URI and KAFKA_BOOTSTRAP_SERVERS), or `make unit` for the tests that need "
            "no service")


def remove_kafka_leftovers(settings: Settings) -> None:
    """Delete the topics and the consumer groups named with ``settings``' prefixes, so that a
    broker a user brought to `make test-real` is left as it was found. A group still in use
    (a process that outlived its test) is left to the broker's offset retention."""
    # The connection of the conftest's settings, not the test's: a test may have changed the
    # client options of its settings (kafka_options), or pointed them at another listener.
    client = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=15_000)
    try:
        made = [t for t in client.list_topics() if t.startswith(f"{settings.topic_prefix}.")]
        if made:
            client.delete_topics(made)
        groups = [g for g in (group["group_id"] for group in client.list_groups())
                  if g.startswith(f"{settings.group_prefix}.")]
        if groups:
            client.delete_groups(groups)  # per-group errors are returned, not raised
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_mongo_missing() -> str | None:
    """Why a LocalMongo of one's own cannot start here, or None."""
    if shutil.which("java") is None or not CLASSES.is_dir():
        return "needs java and the compiled server in .services/classes (make services-up)"
    return None


def start_local_mongo(home: Path, *properties: str, heap: str = "256m",
                      auth: bool = False) -> tuple[subprocess.Popen, pymongo.MongoClient]:
    """A LocalMongo of one's own on a free port (JVM ``-D`` ``properties``), logging into
    ``home``, and a client for it, once it answers. Stop it with :func:`stop_local_mongo`.

    With ``auth`` the server has access control on (``-Dauth=true``, as mongod's ``--auth``):
    the client is not logged in, so until it creates the first user on ``admin`` (the
    localhost exception) it may only run the commands that need no authentication."""
    port = free_port()
    if auth:
        properties = ("-Dauth=true", *properties)
    with open(home / "mongo.out", "ab") as out:
        proc = subprocess.Popen(
            ["java", *FAST_JVM, f"-Xmx{heap}", LOG4J, *properties,
             f"-Dservice.log={home / 'mongo.log'}", "-cp", f"{CLASSES}:{LIB}/*", "LocalMongo",
             "127.0.0.1", str(port)], stdout=out, stderr=subprocess.STDOUT)
    client: pymongo.MongoClient = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=30_000,
        tz_aware=True)
    try:
        client.admin.command("ping")
    except BaseException:
        stop_local_mongo(proc, client)
        raise
    return proc, client


def stop_local_mongo(proc: subprocess.Popen, client: pymongo.MongoClient) -> None:
    client.close()
    proc.kill()
    proc.wait()


def seed_sharded_collection(client: pymongo.MongoClient, namespace: str, key: dict[str, Any],
                            split_points: list[Any], shards: int = 2,
                            version: str = "7.0") -> dict[str, Any]:
    """Write into the ``config`` database the metadata a sharded cluster keeps for
    ``namespace`` sharded on ``key``: ``shards`` entries in config.shards, the collection in
    config.collections and its chunks (cut at ``split_points``, values of the key's first
    field, dealt to the shards in turn) in config.chunks, in the shape of MongoDB ``version``
    ("4.4": chunks keyed by ``ns``; "6.0", "7.0", "8.0": by the collection's ``uuid``; 7.0+
    chunks carry ``onCurrentShardSince``). The local server's mongos mode reads the key from
    it; nothing is sharded. Returns the config.collections entry."""
    config = client.config
    epoch, uuid_ = bson.ObjectId(), bson.Binary.from_uuid(uuid.uuid4())
    now = bson.Timestamp(int(time.time()), 1)
    for n in range(shards):
        config.shards.replace_one({"_id": f"shard{n:02d}"}, {
            "_id": f"shard{n:02d}", "host": f"shard{n:02d}/shard{n:02d}-a.local:27018", "state": 1,
            "topologyTime": now}, upsert=True)
    entry: dict[str, Any] = {"_id": namespace, "lastmodEpoch": epoch,
                             "lastmod": dt.datetime.now(dt.UTC), "timestamp": now,
                             "uuid": uuid_, "key": key,
                             "unique": False, "noBalance": False}
    previous = config.collections.find_one({"_id": namespace}) or {}
    config.chunks.delete_many({"$or": [{"ns": namespace}, {"uuid": previous.get("uuid", uuid_)}]})
    config.collections.replace_one({"_id": namespace}, entry, upsert=True)
    first = next(iter(key))
    rest = {field: bson.MinKey() for field in list(key)[1:]}
    bounds = [bson.MinKey(), *split_points, bson.MaxKey()]
    for n, (low, high) in enumerate(zip(bounds, bounds[1:], strict=False)):
        chunk: dict[str, Any] = {"_id": bson.ObjectId(), "min": {first: low, **rest},
                                 "max": {first: high, **rest}, "shard": f"shard{n % shards:02d}",
                                 "lastmod": bson.Timestamp(1, n), "history": [
                                     {"validAfter": now, "shard": f"shard{n % shards:02d}"}]}
        chunk["ns" if version == "4.4" else "uuid"] = (namespace if version == "4.4"
                                                       else entry["uuid"])
        if version in ("7.0", "8.0"):
            chunk["onCurrentShardSince"] = now
        config.chunks.insert_one(chunk)
    return entry


def untargeted_writes(client: pymongo.MongoClient, namespace: str) -> int:
    """The single-document writes on ``namespace`` whose filter a mongos could not target by
    shard key, as the local server's mongos mode counts them (its own figure, not MongoDB's)."""
    counter = client.admin.command("serverStatus")["localMongo"]["untargetedSingleWrites"]
    return int(counter["byNamespace"].get(namespace, 0))


def scanned_objects(client: pymongo.MongoClient) -> int:
    """The documents a server read to answer queries (``serverStatus``'s
    ``metrics.queryExecutor.scannedObjects``)."""
    return int(client.admin.command("serverStatus")["metrics"]["queryExecutor"]["scannedObjects"])


def local_mongo(home: Path, *properties: str,
                heap: str = "256m") -> tuple[subprocess.Popen, pymongo.MongoClient]:
    """:func:`start_local_mongo`, or the test skipped (``unittest.SkipTest``, which pytest
    honours) where a LocalMongo of one's own cannot start."""
    missing = local_mongo_missing()
    if missing:
        raise unittest.SkipTest(missing)
    return start_local_mongo(home, *properties, heap=heap)


#: The idle-cursor timeout of the ``short_cursors`` server (tests/conftest.py), in ms.
CURSOR_TIMEOUT_MS = 600
#: The migrations of a LocalMongo of one's own (:func:`private_settings`): price_total in
#: batches of 5, and ``early``, of a collection that does not exist yet.
LIMITS_MIGRATIONS = textwrap.dedent('''
    from cdc_migrator import migration, UNSET

    @migration(collection="items", batch_size=5)
    def price_total(doc, ctx):
        total = doc["price"] * doc["qty"]
        if doc.get("total") != total or "legacy" in doc:
            return {"total": total, "legacy": UNSET}

    @migration(collection="not_there_yet")
    def early(doc, ctx):
        return None
''')


def cursor_metrics(client: pymongo.MongoClient) -> dict:
    """The server's cursor metrics (open, timed out): ``serverStatus``'s."""
    return client.admin.command("serverStatus")["metrics"]["cursor"]


def private_settings(client: pymongo.MongoClient, tmp_path: Path, **options: Any) -> Settings:
    """Settings for a LocalMongo of one's own (a new database) and the shared Kafka, with
    :data:`LIMITS_MIGRATIONS` written into ``tmp_path`` as the transforms."""
    host, port = client.address
    (tmp_path / "items.py").write_text(LIMITS_MIGRATIONS)
    return Settings(mongodb_uri=f"mongodb://{host}:{port}/d{uuid.uuid4().hex[:8]}"
                                "?directConnection=true",
                    kafka_bootstrap_servers=KAFKA, transforms=tmp_path,
                    topic_prefix=f"t-sl-{uuid.uuid4().hex[:8]}",
                    group_prefix=f"g-sl-{uuid.uuid4().hex[:8]}", partitions=2, **options)


def seed_legacy(coll: Any, n: int) -> None:
    """``n`` items of :data:`LIMITS_MIGRATIONS`' price_total, each still to migrate."""
    coll.insert_many([{"_id": i, "price": i, "qty": 2, "legacy": True} for i in range(n)])


class CommandRecorder(monitoring.CommandListener):
    """Every command a client started, as (name, command document)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def named(self, name: str) -> list[dict]:
        return [c for n, c in self.commands if n == name]


class PrivateKafka:
    """A single-node KRaft broker of a test's own on free ports, started as scripts/services.sh
    starts the shared one, to stop, restart or configure as the test needs.

    ``properties`` (lines of server.properties) override the shared broker's; ``jvm`` adds
    options of its JVM (``-D`` system properties); the classes services.sh compiled
    (``services/kafka``: e.g. ``RecordSizeCap``) are on its class path. Its SASL_SSL listener
    (``sasl_ssl_port``) uses the shared broker's certificate, which ``KAFKA_CA`` verifies.
    """

    def __init__(self, home: Path, properties: str = "", jvm: Iterable[str] = ()) -> None:
        self.home, self.jvm = home, list(jvm)
        self.port, controller = free_port(), free_port()
        self.sasl_ssl_port = free_port()
        text = (ROOT / "services" / "kafka" / "server.properties").read_text()
        for marker, value in (("@PORT@", self.port), ("@CONTROLLER_PORT@", controller),
                              ("@SSL_PORT@", free_port()), ("@SASL_SSL_PORT@", self.sasl_ssl_port),
                              ("@TLS@", KAFKA_CA.parent), ("@TLS_PASSWORD@", KAFKA_TLS_PASSWORD),
                              ("@DATA@", home / "data")):
            text = text.replace(marker, str(value))
        self.props = home / "server.properties"
        self.props.write_text(f"{text}\n{properties}\n")  # a later line wins
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        formatted = subprocess.run(
            ["java", *FAST_JVM, LOG4J, *self.jvm, f"-Dservice.log={home / 'format.log'}", "-cp",
             f"{CLASSES}:{LIB}/*", "kafka.tools.StorageTool", "format", "-t", cluster, "-c",
             str(self.props)], capture_output=True, text=True, timeout=120)
        assert formatted.returncode == 0, f"formatting {home}: {formatted.stderr[-2000:]}"
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    def start(self) -> None:
        with open(self.home / "kafka.out", "ab") as out:
            self.proc = subprocess.Popen(
                ["java", *FAST_JVM, "-Xmx512m", LOG4J, *self.jvm,
                 f"-Dservice.log={self.home / 'kafka.log'}", "-cp", f"{CLASSES}:{LIB}/*",
                 "kafka.Kafka", str(self.props)], stdout=out, stderr=subprocess.STDOUT)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, \
                (self.home / "kafka.out").read_text()
            try:
                KafkaAdminClient(bootstrap_servers=self.bootstrap, bootstrap_timeout_ms=1000,
                                 request_timeout_ms=2000).close()
                return True
            except Exception:
                return False

        wait_for(answers, timeout=90, what=f"the private broker on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def private_kafka_missing() -> str | None:
    """Why a broker of one's own cannot start here, or None."""
    if shutil.which("java") is None or not LIB.is_dir() or not CLASSES.is_dir():
        return "needs java, the service jars and classes in .services (make services-up)"
    return None


# The Go tools scripts/tools.sh builds (`make tools`): prometheus, promtool, helm, actionlint.
TOOLS_SCRIPT = ROOT / "scripts" / "tools.sh"


def tool_missing(name: str) -> str | None:
    """Why the Go tool ``name`` cannot be used (missing, or built from another pin), or None."""
    done = subprocess.run([str(TOOLS_SCRIPT), "check", name], capture_output=True, text=True,
                          timeout=60)
    return None if done.returncode == 0 else done.stderr.strip()


def tool(name: str, command: str = "path") -> str:
    """What ``scripts/tools.sh COMMAND NAME`` prints: the tool's ``path``, or the ``version``
    pinned for it."""
    return subprocess.run([str(TOOLS_SCRIPT), command, name], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def exported_series() -> set[str]:
    """The name of every series the tool's /metrics may carry (a counter's ``_total``, a
    histogram's ``_bucket``, ``_count`` and ``_sum``, an info's ``_info``), from its registry:
    what a dashboard or an alert may query."""
    from cdc_migrator.base.metrics import REGISTRY

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "info": ("_info",)}
    return {family.name + suffix for family in REGISTRY.collect()
            for suffix in suffixes.get(family.type, ("",))}


# --------------------------------------------------------------------------------- polling

def poll(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something true (returned) or ``timeout`` passed (then
    its last, false, result)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def wait_for(check: Callable[[], Any], timeout: float = 60,
             what: str | Callable[[], str] = "condition", interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something true (returned), or fail after ``timeout``.

    ``what`` names the condition in the failure; a callable is asked for it then (to show the
    last value seen, say).
    """
    result = poll(check, timeout, interval)
    if not result:
        described = what() if callable(what) else what
        raise AssertionError(f"{described} not reached within {timeout}s")
    return result


def state_of(db: Any, name: str, collection: str = STATE_COLLECTION) -> dict:
    """The migration's state document as stored (empty before anything wrote it)."""
    return db[collection].find_one({"_id": name}) or {}


def part_of(db: Any, name: str, part: str) -> dict:
    """One part of the state document (``tail``, ``backfill``, ``counts``...), or {}."""
    return state_of(db, name).get(part) or {}


def wait_for_state(db: Any, name: str, predicate: Callable[[dict], Any],
                   timeout: float = 120.0) -> dict:
    """Poll the state document of ``name`` until ``predicate`` holds for it; returns it."""
    seen: dict = {}

    def holds() -> dict | None:
        nonlocal seen
        seen = state_of(db, name)
        return seen if predicate(seen) else None

    return wait_for(holds, timeout=timeout, interval=0.1,
                    what=lambda: f"state of {name} satisfying the condition (last: {seen})")


def wait_drained(settings: Settings, migration: Migration, timeout: float = 180.0,
                 process: CliProcess | None = None) -> None:
    """Poll the consumer group's lag until it is zero on every partition; ``process`` (a
    consumer) is killed and its output shown if that never happens."""
    topic, group = settings.topic(migration.collection), settings.group(migration.name)
    last: list[Any] = []

    def drained() -> bool:
        lag = topics.group_lag(settings, topic, group)
        last[:] = [lag]
        return bool(lag.partitions) and lag.total == 0

    def failure() -> str:
        output = ""
        if process is not None:
            process.kill()
            output = f"; consumer output:\n{process.output}\n{process.log[-3000:]}"
        return f"zero lag (last: {last[0].as_dict() if last else None}){output}"

    wait_for(drained, timeout=timeout, interval=0.5, what=failure)


# ------------------------------------------------------------------------ cdc-migrator itself

def cli_env(settings: Settings | None = None, env: dict | None = None) -> dict[str, str]:
    """The environment of a ``cdc-migrator`` subprocess: ours, ``settings``, then ``env``.
    Ours names the test services by the suite's MONGODB_URI and KAFKA_BOOTSTRAP_SERVERS: the
    command gets them by the tool's own variables (the others are deprecated, and warn)."""
    full_env = dict(os.environ)
    for suite, tool in (("MONGODB_URI", "CDC_MIGRATOR_MONGODB_URI"),
                        ("KAFKA_BOOTSTRAP_SERVERS", "CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS")):
        if suite in full_env:
            full_env.setdefault(tool, full_env.pop(suite))
    if settings is not None:
        full_env.update(settings.environment())
    full_env.update(env or {})
    return full_env


def invoke(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """``cdc-migrator ARGS`` in this process, with ``env`` as its whole environment: exit code,
    stdout, stderr. A traceback would be raised here, failing the test."""
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    logs.configure()  # as a new process starts: text (an earlier call may have chosen JSON)
    with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            cli.main(args)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def run_cli(*args: str, settings: Settings | None = None, env: dict | None = None,
            timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cdc-migrator ARGS`` as a user would, in a subprocess, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "cdc_migrator", *args], capture_output=True, text=True,
        env=cli_env(settings, env), timeout=timeout, cwd=cwd or ROOT)


#: Every background command started and not yet seen ended, so that none outlives the test
#: that started it (see :func:`kill_children`): a consumer left running after its test's
#: database was dropped kept working against it for as long as the session lasted.
_CHILDREN: list[CliProcess] = []


def kill_children() -> list[str]:
    """SIGKILL every background command still running; the commands that were."""
    left = [child for child in _CHILDREN if child.alive]
    for child in left:
        child.kill()
    _CHILDREN.clear()
    return [" ".join(child.args) for child in left]


class CliProcess:
    """``cdc-migrator ARGS`` in the background with the settings' environment; its stderr
    (the log) and stdout collected line by line as they come, so neither pipe fills up.
    One still running when its test ends is killed then (conftest.py)."""

    def __init__(self, settings: Settings | None, *args: str, env: dict | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc_migrator", *args], env=cli_env(settings, env),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _CHILDREN.append(self)
        self.lines: list[str] = []  # stderr
        self.out: list[str] = []  # stdout
        self._readers = [threading.Thread(target=self._read, args=(s, t), daemon=True)
                         for s, t in ((self.proc.stderr, self.lines),
                                      (self.proc.stdout, self.out))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing finished or committed."""
        self.proc.kill()
        self.proc.wait()

    def wait(self, timeout: float = 120) -> int:
        """Its exit code, once it ended and its output was read to the end."""
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (finish the batch, commit, exit) and its exit code. One still running
        ``timeout`` seconds later is killed, and the stop fails with its log."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"`{' '.join(self.args)}` did not exit within {timeout}s of "
                                 f"SIGTERM; killed. Its log:\n{self.log}") from None

    def count(self, *words: str) -> int:
        """How many log lines hold every one of ``words``."""
        return sum(all(w in line for w in words) for line in self.lines)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def output(self) -> str:
        return "\n".join(self.out)

    def __enter__(self) -> CliProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.alive:
            self.stop()


class Service(CliProcess):
    """``cdc-migrator ARGS --metrics-port 0``: started once it logged the port it serves on."""

    def __init__(self, settings: Settings, *args: str, env: dict | None = None) -> None:
        super().__init__(settings, *args, "--metrics-port", "0", env=env)
        self.port = int(wait_for(self._port, what="the 'serving ... on port' log line"))

    def _port(self) -> str | None:
        if not self.alive:
            self.wait()
            raise AssertionError("exited early:\n" + self.log)
        found = [re.search(r"on port (\d+)", line) for line in list(self.lines)]
        return next((m.group(1) for m in found if m), None)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        """Every sample of /metrics, by name and labels."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.get("/metrics")
        assert status == 200
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def __enter__(self) -> Service:
        return self


def write_transforms(directory: Path, settings: Settings, files: dict[str, str]) -> Path:
    """``files`` ({file name: source}) in ``directory``, which becomes the settings'
    transforms directory."""
    for name, text in files.items():
        (directory / name).write_text(text)
    settings.transforms = directory
    return directory


# ------------------------------------------------------------------------ the application

# The items workload: a migration of the total, seeded documents, the application's writes,
# and the invariant at the end.
ITEMS_MIGRATION = textwrap.dedent('''
    from cdc_migrator import migration, UNSET

    @migration(collection="items", batch_size=1000)
    def price_total(doc, ctx):
        """total = price * qty, and the legacy flag goes."""
        total = doc["price"] * doc["qty"]
        if doc.get("total") != total or "legacy" in doc:
            return {"total": total, "legacy": UNSET}

    @migration(collection="members", batch_size=500)
    def split_prefs(doc, ctx):
        """Move prefs into member_prefs exactly once (idempotent side effect)."""
        if "prefs" not in doc:
            return None
        prefs = ctx.db.member_prefs
        if prefs.find_one({"memberId": doc["_id"]}) is None:
            prefs.insert_one({"memberId": doc["_id"], **doc["prefs"]})
        return {"prefs": UNSET}
''')


def seed_items(coll: Any, rng: random.Random, n: int) -> dict[int, tuple[int, int]]:
    """``n`` items, two in three in the old shape; returns each one's (price, qty)."""
    expected = {}
    docs = []
    for i in range(n):
        price, qty = rng.randint(1, 99), rng.randint(1, 9)
        if i % 3:
            docs.append({"_id": i, "price": price, "qty": qty, "legacy": True})
        else:  # already in the new shape: only a later application write makes it stale
            docs.append({"_id": i, "price": price, "qty": qty, "total": price * qty})
        expected[i] = (price, qty)
    for start in range(0, n, 5000):
        coll.insert_many(docs[start:start + 5000])
    return expected


def assert_invariant(coll: Any, expected: dict, deleted: set) -> None:
    """Every live item has the application's last price and qty and is migrated; nothing
    deleted came back."""
    docs = {d["_id"]: d for d in coll.find()}
    assert not (deleted & docs.keys()), "a deleted document came back"
    assert docs.keys() == expected.keys()
    wrong = [i for i, (price, qty) in expected.items()
             if (docs[i]["price"], docs[i]["qty"]) != (price, qty)
             or docs[i].get("total") != price * qty or "legacy" in docs[i]]
    assert not wrong, f"{len(wrong)} documents wrong, e.g. {docs[wrong[0]]} vs {expected[wrong[0]]}"


def pick(rng: random.Random, ids: Iterable[int], low: int | None = None,
         high: int | None = None) -> int | None:
    """A random one of ``ids`` (within ``low``..``high`` when given), or None when there is
    none: an application picks among the documents that exist, and there may be none."""
    if low is not None or high is not None:
        lo = low if low is not None else -(1 << 62)
        hi = high if high is not None else 1 << 62
        if isinstance(ids, range):
            window = range(max(ids.start, lo), min(ids.stop, hi + 1))
            return rng.choice(window) if len(window) else None
        ids = [i for i in ids if lo <= i <= hi]
    elif not isinstance(ids, range | list):
        ids = list(ids)
    return rng.choice(ids) if ids else None


class AppWriter(threading.Thread):
    """The application: a thread that writes until :attr:`stop` is set, counting its writes
    in :attr:`ops`, ``pace`` seconds apart. Subclasses make one write in :meth:`write`."""

    def __init__(self, rng: random.Random, pace: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.rng, self.pace = rng, pace
        self.stop = threading.Event()
        self.ops = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.write():
                    self.ops += 1
                if self.pace:
                    time.sleep(self.pace)  # pacing the application, not synchronisation
        except Exception as exc:  # raised by finish(): a dead writer must not pass silently
            self.error = exc

    def write(self) -> bool:
        """One write; False when there was nothing to write to."""
        raise NotImplementedError

    def finish(self, timeout: float = 60) -> None:
        """Stop, wait for the thread, and fail if it died of an error."""
        self.stop.set()
        self.join(timeout)
        assert not self.is_alive(), "the application writer did not stop"
        if self.error is not None:
            raise AssertionError(f"the application writer failed: {self.error!r}") \
                from self.error


class ItemsWriter(AppWriter):
    """Inserts items (old shape), updates the fields the transform reads, deletes.

    Remembers the last value it gave each document (:attr:`expected`, to start from what
    :func:`seed_items` returned) and what it deleted.
    """

    def __init__(self, coll: Any, rng: random.Random, next_id: int,
                 expected: dict[int, tuple[int, int]] | None = None,
                 pace: float = 0.001) -> None:
        super().__init__(rng, pace)
        self.coll, self.next_id = coll, next_id
        self.expected: dict[int, tuple[int, int]] = expected if expected is not None else {}
        self.deleted: set[int] = set()

    def write(self) -> bool:
        roll = self.rng.random()
        target = None if roll < 0.3 else pick(self.rng, list(self.expected))
        if target is None:
            doc_id = self.next_id
            self.next_id += 1
            price, qty = self.rng.randint(1, 99), self.rng.randint(1, 9)
            self.coll.insert_one({"_id": doc_id, "price": price, "qty": qty, "legacy": True})
            self.expected[doc_id] = (price, qty)
        elif roll < 0.85:
            price, qty = self.rng.randint(1, 99), self.rng.randint(1, 9)
            self.coll.update_one({"_id": target}, {"$set": {"price": price, "qty": qty}})
            self.expected[target] = (price, qty)
        else:
            self.coll.delete_one({"_id": target})
            del self.expected[target]
            self.deleted.add(target)
        return True


class UsersWriter(AppWriter):
    """Writes the fields a role-from-tier migration reads, on random users of ``ids``, and
    remembers what it wrote.

    Half of its writes go to the users just ahead of the saved apply position of
    ``migration``, where the scan reads next: that is where a write lands between a read and
    a guarded write. Once the scan passed the last user, those go to any user.
    """

    def __init__(self, uri: str, db_name: str, ids: range, state_collection: str,
                 migration: str, rng: random.Random) -> None:
        super().__init__(rng)
        self.uri, self.db_name = uri, db_name
        self.state_collection, self.migration = state_collection, migration
        self.ids = ids
        self.role: dict[int, str | None] = {}  # last role written (None: set to None or unset)
        self.tier: dict[int, str] = {}
        self.deleted: set[int] = set()
        self.cursor = -1
        self.users: Any = None

    def run(self) -> None:
        client: pymongo.MongoClient = pymongo.MongoClient(self.uri)
        db = client[self.db_name]
        self.users, self.state = db.users, db[self.state_collection]
        try:
            super().run()
        finally:
            client.close()

    def write(self) -> bool:
        if self.ops % 20 == 0:
            state = self.state.find_one({"_id": self.migration}) or {}
            self.cursor = (state.get("apply") or {}).get("cursor", -1)
        _id = None
        if self.rng.random() < 0.5:
            _id = pick(self.rng, self.ids, self.cursor + 1, self.cursor + 250)
        if _id is None:
            _id = pick(self.rng, self.ids)
        if _id is None or _id in self.deleted:
            return False
        op = self.rng.random()
        if op < 0.35:
            self.users.update_one({"_id": _id}, {"$set": {"role": "admin"}})
            self.role[_id] = "admin"
        elif op < 0.55:
            self.users.update_one({"_id": _id}, {"$set": {"role": None}})
            self.role[_id] = None
        elif op < 0.75:
            self.users.update_one({"_id": _id}, {"$unset": {"role": ""}})
            self.role[_id] = None
        elif op < 0.98:
            # A change of tier resets the role the application derives from it.
            tier = self.rng.choice(["free", "paid"])
            self.users.update_one({"_id": _id}, {"$set": {"tier": tier},
                                                 "$unset": {"role": ""}})
            self.tier[_id] = tier
            self.role[_id] = None
        else:
            self.users.delete_one({"_id": _id})
            self.deleted.add(_id)
        return True


def join_name(first: str, last: str | None) -> str:
    """``full_name`` from ``first_name``/``last_name``, as ``join_full_name`` joins them."""
    return first if last is None else f"{first} {last}"


class PeopleWriter(AppWriter):
    """The application around ``split_full_name`` (``full_name`` into ``first_name`` and
    ``last_name``): inserts, renames and deletes people.

    :attr:`mode` is the shape it writes: ``"new"`` (the split fields: what it writes from
    Deploy 1 on, and still while a revert begins) or ``"old"`` (``full_name``, the split fields
    removed: the code deployed for the way back). Remembers the full name each person should
    end with (:attr:`expected`), what it deleted, and its writes per mode (:attr:`by_mode`).
    """

    def __init__(self, coll: Any, rng: random.Random, expected: dict[int, str], next_id: int,
                 pace: float = 0.002) -> None:
        super().__init__(rng, pace)
        self.coll, self.expected, self.next_id = coll, expected, next_id
        self.deleted: set[int] = set()
        self.mode = "new"
        self.by_mode = {"new": 0, "old": 0}

    def write(self) -> bool:
        mode = self.mode
        first = f"G{self.rng.randrange(10_000)}"
        last = None if self.rng.random() < 0.2 else f"F {self.rng.randrange(100)}"
        if mode == "new":
            update: dict[str, Any] = {"$set": {"first_name": first, "last_name": last}}
        else:
            update = {"$set": {"full_name": join_name(first, last)},
                      "$unset": {"first_name": "", "last_name": ""}}
        roll = self.rng.random()
        target = None if roll < 0.25 else pick(self.rng, list(self.expected))
        if target is None:
            doc_id, self.next_id = self.next_id, self.next_id + 1
            self.coll.insert_one({"_id": doc_id, **update["$set"]})
            self.expected[doc_id] = join_name(first, last)
        elif roll < 0.9:
            self.coll.update_one({"_id": target}, update)
            self.expected[target] = join_name(first, last)
        else:
            self.coll.delete_one({"_id": target})
            del self.expected[target]
            self.deleted.add(target)
        self.by_mode[mode] += 1
        return True
