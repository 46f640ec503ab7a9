"""Crash anywhere, lose nothing: killed processes, a restarted broker, a lost database, dead
letters, bad inputs, lost change history, and secure connections."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pymongo
import pytest
from click.testing import CliRunner
from kafka import KafkaAdminClient, KafkaProducer

from cdc_migrator import api, cli, testing
from cdc_migrator.apply import consumer
from cdc_migrator.base import events, topics
from cdc_migrator.base import settings as config
from cdc_migrator.base.settings import Settings
from cdc_migrator.base.state import Phase
from cdc_migrator.capture.tailer import arm
from cdc_migrator.migration import get_migration

from .harness import (
    FAST_JVM,
    ITEMS_MIGRATION,
    KAFKA,
    KAFKA_CA,
    KAFKA_TLS_PASSWORD,
    LIB,
    LOG4J,
    ROOT,
    CliProcess,
    ItemsWriter,
    assert_invariant,
    free_port,
    local_mongo_missing,
    part_of,
    poll,
    run_cli,
    seed_items,
    start_local_mongo,
    state_of,
    stop_local_mongo,
    uri_for,
    wait_for,
)

NAME = "price_total"
SECRET = "n0t-f0r-y0ur-eyes"
TRANSFORMS = {"items.py": ITEMS_MIGRATION}


def outages_logged_once(procs: list[CliProcess], service: str) -> int:
    """Each outage a warning when it starts and an info line when it ends; returns how many."""
    total = 0
    for proc in procs:
        started = proc.count(f"{service} at", "unavailable (")
        ended = proc.count(f"{service} at", "reachable again after")
        assert started <= 2, f"{proc.args}: an outage logged per attempt:\n{proc.log}"
        assert ended == started, f"{proc.args}: {started} outages, {ended} ends:\n{proc.log}"
        assert "Traceback" not in proc.log, proc.log
        total += started
    return total


# Crash anywhere: SIGKILL at random points while the application writes.

# The items migration of test_pipeline, with a cost per document (so the consumer is busy and
# a kill often lands in the middle of a batch) and a crash point of its own: the consumer
# started with CDC_TEST_CRASH_MARKER kills itself at its CDC_TEST_CRASH_AT-th document, after
# its batch was read and before it was written; the marker makes it happen once.
COSTLY_ITEMS = textwrap.dedent('''
    import itertools
    import os
    import signal
    import time
    from cdc_migrator import migration, UNSET

    calls = itertools.count(1)

    @migration(collection="items", batch_size=1000)
    def price_total(doc, ctx):
        time.sleep(0.0001)  # the cost of a document, not synchronisation
        marker = os.environ.get("CDC_TEST_CRASH_MARKER")
        if marker and next(calls) == int(os.environ["CDC_TEST_CRASH_AT"]) \\
                and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        total = doc["price"] * doc["qty"]
        if doc.get("total") != total or "legacy" in doc:
            return {"total": total, "legacy": UNSET}
''')


def _at_work(db, piece: str) -> Any:
    """What moves while ``piece`` does its work: it is killed in the middle of that."""
    state = state_of(db, NAME)
    if piece == "consume":
        return (state.get("counts") or {}).get("consumed")
    if piece == "tail":
        return (state.get("tail") or {}).get("last_event_time")
    return (state.get("backfill") or {}).get("scanned")


def test_killing_backfill_tailer_and_consumer_at_random_points_loses_nothing(db, settings,
                                                                             tmp_path):
    seed = int(os.environ.get("CDC_TEST_SEED", random.randrange(1 << 30)))
    points = int(os.environ.get("CDC_KILL_POINTS", 15))
    print(f"seed={seed}")
    rng = random.Random(seed)
    (tmp_path / "items.py").write_text(COSTLY_ITEMS)
    settings.transforms = tmp_path
    coll = db["items"]
    expected = seed_items(coll, rng, 10_000)
    # A restarted consumer takes its partitions back at once under its --instance-id.
    commands = {"tail": ("tail", NAME), "consume": ("consume", NAME, "--instance-id", "c1"),
                "backfill": ("backfill", NAME, "--batch-size", "200", "--rate", "1500", "-q")}
    marker = tmp_path / "crashed"
    crash = {"CDC_TEST_CRASH_MARKER": str(marker),
             "CDC_TEST_CRASH_AT": str(rng.randrange(300, 3000))}

    def start(name: str) -> CliProcess:
        return CliProcess(settings, *commands[name], env=crash if name == "consume" else None)

    procs = {name: start(name) for name in ("tail", "consume")}
    wait_for(lambda: part_of(db, NAME, "tail").get("armed_at"), what="armed")
    procs["backfill"] = start("backfill")
    writer = ItemsWriter(coll, random.Random(seed + 1), next_id=10_000, expected=expected)
    writer.start()
    first = list(commands)
    rng.shuffle(first)  # each piece dies at least once, in a random order...
    # ...but the backfill first: it is the piece that ends on its own (10,000 documents at
    # 1,500/s), and on a loaded machine it could be done before its turn came.
    first.sort(key=lambda name: name != "backfill")
    killed: Counter[str] = Counter()
    try:
        while sum(killed.values()) < points or not marker.exists():
            # The sleeps of this loop choose random kill points; they synchronise nothing.
            time.sleep(rng.uniform(0.1, 1.0))
            if marker.exists() and procs["consume"].proc.poll() == -signal.SIGKILL \
                    and not killed["consume mid-batch"]:
                killed["consume mid-batch"] += 1  # the transform's own crash point
                procs["consume"] = start("consume")
            running = [name for name in commands if procs[name].alive]  # e.g. a done backfill
            left = [name for name in first if not killed[name] and name in running]
            victim = left[0] if left else rng.choice(running)
            # Mostly in the middle of its work; a piece still starting up is a point too.
            before = _at_work(db, victim)
            poll(lambda v=victim, b=before: _at_work(db, v) != b,
                 timeout=rng.uniform(0.3, 2.5), interval=0.02)
            time.sleep(rng.uniform(0, 0.15))
            if not procs[victim].alive:
                continue
            procs[victim].kill()
            killed[victim] += 1
            time.sleep(rng.uniform(0, 0.5))
            procs[victim] = start(victim)
        writer.finish()
        assert procs["backfill"].wait(timeout=180) == 0, procs["backfill"].log
        done = run_cli("cutover", NAME, "--timeout", "120", settings=settings, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        writer.stop.set()
        codes = {name: proc.stop() for name, proc in procs.items()}
    survived = sum(killed.values())
    print(f"seed={seed}: survived {survived} kill points {dict(killed)}; writer ops "
          f"{writer.ops}; {len(writer.expected)} live documents, {len(writer.deleted)} deleted")
    assert codes["tail"] == codes["consume"] == 0
    assert survived >= 10 and set(killed) == {*commands, "consume mid-batch"}
    assert_invariant(coll, writer.expected, writer.deleted)


# A broker of our own, to stop and start.

class PrivateKafka:
    """A single-node KRaft broker on free ports, started as scripts/services.sh does."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port, controller = free_port(), free_port()
        text = (ROOT / "services" / "kafka" / "server.properties").read_text()
        for marker, value in (("@PORT@", self.port), ("@CONTROLLER_PORT@", controller),
                              ("@SSL_PORT@", free_port()), ("@SASL_SSL_PORT@", free_port()),
                              ("@TLS@", KAFKA_CA.parent), ("@TLS_PASSWORD@", KAFKA_TLS_PASSWORD),
                              ("@DATA@", home / "data")):
            text = text.replace(marker, str(value))
        self.props = home / "server.properties"
        self.props.write_text(text)
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        subprocess.run(["java", *FAST_JVM, LOG4J, f"-Dservice.log={home / 'format.log'}", "-cp",
                        f"{LIB}/*", "kafka.tools.StorageTool", "format", "-t", cluster, "-c",
                        str(self.props)], check=True, capture_output=True, timeout=120)
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.home / "kafka.out", "ab") as out:
            self.proc = subprocess.Popen(
                ["java", *FAST_JVM, "-Xmx512m", LOG4J, f"-Dservice.log={self.home / 'kafka.log'}",
                 "-cp", f"{LIB}/*", "kafka.Kafka", str(self.props)],
                stdout=out, stderr=subprocess.STDOUT)

        def answers() -> bool:
            assert self.proc.poll() is None, (self.home / "kafka.out").read_text()
            try:
                KafkaAdminClient(bootstrap_servers=self.bootstrap, bootstrap_timeout_ms=1000,
                                 request_timeout_ms=2000).close()
                return True
            except Exception:
                return False

        wait_for(answers, timeout=90, what=f"the private broker on port {self.port}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def _private_broker(tmp_path_factory):
    if shutil.which("java") is None or not LIB.is_dir():
        pytest.skip("needs java and the service jars in .services/lib (make services-up)")
    broker = PrivateKafka(tmp_path_factory.mktemp("kafka"))
    yield broker
    if broker.proc is not None and broker.proc.poll() is None:
        broker.kill()


@pytest.fixture
def private_kafka(_private_broker):
    """A broker of this module's own, running; a test may kill and restart it."""
    if _private_broker.proc is None or _private_broker.proc.poll() is not None:
        _private_broker.start()
    return _private_broker


def ride_out(db, settings, pieces, env, seed, outage, after=lambda: None):
    """Tail, consume and a rate-limited backfill as processes using ``pieces`` settings, with
    the application writing meanwhile; ``outage(tail, consume)`` once the consumer is at
    work. Then the application writes on, the backfill must finish, cutover succeed, and tail
    and consume still run and exit 0. ``after()`` runs once they are stopped. Returns the
    processes and the writer."""
    coll = db["items"]
    expected = seed_items(coll, random.Random(seed), 3000)
    tail = CliProcess(pieces, "tail", NAME, env=env)
    consume = CliProcess(pieces, "consume", NAME, env=env)
    wait_for(lambda: part_of(db, NAME, "tail").get("armed_at"), what="armed")
    backfill = CliProcess(pieces, "backfill", NAME, "--batch-size", "100", "--rate", "500",
                          env=env)
    # The application's own connection: it does not go through a cut proxy.
    writer = ItemsWriter(coll, random.Random(seed + 1), next_id=3000, expected=expected)
    writer.start()
    try:
        wait_for(lambda: part_of(db, NAME, "counts").get("consumed", 0) > 300,
                 what="the consumer at work")
        outage(tail, consume)
        ops = writer.ops  # writes after the outage, which the pipeline must catch up with
        wait_for(lambda: writer.ops >= ops + 300, what="300 application writes after it")
        writer.finish()
        assert backfill.wait(timeout=180) == 0, backfill.log
        done = run_cli("cutover", NAME, "--timeout", "120", settings=settings, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr + tail.log + consume.log
        assert tail.alive and consume.alive, "the pipeline must resume by itself"
    finally:
        writer.stop.set()
        codes = [tail.stop(), consume.stop()]
        after()
    assert codes == [0, 0]
    return tail, consume, backfill, writer


def test_tail_backfill_and_consume_ride_out_a_broker_restart(db, settings, transforms,
                                                            private_kafka):
    settings.kafka_bootstrap_servers = private_kafka.bootstrap

    def restart_the_broker(tail, consume):
        private_kafka.kill()
        # Down until the pieces that always talk to Kafka noticed (the tailer produces the
        # application's writes, the consumer polls): then their outage paths did run.
        wait_for(lambda: all(p.count("Kafka at", "unavailable (") for p in (tail, consume)),
                 what="tail and consume noticing the broker gone")
        private_kafka.start()

    tail, consume, backfill, writer = ride_out(
        db, settings, settings, {"CDC_MIGRATOR_RETRY_DEADLINE": "120"}, 11, restart_the_broker)
    outages = outages_logged_once([tail, consume, backfill], "Kafka")
    print(f"broker restart: {outages} outages logged, writer ops {writer.ops}")
    assert outages >= 1
    assert_invariant(db["items"], writer.expected, writer.deleted)


def test_consume_exits_1_naming_kafka_when_the_broker_stays_down_past_the_deadline(
        db, settings, private_kafka):
    settings.kafka_bootstrap_servers = private_kafka.bootstrap
    consume = CliProcess(settings, "consume", "add_default_role",
                   env={"CDC_MIGRATOR_RETRY_DEADLINE": "3"})
    wait_for(lambda: consume.count("as group"), what="the consumer connected")
    private_kafka.kill()

    code = consume.wait(timeout=90)

    assert code == 1, consume.log
    final = consume.lines[-1]
    assert final.startswith("cdc-migrator: Kafka at 127.0.0.1:") and "--retry-deadline" in final
    assert consume.count("cdc-migrator:") == 1
    assert consume.count("Kafka at", "unavailable (") == 1, consume.log
    assert "Traceback" not in consume.log + "\n".join(consume.out)


#: How long after its retry deadline a piece may give up: one attempt lasts at most the deadline
#: (its wait for a server is capped by it) and starts no later than the deadline; the outage is
#: counted from the start of the first failed attempt. So the piece gives up at the deadline;
#: 3 s for the process's own work on a busy machine.
DEADLINE_TOLERANCE = 3.0


@pytest.mark.parametrize("command", ["tail", "consume"])
@pytest.mark.parametrize("service", ["MongoDB", "Kafka"])
def test_a_piece_gives_up_at_its_retry_deadline_and_says_how_long_it_tried(db, settings,
                                                                          command, service):
    """``--retry-deadline 5`` with a host that does not resolve: ``tail`` gave up after 41 s
    and ``consume`` after 32 s, saying "unavailable for 11s"."""
    unresolvable = {"MongoDB": {"MONGODB_URI": "mongodb://nohost.invalid:27017/app"},
                    "Kafka": {"KAFKA_BOOTSTRAP_SERVERS": "nohost.invalid:9092"}}[service]

    result = run_cli(command, "add_default_role", "--retry-deadline", "5", "--log-format",
                     "json", settings=settings, env=unresolvable, timeout=120)

    records = [json.loads(line) for line in result.stderr.splitlines()]
    started, ended = (dt.datetime.fromisoformat(records[i]["ts"]) for i in (0, -1))
    took = (ended - started).total_seconds()
    said = float(re.search(r"unavailable for (\d+)s", records[-1]["message"]).group(1))
    assert result.returncode == 1 and records[-1]["message"].startswith(
        f"{service} at nohost.invalid:"), result.stderr[-2000:]
    assert 5 <= took <= 5 + DEADLINE_TOLERANCE, (took, records[-1]["message"])
    assert abs(said - took) <= 1.5, (said, took)


# A lost database: a proxy in front of MongoDB that drops every connection.

class TcpProxy:
    """Forwards a local port to ``target``; :meth:`cut` drops every connection and refuses
    new ones until :meth:`restore`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        self._drop(self._listener)
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            self._drop(sock)

    @staticmethod
    def _drop(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src)
            self._drop(dst)


def test_tail_backfill_and_consume_ride_out_a_lost_database(db, settings, transforms):
    host, _, port = uri_for(db.name).split("://")[1].split("/")[0].partition(":")
    proxy = TcpProxy((host, int(port or 27017)))
    through_proxy = dataclasses.replace(
        settings, mongodb_uri=f"mongodb://127.0.0.1:{proxy.port}/{db.name}?directConnection=true")

    def lose_the_database(tail, consume):
        proxy.cut()
        # Gone until both noticed (the tailer reads the stream, the consumer checks its flag
        # every second): then their outage paths did run.
        wait_for(lambda: all(p.count("MongoDB at", "unavailable (") for p in (tail, consume)),
                 what="tail and consume noticing MongoDB gone")
        proxy.restore()

    env = {"CDC_MIGRATOR_MONGO_TIMEOUT_MS": "1500", "CDC_MIGRATOR_RETRY_DEADLINE": "120"}
    tail, consume, backfill, writer = ride_out(db, settings, through_proxy, env, 21,
                                               lose_the_database, after=proxy.cut)
    outages = outages_logged_once([tail, consume, backfill], "MongoDB")
    print(f"lost database: {outages} outages logged, writer ops {writer.ops}")
    # The tailer came back by itself from where it was, never from the armed point again.
    # How it resumed depends on where the outage met it, so that is not asserted: a failed
    # getMore makes it re-open the stream from the saved resume token (logged), while a
    # state write that its Retrier holds until MongoDB is back leaves the stream's own dead
    # connection to the driver's one automatic resume, from the newer token the driver saw.
    assert outages >= 2 and tail.count("MongoDB at", "unavailable (") >= 1
    assert tail.count("from the armed point") == 1, tail.log
    assert_invariant(db["items"], writer.expected, writer.deleted)


# Dead letters: poison records and a transform that raises.

ORDERS = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="orders")
    def add_currency(doc, ctx):
        if "currency" not in doc:
            if doc["country"] == "XX":
                raise ValueError(f"no currency known for country XX (order {doc['_id']})")
            return {"currency": "EUR"}
''')


def test_poison_records_and_raising_transforms_are_dead_lettered_then_retried(db, settings,
                                                                              tmp_path):
    (tmp_path / "orders.py").write_text(ORDERS)
    settings.transforms = tmp_path
    db.orders.insert_many([{"_id": i, "country": "XX" if i in (3, 17, 29) else "FR"}
                           for i in range(40)])
    migration = get_migration(tmp_path, "add_currency")
    arm(settings, migration)
    topic = settings.topic("orders")
    truncated = events.encode(testing.snapshot_envelope("add_currency", db.name, "orders",
                                                       {"_id": 5, "country": "FR"}))[:-7]
    poison = {0: b"\x00not an envelope at all", 1: truncated}
    producer = KafkaProducer(bootstrap_servers=KAFKA)
    sent = {p: producer.send(topic, key=b"junk", value=v, partition=p).get(timeout=30)
            for p, v in poison.items()}
    producer.close()

    ran = run_cli("run", "add_currency", "--timeout", "60", "-q", settings=settings)
    listed = run_cli("dlq", "list", "add_currency", settings=settings)
    as_json = run_cli("dlq", "list", "add_currency", "--json", settings=settings)
    refused = run_cli("cutover", "add_currency", "--timeout", "2", settings=settings)

    assert ran.returncode == 1, ran.stderr
    assert "5 failed documents unresolved in the dead-letter topic" in ran.stderr
    assert listed.returncode == 0 and "5 dead letters" in listed.stdout, listed.stdout
    letters = [json.loads(line) for line in as_json.stdout.splitlines()]
    failed = sorted((e for e in letters if e["kind"] == "transform"), key=lambda e: e["id"])
    assert [e["id"] for e in failed] == ["17", "29", "3"]
    for entry in failed:
        assert entry["migration"] == "add_currency"
        assert f"no currency known for country XX (order {entry['id']})" in entry["error"]
        assert "raise ValueError" in entry["traceback"]
        assert f"id={entry['id']}:" in listed.stdout
    dead = {e["partition"]: e for e in letters if e["kind"] == "poison"}
    assert set(dead) == {0, 1}
    for partition, value in poison.items():
        assert dead[partition]["offset"] == sent[partition].offset
        assert dead[partition]["value_hex"] == value.hex()
        assert dead[partition]["error"] and dead[partition]["migration"] == "add_currency"
    assert refused.returncode == 1
    assert "5 failed documents unresolved in the dead-letter topic" in refused.stdout
    print(f"dead-lettered: {len(failed)} transform failures, {len(dead)} poison records")

    fixed = ORDERS.replace("raise ValueError(", 'return {"currency": "USD"}  # ValueError(')
    assert fixed != ORDERS
    (tmp_path / "orders.py").write_text(fixed)
    retried = run_cli("dlq", "retry", "add_currency", settings=settings)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "3 migrated" in retried.stdout and "2 without a document id" in retried.stdout
    assert state_of(db, "add_currency")["dlq_pending"] == 0
    finished = run_cli("run", "add_currency", "--cutover", "--timeout", "60", "-q",
                       settings=settings)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "cut over" in finished.stdout
    assert db.orders.count_documents({"currency": "USD"}) == 3
    assert db.orders.count_documents({"currency": "EUR"}) == 37


# Bad inputs through the command line: exit 1 or 2, one line naming the problem, no write.

ITEMS_AND_TYPO = ITEMS_MIGRATION + textwrap.dedent('''
    @migration(collection="itemz")
    def typo_target(doc, ctx):
        return {"seen": True}
''')
UNREACHABLE_MONGO = "mongodb://127.0.0.1:1/app?directConnection=true"
WRONG_PASSWORD = f"mongodb://app:{SECRET}@{{host}}/{{db}}?directConnection=true"
QUICK = ["--mongo-timeout-ms", "500", "--retry-deadline", "1"]

BAD_INPUTS = [
    # id, arguments, extra files in the transforms directory, environment, exit code, message
    ("syntax-error", ["apply", NAME], {"broken.py": "def broken(:\n"}, {}, 2,
     "broken.py does not import: SyntaxError"),
    ("raises-on-import", ["backfill", NAME], {"boom.py": "raise RuntimeError('no config')\n"},
     {}, 2, "boom.py does not import: RuntimeError: no config"),
    ("no-collection", ["apply", NAME],
     {"empty.py": "from cdc_migrator import migration\n@migration(collection='')\n"
                  "def f(doc, ctx):\n    pass\n"}, {}, 2, "@migration needs collection"),
    ("duplicate-name", ["run", NAME], {"again.py": ITEMS_MIGRATION}, {}, 2,
     "two migrations are named 'price_total'"),
    ("unknown-name", ["apply", "price_totl"], {}, {}, 2, "no migration named 'price_totl'"),
    ("unknown-name-dlq", ["dlq", "retry", "nope"], {}, {}, 2, "no migration named 'nope'"),
    ("no-transforms-dir", ["apply", NAME, "--transforms", "/nonexistent/transforms"], {}, {}, 2,
     "transforms directory /nonexistent/transforms does not exist"),
    ("batch-size-0", ["apply", NAME, "--batch-size", "0"], {}, {}, 2,
     "invalid value '0' for flag --batch-size: expected an integer from 1"),
    ("negative-rate", ["backfill", NAME, "--rate", "-1"], {}, {}, 2,
     "invalid value '-1' for flag --rate: expected a finite number"),
    ("unknown-flag", ["apply", NAME, "--frobnicate"], {}, {}, 2, "No such option '--frobnicate'"),
    ("negative-deadline", ["consume", NAME, "--retry-deadline", "-5"], {}, {}, 2,
     "invalid value '-5' for flag --retry-deadline: expected a finite number of seconds"),
    ("bad-protocol", ["consume", NAME, "--kafka-security-protocol", "TLS"], {}, {}, 2,
     "invalid value 'TLS' for flag --kafka-security-protocol: expected one of PLAINTEXT"),
    ("missing-ca-file", ["tail", NAME, "--kafka-ssl-cafile", "/nonexistent/ca.pem"], {}, {}, 2,
     "invalid value '/nonexistent/ca.pem' for flag --kafka-ssl-cafile: expected the path of "
     "an existing file"),
    ("bad-config-file", ["status"], {}, {"CDC_MIGRATOR_CONFIG": "{tmp}/bad.toml"}, 2,
     "is not valid TOML"),
    ("invalid-uri", ["apply", NAME], {}, {"MONGODB_URI": "mongodb://"}, 2,
     "is not a valid MongoDB URI"),
    ("uri-without-database", ["apply", NAME], {},
     {"MONGODB_URI": "mongodb://127.0.0.1:27017/?directConnection=true"}, 2,
     "MONGODB_URI names no database"),
    ("unreachable-mongo", ["apply", NAME, *QUICK], {}, {"MONGODB_URI": UNREACHABLE_MONGO}, 1,
     "cannot reach MongoDB: 127.0.0.1:1: [Errno 111] Connection refused"),
    ("unreachable-mongo-retried", ["backfill", NAME, *QUICK], {},
     {"MONGODB_URI": UNREACHABLE_MONGO}, 1,
     "MongoDB at 127.0.0.1:1 unavailable for"),
    ("unreachable-kafka", ["dlq", "list", NAME, "--kafka", "127.0.0.1:1", *QUICK], {}, {}, 1,
     "cannot reach Kafka: KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:1']"),
    ("unreachable-kafka-retried", ["consume", NAME, "--kafka", "127.0.0.1:1", *QUICK], {}, {}, 1,
     "Kafka at 127.0.0.1:1 unavailable for"),
    ("missing-collection-apply", ["apply", "typo_target"], {}, {}, 1,
     "collection 'itemz' does not exist in database"),
    ("missing-collection-dry-run", ["apply", "typo_target", "--dry-run"], {}, {}, 1,
     "collection 'itemz' does not exist in database"),
    ("missing-collection-backfill", ["backfill", "typo_target"], {}, {}, 1,
     "collection 'itemz' does not exist in database"),
    ("wrong-password", ["apply", NAME, "--kafka-sasl-password", SECRET], {},
     {"MONGODB_URI": WRONG_PASSWORD}, 1, "MongoDB authentication failed"),
    ("cutover-not-started", ["cutover", NAME], {}, {}, 1, "the migration has not started"),
]


def snapshot(db) -> tuple:
    """Everything a command could have written: collections, their documents."""
    return tuple((name, tuple(map(repr, db[name].find(sort=[("_id", 1)]))))
                 for name in sorted(db.list_collection_names()))


@pytest.mark.parametrize(("args", "files", "env", "code", "message"),
                         [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_is_refused_with_one_line_and_writes_nothing(db, settings, tmp_path, args,
                                                                 files, env, code, message):
    transforms = tmp_path / "transforms"
    transforms.mkdir()
    (transforms / "items.py").write_text(ITEMS_AND_TYPO)
    for name, text in files.items():
        (transforms / name).write_text(text)
    (tmp_path / "bad.toml").write_text("partitions = \n")
    settings.transforms = transforms
    seed_items(db.items, random.Random(1), 20)
    host = uri_for(db.name).split("://")[1].split("/")[0]
    env = {k: v.format(tmp=tmp_path, host=host, db=db.name) for k, v in env.items()}
    before = snapshot(db)

    result = run_cli(*args, settings=settings, env=env, timeout=60)

    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert message in output
    assert "Traceback" not in output
    assert SECRET not in output
    if code == 1 and message in result.stderr:  # one line, after one warning per outage
        errors = [line for line in result.stderr.splitlines() if line.startswith("cdc-migrator:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
    assert snapshot(db) == before, "a refused command wrote to the database"


# Lost change history: the tailer stops with exit 1 and never skips ahead.

@pytest.fixture
def private_mongo(tmp_path):
    missing = local_mongo_missing()
    if missing:
        pytest.skip(missing)
    proc, client = start_local_mongo(tmp_path, heap="512m")
    yield client
    stop_local_mongo(proc, client)


def test_tailer_stops_with_history_lost_and_never_skips_ahead(private_mongo, tmp_path):
    (tmp_path / "items.py").write_text(ITEMS_MIGRATION)
    host, port = private_mongo.address
    settings = Settings(mongodb_uri=f"mongodb://{host}:{port}/app?directConnection=true",
                        kafka_bootstrap_servers=KAFKA, transforms=tmp_path,
                        topic_prefix=f"t-hl-{uuid.uuid4().hex[:8]}",
                        group_prefix=f"g-hl-{uuid.uuid4().hex[:8]}", partitions=2)
    db = private_mongo.app
    seed_items(db.items, random.Random(3), 200)
    tail = CliProcess(settings, "tail", NAME)
    first = wait_for(lambda: part_of(db, NAME, "tail").get("resume_token"),
                     what="a saved resume token")
    db.items.insert_one({"_id": 500, "price": 2, "qty": 3, "legacy": True})
    wait_for(lambda: part_of(db, NAME, "tail").get("resume_token") != first,
             what="the tailer moving on")
    assert tail.stop() == 0
    saved = state_of(db, NAME)["tail"]["resume_token"]
    db.items.insert_many([{"_id": 1000 + i, "price": 1, "qty": 1, "legacy": True}
                          for i in range(50)])
    dropped = db.client.admin.command({"truncateChangeHistory": 1})

    again = run_cli("tail", NAME, settings=settings, timeout=60)

    assert dropped["droppedEvents"] >= 50
    assert again.returncode == 1, again.stderr
    error = again.stderr.strip().splitlines()[-1]
    assert error.startswith("cdc-migrator: the change stream of items can no longer resume")
    assert f"a new backfill is needed: `cdc-migrator reset {NAME}`" in error
    assert "Traceback" not in again.stderr
    state = state_of(db, NAME)
    assert state["phase"] == Phase.FAILED and state["tail"]["resume_token"] == saved
    # The way back the message names: reset, then the pipeline migrates everything.
    assert run_cli("reset", NAME, "--yes", settings=settings).returncode == 0
    rerun = run_cli("run", NAME, "--timeout", "60", "-q", settings=settings)
    assert rerun.returncode == 0, rerun.stderr
    assert db.items.count_documents({"legacy": {"$exists": True}}) == 0
    assert db.items.count_documents({"total": {"$exists": True}}) == 251


# Secure connections: TLS and SASL options reach the clients; secrets stay masked.

SECURE_FLAGS = ["--kafka-security-protocol", "sasl_ssl", "--kafka-sasl-mechanism",
                "SCRAM-SHA-512", "--kafka-sasl-username", "cdc", "--kafka-ssl-cafile", "{ca}",
                "--mongo-tls-ca-file", "{ca}", "--mongo-tls-cert-key-file", "{cert}",
                "--mongo-tls-insecure"]


def settings_from_cli(monkeypatch, args: list[str], env: dict[str, str]) -> Settings:
    """The Settings the command line builds from ``args`` and ``env`` (``status`` captured)."""
    captured: list[Settings] = []
    monkeypatch.setattr(api, "status", lambda s, name=None: captured.append(s) or [])
    result = CliRunner().invoke(cli.cli, ["status", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (settings,) = captured
    return settings


def test_tls_and_sasl_options_reach_the_kafka_and_mongo_clients(monkeypatch, tmp_path):
    ca, cert = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.write_text("CA")
    cert.write_text("CERT")
    (tmp_path / "file.pem").write_text("CA OF THE FILE")
    (tmp_path / "cdc-migrator.toml").write_text(
        '[kafka]\nclient_id = "from-file"\nsecurity_protocol = "PLAINTEXT"\n'
        f'[mongo]\ntlscafile = "{tmp_path / "file.pem"}"\nappname = "from-file"\n')
    monkeypatch.chdir(tmp_path)
    args = [a.format(ca=ca, cert=cert) for a in SECURE_FLAGS]
    settings = settings_from_cli(monkeypatch, args,
                                 {"CDC_MIGRATOR_KAFKA_SASL_PASSWORD": SECRET,
                                  "CDC_MIGRATOR_RETRY_DEADLINE": "42",
                                  "CDC_MIGRATOR_MONGO_TIMEOUT_MS": "1234"})
    made: dict[str, dict] = {}

    def fake(kind: str) -> Callable[..., Any]:
        def make(*args: Any, **options: Any) -> mock.MagicMock:
            made[kind] = options
            return mock.MagicMock()
        return make

    for module, kind in ((topics, "KafkaProducer"), (topics, "KafkaAdminClient"),
                         (consumer, "KafkaConsumer")):
        monkeypatch.setattr(module, kind, fake(kind))
    monkeypatch.setattr(config.pymongo, "MongoClient", fake("MongoClient"))
    topics.producer(settings)
    topics.admin(settings)
    consumer.TransformConsumer(settings, get_migration(ROOT / "transforms",
                                                       "add_default_role"))._connect()
    _ = settings.client

    assert settings.retry_deadline == 42 and settings.mongo_timeout_ms == 1234
    for kind in ("KafkaProducer", "KafkaAdminClient", "KafkaConsumer"):
        assert {k: made[kind][k] for k in ("security_protocol", "sasl_mechanism",
                                           "sasl_plain_username", "sasl_plain_password",
                                           "ssl_cafile", "client_id")} == {
            "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "cdc", "sasl_plain_password": SECRET,
            "ssl_cafile": str(ca), "client_id": "from-file"}, kind
    mongo = made["MongoClient"]
    assert {k: mongo[k] for k in ("tls", "tlsCAFile", "tlsCertificateKeyFile", "tlsInsecure",
                                  "appname", "serverSelectionTimeoutMS")} == {
        "tls": True, "tlsCAFile": str(ca), "tlsCertificateKeyFile": str(cert),
        "tlsInsecure": True, "appname": "from-file", "serverSelectionTimeoutMS": 1234}
    assert "tlscafile" not in mongo, "the flag replaces the file's spelling of the option"


def test_the_mongo_tls_flags_build_a_tls_client(monkeypatch, tmp_path):
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        pytest.skip("no system CA bundle to load")
    settings = settings_from_cli(monkeypatch, ["--mongo-tls-ca-file", str(bundle),
                                               "--mongo-tls-insecure"], {})
    client = pymongo.MongoClient(settings.mongodb_uri, connect=False,
                                 **settings.mongo_client_options)
    try:
        assert client.options.pool_options._ssl_context is not None
        assert client.options.pool_options.tls_allow_invalid_hostnames
    finally:
        client.close()


def test_kafka_secrets_are_masked_in_config_show_and_in_every_log_line(db, settings):
    from_env = run_cli("config", "show", "--json",
                       env={"CDC_MIGRATOR_KAFKA_SASL_PASSWORD": SECRET})
    from_flag = run_cli("config", "show", "--kafka-ssl-password", SECRET,
                        "--kafka-sasl-username", "cdc")
    # -vv: the Kafka client logs its whole configuration, SASL password included.
    logged = run_cli("status", "-vv", "--kafka-sasl-password", SECRET, settings=settings)

    assert json.loads(from_env.stdout)["kafka_sasl_password"] == {"value": "***",
                                                                  "source": "env"}
    assert 'kafka_ssl_password = "***"  # flag' in from_flag.stdout
    assert 'kafka_sasl_username = "cdc"  # flag' in from_flag.stdout
    assert logged.returncode in (0, 1), logged.stderr
    for result in (from_env, from_flag, logged):
        assert SECRET not in result.stdout + result.stderr
