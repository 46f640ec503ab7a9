"""Crash anywhere, lose nothing: killed processes, a restarted broker, a lost database, dead
letters written and retried."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import textwrap
import threading
import time
from collections import Counter
from typing import Any

import pytest
from kafka import KafkaProducer

from cdc_migrator import api, testing
from cdc_migrator.capture.tailer import arm
from cdc_migrator.core import events
from cdc_migrator.migration import get_migration
from cdc_migrator.operations.observability import Watch

from ..harness import (
    ITEMS_MIGRATION,
    KAFKA,
    CliProcess,
    ItemsWriter,
    PrivateKafka,
    assert_invariant,
    free_port,
    part_of,
    poll,
    private_kafka_missing,
    run_cli,
    seed_items,
    state_of,
    wait_for,
)

NAME = "price_total"
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
        done = run_cli("cutover", NAME, "--timeout", "120s", settings=settings, timeout=300)
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

@pytest.fixture(scope="module")
def _private_broker(tmp_path_factory):
    if (missing := private_kafka_missing()) is not None:
        pytest.skip(missing)
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
        done = run_cli("cutover", NAME, "--timeout", "120s", settings=settings, timeout=300)
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
        db, settings, settings, {"CDC_MIGRATOR_RETRY_DEADLINE": "120s"}, 11, restart_the_broker)
    outages = outages_logged_once([tail, consume, backfill], "Kafka")
    print(f"broker restart: {outages} outages logged, writer ops {writer.ops}")
    assert outages >= 1
    assert_invariant(db["items"], writer.expected, writer.deleted)


def test_watch_checks_keep_their_kafka_client_through_a_broker_restart(db, settings,
                                                                       private_kafka):
    # The checks keep one Kafka client for the process's life: it must find the broker again.
    settings.kafka_bootstrap_servers = private_kafka.bootstrap
    migration = api.load(settings, "add_default_role")
    arm(settings, migration)
    watch = Watch(settings, [migration])
    try:
        # A new broker creates its offsets topic on the first group look-up: not ready till then.
        wait_for(lambda: watch.check() == (True, "ready"), what="ready")
        private_kafka.kill()
        ready, reason = watch.check()
        assert not ready and reason.startswith("Kafka: "), reason
        private_kafka.start()
        wait_for(lambda: watch.check() == (True, "ready"), what="ready with the broker back")
    finally:
        watch.stop()


def test_consume_exits_1_naming_kafka_when_the_broker_stays_down_past_the_deadline(
        db, settings, private_kafka):
    settings.kafka_bootstrap_servers = private_kafka.bootstrap
    consume = CliProcess(settings, "consume", "add_default_role",
                   env={"CDC_MIGRATOR_RETRY_DEADLINE": "3s"})
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
    unresolvable = {"MongoDB": {"CDC_MIGRATOR_MONGODB_URI":
                                "mongodb://nohost.invalid:27017/app"},
                    "Kafka": {"CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS":
                              "nohost.invalid:9092"}}[service]

    result = run_cli(command, "add_default_role", "--retry-deadline", "5s", "--log-format",
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
    proxy = TcpProxy(db.client.address)  # the server the client chose: a replica set's primary
    through_proxy = dataclasses.replace(
        settings, mongodb_uri=f"mongodb://127.0.0.1:{proxy.port}/{db.name}?directConnection=true")

    def lose_the_database(tail, consume):
        proxy.cut()
        # Gone until both noticed (the tailer reads the stream, the consumer checks its flag
        # every second): then their outage paths did run.
        wait_for(lambda: all(p.count("MongoDB at", "unavailable (") for p in (tail, consume)),
                 what="tail and consume noticing MongoDB gone")
        proxy.restore()

    env = {"CDC_MIGRATOR_MONGO_TIMEOUT_MS": "1500", "CDC_MIGRATOR_RETRY_DEADLINE": "120s"}
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

    ran = run_cli("run", "add_currency", "--timeout", "60s", "-q", settings=settings)
    listed = run_cli("dlq", "list", "add_currency", settings=settings)
    as_json = run_cli("dlq", "list", "add_currency", "--json", settings=settings)
    refused = run_cli("cutover", "add_currency", "--timeout", "2s", settings=settings)

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
    held = run_cli("dlq", "retry", "add_currency", settings=settings)
    assert held.returncode == 1 and "`cdc-migrator accept add_currency` takes it first" \
        in held.stderr, held.stderr
    accepted = run_cli("accept", "add_currency", "-q", settings=settings)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    retried = run_cli("dlq", "retry", "add_currency", settings=settings)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "3 migrated" in retried.stdout and "2 without a document id" in retried.stdout
    assert state_of(db, "add_currency")["dlq_pending"] == 0
    finished = run_cli("run", "add_currency", "--cutover", "--timeout", "60s", "-q",
                       settings=settings)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "cut over" in finished.stdout
    assert db.orders.count_documents({"currency": "USD"}) == 3
    assert db.orders.count_documents({"currency": "EUR"}) == 37


# Bad inputs through the command line: exit 1 or 2, one line naming the problem, no write.


# Lost change history: the tailer stops with exit 1 and never skips ahead.


# Secure connections: TLS and SASL options reach the clients; secrets stay masked.


