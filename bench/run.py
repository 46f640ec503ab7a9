"""Benchmarks of cdc-migrator: throughput, change-to-applied latency, and peak memory.

    .venv/bin/python bench/run.py [--docs 100000] [--repeat 3] [--only throughput,latency,memory]
                                  [--mongodb-uri URI] [--kafka HOST:PORT]

(``make bench`` starts the local services and runs this with ``$(BENCH_ARGS)``.) Every
measurement runs in a database and on topics of its own, which are dropped afterwards, so the
services may be shared. See docs/benchmarks.md for what is measured and the figures.

1. Throughput: the same "add a field with a default" migration, each time on a freshly seeded
   collection, run five ways: the server alone (``update_many``), two well-written direct
   pymongo loops (one sorted cursor; or re-queried ``_id`` ranges), ``apply`` (the Python API)
   and the full pipeline (``run_pipeline``: tail + backfill + consume until the lag is zero).
2. Latency: application inserts at a steady rate while ``cdc-migrator tail`` and
   ``cdc-migrator consume`` run as processes; a change stream sees when each document got the
   migrated field.
3. Memory: peak RSS of ``cdc-migrator backfill`` and ``cdc-migrator consume`` processes at two
   collection sizes ten times apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pymongo
from bson import ObjectId
from pymongo import UpdateOne

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdc_migrator.apply.shortcut.shortcut import apply_migration  # noqa: E402

from cdc_migrator.apply.consumer import group_id  # noqa: E402
from cdc_migrator.base import topics  # noqa: E402
from cdc_migrator.base.settings import Settings  # noqa: E402
from cdc_migrator.capture.tailer import arm  # noqa: E402
from cdc_migrator.demo_data import FIRST_NAMES, LAST_NAMES, WORDS  # noqa: E402
from cdc_migrator.migration import get_migration  # noqa: E402
from cdc_migrator.pipeline import run_pipeline  # noqa: E402

COLLECTION = "bench_users"
MIGRATION = "bench_add_tier"
FIELD, DEFAULT = "tier", "standard"
TRANSFORM_SOURCE = f'''\
from cdc_migrator import migration


@migration(collection="{COLLECTION}", filter={{"{FIELD}": {{"$exists": False}}}})
def {MIGRATION}(doc, ctx):
    if "{FIELD}" not in doc:
        return {{"{FIELD}": "{DEFAULT}"}}
    return None
'''

TARGETS = {"pipeline": 0.8, "pipeline_procs": 0.8, "apply": 0.95, "latency_p99_ms": 500.0,
           "memory_growth": 1.2}
METHODS = ("server", "direct", "direct_range", "apply", "pipeline", "pipeline_procs")
LABELS = {
    "server": "server-side update_many",
    "direct": "direct loop (one cursor)",
    "direct_range": "direct loop (_id ranges)",
    "apply": "cdc-migrator apply",
    "pipeline": "pipeline (tail+backfill+consume)",
    "pipeline_procs": "pipeline as processes",
}

# --------------------------------------------------------------------------- data

_CITIES = ["Amsterdam", "Berlin", "Lisbon", "Oslo", "Nairobi", "Osaka", "Austin", "Lima"]
_COUNTRIES = ["NL", "DE", "PT", "NO", "KE", "JP", "US", "PE"]
_BASE = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)


def make_doc(rng: random.Random, i: int) -> dict[str, Any]:
    """A user document of the old shape: 11 fields, about 400 bytes of BSON, no ``tier``."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    created = _BASE + dt.timedelta(seconds=rng.randrange(3 * 365 * 86400))
    city = rng.randrange(len(_CITIES))
    return {
        "_id": ObjectId(),
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}{i}@example.com",
        "age": rng.randint(18, 90),
        "createdAt": created,
        "lastLoginAt": created + dt.timedelta(seconds=rng.randrange(86400 * 90)),
        "active": rng.random() < 0.8,
        "score": round(rng.random() * 100, 2),
        "tags": rng.sample(WORDS, k=rng.randint(0, 4)),
        "address": {"street": f"{rng.randint(1, 999)} {rng.choice(WORDS).title()} Street",
                    "city": _CITIES[city], "zip": f"{rng.randint(10000, 99999)}",
                    "country": _COUNTRIES[city]},
        "logins": rng.randint(0, 5000),
    }


def seed(coll: Any, n: int, seed_value: int = 7) -> float:
    """Insert ``n`` old-shape documents; returns the seconds it took."""
    rng = random.Random(seed_value)
    started = time.perf_counter()
    chunk = 5000
    for start in range(0, n, chunk):
        coll.insert_many([make_doc(rng, i) for i in range(start, min(n, start + chunk))],
                         ordered=False)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- environment


class Bench:
    """Connections, naming, and clean-up of the databases and topics a run creates."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.client = pymongo.MongoClient(args.mongodb_uri, serverSelectionTimeoutMS=10_000,
                                          tz_aware=True)
        self.client.admin.command("ping")
        self.transforms = Path(tempfile.mkdtemp(prefix="cdc-bench-transforms-"))
        (self.transforms / "bench_migration.py").write_text(TRANSFORM_SOURCE)
        self.migration = get_migration(self.transforms, MIGRATION)
        self.counter = 0
        self.cpu = CpuMeter({"mongo": local_server_pid(args.mongodb_uri, 27017),
                             "kafka": local_server_pid("kafka://" + args.kafka.split(",")[0],
                                                       9092)})

    def fresh(self, label: str) -> Settings:
        """Settings of a new database, topic prefix and group, all unique to this call."""
        self.counter += 1
        name = f"cdcbench_{self.run_id}_{self.counter}_{label}"[:60]
        return Settings(
            mongodb_uri=uri_for(self.args.mongodb_uri, name),
            kafka_bootstrap_servers=self.args.kafka,
            transforms=self.transforms,
            topic_prefix=f"bench-{self.run_id}-{self.counter}",
            group_id=f"bench-{self.run_id}-{self.counter}",
            partitions=self.args.partitions,
        )

    def env(self, settings: Settings) -> dict[str, str]:
        """The environment of a ``cdc-migrator`` subprocess using ``settings``."""
        return {**os.environ, **settings.environment()}

    def cleanup(self, settings: Settings) -> None:
        settings.close()
        self.client.drop_database(settings.database_name)
        topic = settings.topic(COLLECTION)
        try:
            topics.delete_topics(settings, [topic, settings.dlq_topic(COLLECTION)])
            topics.delete_group(settings, group_id(settings, self.migration))
        except Exception as exc:  # clean-up is best effort
            print(f"  (could not delete topic {topic}: {exc})", file=sys.stderr)
        if self.args.truncate_history:
            # Test-only command of the local server: frees the change history the seeding
            # filled. Meaningless on MongoDB (the command does not exist there).
            try:
                self.client.admin.command({"truncateChangeHistory": 1})
            except pymongo.errors.PyMongoError:
                pass

    def close(self) -> None:
        self.client.close()
        for path in self.transforms.iterdir():
            path.unlink()
        self.transforms.rmdir()


def uri_for(base: str, database: str) -> str:
    """``base`` with its path (the database) replaced by ``database``."""
    head, _, tail = base.partition("://")
    hostpart, _, rest = tail.partition("/")
    query = rest.partition("?")[2]
    return f"{head}://{hostpart}/{database}" + (f"?{query}" if query else "")


def local_server_pid(uri: str, default_port: int) -> int | None:
    """The pid of the server behind ``uri`` when it runs on this machine, else None."""
    hostport = uri.partition("://")[2].split("/")[0].split(",")[0].rpartition("@")[2]
    host, _, port = hostport.partition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        return None
    return listening_pid(int(port or default_port))


def listening_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP ``port`` (Linux /proc), if visible."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """CPU seconds used by this process and by the two servers between start and stop."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.ours: list[int] = []  # running processes of ours (pipeline as processes)

    def sample(self) -> dict[str, float | None]:
        """"bench" is ours: this process, its children waited for, and those in ``ours``."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        mine = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
        out: dict[str, float | None] = {
            "bench": mine + sum(cpu_seconds(pid) or 0.0 for pid in self.ours)}
        for name, pid in self.pids.items():
            out[name] = cpu_seconds(pid)
        return out

    @staticmethod
    def delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, Any]:
        return {k: round(after[k] - v, 2) if v is not None and after[k] is not None else None
                for k, v in before.items()}


def unmigrated(coll: Any) -> int:
    return coll.count_documents({FIELD: {"$exists": False}})


# --------------------------------------------------------------------------- 1. throughput


def run_server(bench: Bench, settings: Settings) -> None:
    settings.db[COLLECTION].update_many({FIELD: {"$exists": False}}, {"$set": {FIELD: DEFAULT}})


def _patch(doc: dict[str, Any]) -> dict[str, Any] | None:
    return {FIELD: DEFAULT} if FIELD not in doc else None


def run_direct(bench: Bench, settings: Settings) -> None:
    """One sorted cursor over the unmigrated documents; an unordered bulk write per batch."""
    coll = settings.db[COLLECTION]
    size = bench.args.batch_size or 1000
    ops: list[UpdateOne] = []
    for doc in coll.find({FIELD: {"$exists": False}}, sort=[("_id", 1)], batch_size=size):
        patch = _patch(doc)
        if patch:
            ops.append(UpdateOne({"_id": doc["_id"]}, {"$set": patch}))
        if len(ops) >= size:
            coll.bulk_write(ops, ordered=False)
            ops = []
    if ops:
        coll.bulk_write(ops, ordered=False)


def run_direct_range(bench: Bench, settings: Settings) -> None:
    """A find per batch, by ``_id`` range with the filter; an unordered bulk write per batch."""
    coll = settings.db[COLLECTION]
    size = bench.args.batch_size or 1000
    last = None
    while True:
        query: dict[str, Any] = {FIELD: {"$exists": False}}
        if last is not None:
            query["_id"] = {"$gt": last}
        docs = list(coll.find(query, sort=[("_id", 1)], limit=size))
        if not docs:
            return
        last = docs[-1]["_id"]
        ops = [UpdateOne({"_id": d["_id"]}, {"$set": p}) for d in docs if (p := _patch(d))]
        if ops:
            coll.bulk_write(ops, ordered=False)


def run_apply(bench: Bench, settings: Settings) -> None:
    apply_migration(settings, bench.migration, batch_size=bench.args.batch_size,
                    show_progress=False)


def run_pipeline_method(bench: Bench, settings: Settings) -> dict[str, Any]:
    report = run_pipeline(settings, bench.migration, batch_size=bench.args.batch_size,
                          show_progress=False, settle=0.0, timeout=bench.args.timeout)
    if not report.drained or report.lag:
        raise RuntimeError(f"pipeline did not drain: lag {report.lag}")
    return {"counts": report.counts}


def group_stable(admin: Any, group: str) -> bool:
    """Whether ``group`` has members and is not rebalancing (kafka-python 3 and 2 APIs)."""
    if hasattr(admin, "describe_groups"):
        info = admin.describe_groups([group]).get(group) or {}
        state, members = info.get("group_state"), info.get("members")
    else:
        described = admin.describe_consumer_groups([group])
        state, members = (described[0].state, described[0].members) if described else (None, None)
    return state == "Stable" and bool(members)


class AlwaysOn:
    """``cdc-migrator tail`` and ``consume`` running as processes, as deployed: started, and
    the consumer in its group, before the clock starts; stopped after it stopped."""

    def __init__(self, bench: Bench, settings: Settings) -> None:
        self.bench = bench
        arm(settings, bench.migration)
        self.procs = [Subprocess(bench, settings, command, MIGRATION,
                                 name=f"{settings.group_id}-{command}")
                      for command in ("tail", "consume")]
        admin = topics.admin(settings)
        group = group_id(settings, bench.migration)
        try:
            def joined() -> bool:
                if any(p.proc.poll() is not None for p in self.procs):
                    raise RuntimeError("tail or consume exited; see their logs in "
                                       f"{tempfile.gettempdir()}/cdc-bench-*")
                return group_stable(admin, group)
            wait_for(joined, 120, "the consumer to join its group", interval=0.5)
        except BaseException:
            self.close()
            raise
        finally:
            admin.close()
        bench.cpu.ours = [p.proc.pid for p in self.procs]

    def close(self) -> None:
        if os.environ.get("CDC_BENCH_DEBUG"):
            print("   ", {p.proc.args[3]: cpu_seconds(p.proc.pid) for p in self.procs})
        self.bench.cpu.ours = []
        for p in self.procs:
            p.stop()


def run_pipeline_processes(bench: Bench, settings: Settings) -> dict[str, Any]:
    """``cdc-migrator backfill`` as a process, beside the always-on tail and consume, until
    every document is migrated and the group's lag is zero."""
    timeout = bench.args.timeout
    backfill = Subprocess(bench, settings, "backfill", MIGRATION, "-q",
                          *(["--batch-size", str(bench.args.batch_size)]
                            if bench.args.batch_size else []),
                          name=f"{settings.group_id}-backfill")
    started = time.perf_counter()
    if backfill.wait(timeout) != 0:
        raise RuntimeError(f"backfill exited with {backfill.returncode}")
    backfill_seconds = time.perf_counter() - started
    coll = settings.db[COLLECTION]
    topic, group = settings.topic(COLLECTION), group_id(settings, bench.migration)
    if os.environ.get("CDC_BENCH_DEBUG"):
        print(f"    backfill done after {backfill_seconds:.1f} s, lag then "
              f"{topics.group_lag(settings, topic, group).total}")
    # The lag first: counting the unmigrated documents scans the collection (not to be done
    # ten times a second while the pipeline works).
    wait_for(lambda: topics.group_lag(settings, topic, group).total == 0 and unmigrated(coll) == 0,
             timeout, "the pipeline to drain", interval=0.1)
    return {"backfill_seconds": round(backfill_seconds, 2)}


RUNNERS = {"server": run_server, "direct": run_direct, "direct_range": run_direct_range,
           "apply": run_apply, "pipeline": run_pipeline_method,
           "pipeline_procs": run_pipeline_processes}
# Set up before the clock starts; closed after it stopped.
PREPARE = {"pipeline_procs": AlwaysOn}


def throughput(bench: Bench) -> dict[str, Any]:
    args = bench.args
    methods = [m for m in args.methods.split(",") if m]
    if "direct_range" in methods and args.docs > args.range_limit:
        print(f"  direct_range skipped: {args.docs:,} documents > --range-limit "
              f"{args.range_limit:,} (on the local server each range query scans and sorts the "
              "whole collection)")
        methods.remove("direct_range")
    if args.warmup:
        # A freshly started server (JIT compilation, a heap still growing) is slower at first.
        for method in ("server", "direct"):
            settings = bench.fresh(f"warmup_{method}")
            try:
                seed(settings.db[COLLECTION], args.warmup)
                RUNNERS[method](bench, settings)
            finally:
                bench.cleanup(settings)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    failures: dict[str, list[dict[str, Any]]] = {}
    # The order rotates from round to round, so that no method always follows the same one
    # (the local server's garbage collection after a heavy method bills the next one); the
    # _id-range loop, by far the heaviest for the local server, always comes last.
    rotating = [m for m in methods if m != "direct_range"]
    for round_no in range(1, args.repeat + 1):
        shift = (round_no - 1) % max(1, len(rotating))
        order = rotating[shift:] + rotating[:shift] + [m for m in methods if m == "direct_range"]
        for method in order:
            settings = bench.fresh(method)
            coll = settings.db[COLLECTION]
            prepared: Any = None
            try:
                seeded = seed(coll, args.docs)
                time.sleep(args.pause)
                if method in PREPARE:
                    prepared = PREPARE[method](bench, settings)
                cpu_before = bench.cpu.sample()
                started = time.perf_counter()
                try:
                    extra = RUNNERS[method](bench, settings) or {}
                    left = unmigrated(coll)
                    if left:
                        raise RuntimeError(f"{left} documents left unmigrated")
                except Exception as exc:  # recorded; the other runs go on
                    seconds = time.perf_counter() - started
                    failures.setdefault(method, []).append(
                        {"round": round_no, "seconds": round(seconds, 1), "error": str(exc)})
                    print(f"  round {round_no} {LABELS[method]:<34} FAILED after {seconds:.0f} s: "
                          f"{exc}", flush=True)
                    continue
                seconds = time.perf_counter() - started
                cpu = CpuMeter.delta(cpu_before, bench.cpu.sample())
                rate = args.docs / seconds
                runs[method].append({"round": round_no, "seconds": round(seconds, 3),
                                     "docs_per_s": round(rate, 1), "seed_seconds":
                                     round(seeded, 2), "cpu_s": cpu, **extra})
                print(f"  round {round_no} {LABELS[method]:<34} {seconds:8.2f} s "
                      f"{rate:10,.0f} docs/s   cpu s: " + ", ".join(
                          f"{k} {v}" for k, v in cpu.items() if v is not None), flush=True)
            finally:
                if prepared is not None:
                    prepared.close()
                    prepared = None
                bench.cleanup(settings)
    summary: dict[str, Any] = {}
    for method, items in runs.items():
        if not items:
            summary[method] = {"label": LABELS[method], "runs": [],
                               "failed": failures.get(method, [])}
            continue
        rates = [r["docs_per_s"] for r in items]
        summary[method] = {"label": LABELS[method], "runs": items, **spread(rates)}
        summary[method]["cpu_s_median"] = {
            k: round(statistics.median(r["cpu_s"][k] for r in items), 2)
            for k in items[0]["cpu_s"] if all(r["cpu_s"][k] is not None for r in items)}
        if method in failures:
            summary[method]["failed"] = failures[method]
    baseline = "direct"
    if baseline in runs:
        for method in ("apply", "pipeline", "pipeline_procs", "server", "direct_range"):
            if method not in runs:
                continue
            by_round = {r["round"]: r["docs_per_s"] for r in runs[baseline]}
            ratios = [a["docs_per_s"] / by_round[a["round"]] for a in runs[method]
                      if a["round"] in by_round]
            if not ratios:
                continue
            summary[method]["ratio_to_direct"] = spread(ratios, 3)
            if method in TARGETS:
                summary[method]["target"] = TARGETS[method]
                summary[method]["target_met"] = statistics.median(ratios) >= TARGETS[method]
    return summary


def spread(values: list[float], digits: int = 1) -> dict[str, Any]:
    if not values:
        return {}
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


# --------------------------------------------------------------------------- 2. latency


# Runs ``cdc-migrator ARGS`` and, at exit, writes the process's own peak resident set (VmHWM
# of /proc/self/status, in KiB) to the file named by CDC_BENCH_PEAK_FILE. The parent cannot
# read it after the exit, and the rusage of a child is no help: on Linux its ru_maxrss also
# counts the parent's pages the child shared before exec.
_PEAK_WRAPPER = """\
import atexit, os, runpy, sys

def _report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            with open(os.environ["CDC_BENCH_PEAK_FILE"], "w") as out:
                out.write(line.split()[1])

atexit.register(_report)
sys.argv[0] = "cdc-migrator"
runpy.run_module("cdc_migrator", run_name="__main__", alter_sys=True)
"""


class Subprocess:
    """A ``cdc-migrator`` command in its own process; stopped with SIGTERM."""

    def __init__(self, bench: Bench, settings: Settings, *args: str, name: str) -> None:
        base = Path(tempfile.gettempdir()) / f"cdc-bench-{bench.run_id}-{name}"
        self.log = open(f"{base}.log", "w")
        self.peak_file = Path(f"{base}.peak")
        self.peak_file.unlink(missing_ok=True)
        env = {**bench.env(settings), "CDC_BENCH_PEAK_FILE": str(self.peak_file)}
        self.proc = subprocess.Popen([sys.executable, "-c", _PEAK_WRAPPER, *args], env=env,
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.returncode: int | None = None
        self._peak_kib = 0
        self.trace: list[int] = []

    def sample(self) -> None:
        """Note the running process's peak resident set so far (VmHWM)."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self._peak_kib = max(self._peak_kib, int(line.split()[1]))
                    self.trace.append(round(self._peak_kib / 1024))
        except OSError:
            pass

    def peak_rss_mb(self) -> float:
        """The process's peak resident set, in MiB (reported by itself at exit)."""
        try:
            self._peak_kib = max(self._peak_kib, int(self.peak_file.read_text()))
        except (OSError, ValueError):
            pass
        return self._peak_kib / 1024

    def wait(self, timeout: float | None = None) -> int:
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.proc.args[3:]} still running") from None
        self.log.close()
        return self.returncode

    def stop(self, timeout: float = 60) -> int:
        if self.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except TimeoutError:
                self.proc.kill()
                return self.wait()
        return self.returncode


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency(bench: Bench) -> dict[str, Any]:
    args = bench.args
    settings = bench.fresh("latency")
    coll = settings.db[COLLECTION]
    procs: list[Subprocess] = []
    try:
        seed(coll, 1000)
        arm(settings, bench.migration)
        procs.append(Subprocess(bench, settings, "tail", MIGRATION, name="tail"))
        procs.append(Subprocess(bench, settings, "consume", MIGRATION, name="consume"))
        procs.append(Subprocess(bench, settings, "backfill", MIGRATION, "-q", name="backfill"))
        if procs[-1].wait(300) != 0:
            raise RuntimeError("backfill failed")
        wait_for(lambda: unmigrated(coll) == 0, 300, "the backfill to be applied")

        sent: dict[Any, float] = {}
        seen: dict[Any, float] = {}
        stop = threading.Event()
        ready = threading.Event()
        watch_client = pymongo.MongoClient(settings.mongodb_uri, tz_aware=True)

        def detect() -> None:
            stream_coll = watch_client[settings.database_name][COLLECTION]
            pipeline = [{"$match": {"operationType": "update",
                                    f"updateDescription.updatedFields.{FIELD}": {"$exists": True}}}]
            with stream_coll.watch(pipeline, max_await_time_ms=50) as stream:
                ready.set()
                while not stop.is_set():
                    change = stream.try_next()
                    if change is not None:
                        seen.setdefault(change["documentKey"]["_id"], time.perf_counter())

        detector = threading.Thread(target=detect, daemon=True, name="detector")
        detector.start()
        ready.wait(30)
        # Warm-up: the consumer's partitions are assigned and its connections open.
        warm = [make_doc(random.Random(1), i) for i in range(20)]
        coll.insert_many(warm)
        wait_for(lambda: all(d["_id"] in seen for d in warm), 120, "the warm-up writes")

        rng = random.Random(11)
        interval = 1.0 / args.latency_rate
        unmeasured = int(args.latency_rate * args.latency_warmup)
        total = int(args.latency_rate * args.latency_seconds)
        lateness = 0.0
        # The first --latency-warmup seconds of writes are not measured: a freshly started
        # service pipeline (JIT compilation of the servers, connections) is slower at first.
        for i in range(unmeasured + total):
            if i in (0, unmeasured):
                started, base = time.perf_counter(), i
            due = started + (i - base) * interval
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            elif i >= unmeasured:
                lateness = max(lateness, now - due)
            doc = make_doc(rng, i)
            doc["writtenAt"] = dt.datetime.now(dt.UTC)  # the client timestamp, for readers
            if i >= unmeasured:
                sent[doc["_id"]] = time.perf_counter()
            coll.insert_one(doc)
        achieved = total / (time.perf_counter() - started)
        try:
            wait_for(lambda: all(k in seen for k in sent), 30, "the last writes", 0.1)
        except TimeoutError:
            pass
        stop.set()
        detector.join(5)
        watch_client.close()
        values = sorted((seen[k] - t) * 1000 for k, t in sent.items() if k in seen)
        result = {
            "writes": total, "rate_target": args.latency_rate, "rate_achieved": round(achieved, 1),
            "seconds": args.latency_seconds, "detected": len(values),
            "missed": total - len(values), "writer_max_lateness_ms": round(lateness * 1000, 1),
            "p50_ms": round(percentile(values, 50), 1), "p95_ms": round(percentile(values, 95), 1),
            "p99_ms": round(percentile(values, 99), 1), "max_ms": round(values[-1], 1)
            if values else None,
            "target_p99_ms": TARGETS["latency_p99_ms"],
        }
        result["target_met"] = bool(values) and result["p99_ms"] < TARGETS["latency_p99_ms"] \
            and not result["missed"]
        print(f"  {len(values):,}/{total:,} writes migrated at {achieved:.0f}/s: "
              f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms, "
              f"max {result['max_ms']} ms", flush=True)
        return result
    finally:
        for p in procs:
            p.stop()
        bench.cleanup(settings)


# --------------------------------------------------------------------------- 3. memory


def memory_at(bench: Bench, size: int) -> dict[str, Any]:
    settings = bench.fresh(f"mem{size}")
    coll = settings.db[COLLECTION]
    procs: list[Subprocess] = []
    try:
        seed(coll, size)
        arm(settings, bench.migration)
        started = time.perf_counter()
        backfill_proc = Subprocess(bench, settings, "backfill", MIGRATION, "-q", name="backfill")
        procs.append(backfill_proc)
        if backfill_proc.wait(3600) != 0:
            raise RuntimeError(f"backfill failed (log {backfill_proc.log.name})")
        backfill_seconds = time.perf_counter() - started
        topic = settings.topic(COLLECTION)
        group = group_id(settings, bench.migration)
        started = time.perf_counter()
        consume_proc = Subprocess(bench, settings, "consume", MIGRATION, name="consume")
        procs.append(consume_proc)

        def drained() -> bool:
            if consume_proc.proc.poll() is not None:
                raise RuntimeError(f"consume exited (log {consume_proc.log.name})")
            consume_proc.sample()
            lag = topics.group_lag(settings, topic, group)
            return bool(lag.partitions) and all(p.committed is not None for p in lag.partitions
                                                if p.end) and lag.total == 0
        wait_for(drained, bench.args.timeout * size / max(1, bench.args.docs) + 300,
                 "the consumer to drain the topic", 0.5)
        if os.environ.get("CDC_BENCH_RSS_TRACE"):
            print(f"    consume VmHWM trace (MiB): {consume_proc.trace}")
        consume_seconds = time.perf_counter() - started
        consume_proc.stop()
        result = {
            "docs": size,
            "backfill_peak_rss_mb": round(backfill_proc.peak_rss_mb(), 1),
            "consume_peak_rss_mb": round(consume_proc.peak_rss_mb(), 1),
            "backfill_seconds": round(backfill_seconds, 2),
            "consume_seconds": round(consume_seconds, 2),
        }
        if unmigrated(coll):
            raise RuntimeError("consume left documents unmigrated")
        print(f"  {size:>9,} documents: backfill peak RSS {result['backfill_peak_rss_mb']} MiB "
              f"({backfill_seconds:.1f} s), consume peak RSS {result['consume_peak_rss_mb']} MiB "
              f"({consume_seconds:.1f} s)", flush=True)
        return result
    finally:
        for p in procs:
            p.stop()
        bench.cleanup(settings)


def memory(bench: Bench) -> dict[str, Any]:
    sizes = [int(s) for s in bench.args.memory_sizes.split(",")] if bench.args.memory_sizes \
        else [max(1, bench.args.docs // 10), bench.args.docs]
    small, large = min(sizes), max(sizes)
    runs = [memory_at(bench, small), memory_at(bench, large)]
    out: dict[str, Any] = {"sizes": [small, large], "runs": runs,
                           "target_growth": TARGETS["memory_growth"]}
    for part in ("backfill", "consume"):
        growth = runs[1][f"{part}_peak_rss_mb"] / runs[0][f"{part}_peak_rss_mb"]
        out[f"{part}_growth"] = round(growth, 3)
        out[f"{part}_target_met"] = growth <= TARGETS["memory_growth"]
    return out


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    lines = []
    tp = results.get("throughput")
    if tp:
        lines += [f"Throughput, {results['args']['docs']:,} documents, "
                  f"{results['args']['repeat']} round(s) (median [min-max])", ""]
        lines.append(f"{'method':<34} {'docs/s':>24}   {'x direct loop':>22}   "
                     f"{'target':<18} CPU s: ours/mongo/kafka")
        for method in METHODS:
            if method not in tp:
                continue
            s = tp[method]
            failed = f"   ({len(s['failed'])} run(s) failed)" if s.get("failed") else ""
            if "median" not in s:
                lines.append(f"{s['label']:<34} {'no successful run':>24}{failed}")
                continue
            rate = f"{s['median']:,.0f} [{s['min']:,.0f}-{s['max']:,.0f}]"
            ratio = target = ""
            if "ratio_to_direct" in s:
                r = s["ratio_to_direct"]
                ratio = f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
            if "target" in s:
                target = f">= {s['target']:.2f}: " + ("met" if s["target_met"] else "NOT met")
            cpu = s.get("cpu_s_median", {})
            cpu_text = "/".join(f"{cpu[k]:.1f}" if k in cpu else "?"
                                for k in ("bench", "mongo", "kafka"))
            lines.append(f"{s['label']:<34} {rate:>24}   {ratio:>22}   {target:<18} {cpu_text}"
                         + failed)
        lines.append("")
    lat = results.get("latency")
    if lat:
        lines.append(f"Change-to-applied latency, {lat['rate_achieved']:.0f} inserts/s for "
                     f"{lat['seconds']} s ({lat['detected']:,}/{lat['writes']:,} detected)")
        lines.append(f"  p50 {lat['p50_ms']} ms   p95 {lat['p95_ms']} ms   p99 {lat['p99_ms']} ms"
                     f"   max {lat['max_ms']} ms   target p99 < {lat['target_p99_ms']:.0f} ms: "
                     + ("met" if lat["target_met"] else "NOT met"))
        lines.append("")
    mem = results.get("memory")
    if mem:
        small, large = mem["runs"]
        lines.append(f"Peak RSS (MiB) at {small['docs']:,} and {large['docs']:,} documents")
        for part in ("backfill", "consume"):
            lines.append(f"  {part:<9} {small[f'{part}_peak_rss_mb']:8.1f} "
                         f"{large[f'{part}_peak_rss_mb']:8.1f}"
                         f"   x{mem[f'{part}_growth']:.2f}   target <= x{mem['target_growth']}: "
                         + ("met" if mem[f"{part}_target_met"] else "NOT met"))
        lines.append("")
    return "\n".join(lines)


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mongodb-uri", default=os.environ.get(
        "MONGODB_URI", "mongodb://127.0.0.1:27017/app?directConnection=true"),
        help="MongoDB to use (default: $MONGODB_URI); each measurement uses its own database")
    p.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                   help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--docs", type=int, default=100_000, help="collection size (default 100000)")
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds of the throughput methods (default 3); medians are reported")
    p.add_argument("--only", default="throughput,latency,memory",
                   help="comma-separated sections: throughput, latency, memory")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"throughput methods (default {','.join(METHODS)})")
    p.add_argument("--range-limit", type=int, default=200_000,
                   help="skip the _id-range direct loop above this many documents")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size for apply/pipeline (default: the migration's) and the "
                        "direct loops (default 1000)")
    p.add_argument("--partitions", type=int, default=6, help="topic partitions (default 6)")
    p.add_argument("--latency-rate", type=float, default=200.0, help="inserts per second")
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--latency-warmup", type=float, default=5.0,
                   help="seconds of writes at the same rate before the measured ones")
    p.add_argument("--memory-sizes", default=None,
                   help="two sizes, e.g. 20000,200000 (default: --docs/10,--docs)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds one pipeline run may take before it counts as failed "
                        "(default: 300 s per 100,000 documents, at least 240)")
    p.add_argument("--warmup", type=int, default=20_000,
                   help="documents of an unmeasured warm-up run of the server (0: none)")
    p.add_argument("--pause", type=float, default=1.0,
                   help="seconds to let the server settle after seeding (default 1)")
    p.add_argument("--truncate-history", action="store_true",
                   help="after each measurement, drop the local server's change history "
                        "(test-only command; never against shared services in use)")
    p.add_argument("--output", default=str(ROOT / "bench" / "results"),
                   help="directory for the JSON results (default bench/results)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.timeout is None:
        args.timeout = max(240.0, args.docs / 100_000 * 300)
    sections = [s for s in args.only.split(",") if s]
    bench = Bench(args)
    results: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_before": os.getloadavg()},
        "args": {k: v for k, v in vars(args).items()},
        "targets": TARGETS,
    }
    try:
        if "throughput" in sections:
            print(f"throughput: {args.docs:,} documents, {args.repeat} round(s)", flush=True)
            results["throughput"] = throughput(bench)
        if "latency" in sections:
            print(f"latency: {args.latency_rate:.0f} inserts/s for {args.latency_seconds:.0f} s",
                  flush=True)
            results["latency"] = latency(bench)
        if "memory" in sections:
            print("memory: peak RSS of backfill and consume processes", flush=True)
            results["memory"] = memory(bench)
    finally:
        bench.close()
    results["machine"]["loadavg_after"] = os.getloadavg()
    text = table(results)
    print()
    print(text)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"bench-{stamp}-{args.docs}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
