"""How the pipeline scales out: documents per second with 1, 2, 4 backfill workers and with
1, 2, 3 consumers, and the ratio of each to the first. Prints a table; not a timed test.

Backfill: a fresh collection of ``--docs`` old-shape documents, capture armed, then N
``cdc-migrator backfill`` processes started at once (they share the ranges); timed from their
start until the last exits (every range done). ``--threads`` runs one process with
``--workers N`` instead.

Consumers: a fresh collection, backfilled into its topic untimed; then M ``cdc-migrator
consume`` processes join the group while the migration is paused; timed from ``resume`` until
every document is migrated and the group's lag is zero.

    .venv/bin/python bench/scaleout.py [--docs 50000] [--workers 1,2,4] [--consumers 1,2,3]

Uses MONGODB_URI and KAFKA_BOOTSTRAP_SERVERS. Each measurement gets a database, topic and group
of its own, dropped afterwards. See docs/benchmarks.md (*Scaling out*) for the figures and what
limits them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo
from bson import ObjectId

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdc_migrator import api  # noqa: E402
from cdc_migrator.base import topics  # noqa: E402
from cdc_migrator.base.settings import Settings  # noqa: E402
from cdc_migrator.capture.tailer import arm  # noqa: E402

COLLECTION = "scaleout_users"
NAME = "scaleout_add_tier"
TRANSFORM = f'''\
from cdc_migrator import migration


@migration(collection="{COLLECTION}", filter={{"tier": {{"$exists": False}}}})
def {NAME}(doc, ctx):
    if "tier" not in doc:
        return {{"tier": "standard"}}
'''


def make_doc(rng: random.Random, i: int) -> dict[str, Any]:
    """A user document of about 300 bytes, ObjectId ``_id``, no ``tier``."""
    created = dt.datetime(2021, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randrange(10**8))
    return {"_id": ObjectId(), "name": f"user {i}", "email": f"user{i}@example.com",
            "age": rng.randint(18, 90), "createdAt": created, "active": rng.random() < 0.8,
            "score": round(rng.random() * 100, 2), "tags": ["a", "b"][: rng.randint(0, 2)],
            "address": {"city": rng.choice(["Oslo", "Lima", "Osaka"]), "zip": str(i % 99999)}}


def uri_for(base: str, database: str) -> str:
    head, _, tail = base.partition("://")
    hostpart, _, rest = tail.partition("/")
    query = rest.partition("?")[2]
    return f"{head}://{hostpart}/{database}" + (f"?{query}" if query else "")


class Run:
    """One measurement's database, topic and group; removed by :meth:`close`."""

    def __init__(self, args: argparse.Namespace, transforms: Path, label: str) -> None:
        tag = f"{uuid.uuid4().hex[:6]}_{label}"
        self.settings = Settings(
            mongodb_uri=uri_for(args.mongodb_uri, f"scaleout_{tag}"),
            kafka_bootstrap_servers=args.kafka, transforms=transforms,
            topic_prefix=f"scaleout-{tag}", group_prefix=f"scaleout-{tag}",
            partitions=args.partitions)
        self.procs: list[subprocess.Popen] = []
        coll = self.settings.db[COLLECTION]
        rng = random.Random(7)
        for start in range(0, args.docs, 5000):
            coll.insert_many([make_doc(rng, i) for i in range(start, min(args.docs,
                                                                          start + 5000))])
        arm(self.settings, api.load(self.settings, NAME))

    def start(self, *args: str) -> subprocess.Popen:
        env = {**os.environ, **self.settings.environment()}
        proc = subprocess.Popen([sys.executable, "-m", "cdc_migrator", *args, "-q"], env=env,
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
        settings = self.settings
        try:
            topics.delete_topics(settings, [settings.topic(COLLECTION),
                                            settings.dlq_topic(COLLECTION)])
            topics.delete_group(settings, settings.group(NAME))
        except Exception as exc:  # clean-up is best effort
            print(f"  (clean-up: {exc})", file=sys.stderr)
        settings.client.drop_database(settings.database_name)
        settings.close()


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {timeout}s")
        time.sleep(0.1)


def backfill_rate(args: argparse.Namespace, transforms: Path, workers: int) -> float:
    run = Run(args, transforms, f"b{workers}")
    try:
        started = time.perf_counter()
        if args.threads:
            procs = [run.start("backfill", NAME, "--workers", str(workers))]
        else:
            procs = [run.start("backfill", NAME) for _ in range(workers)]
        for proc in procs:
            if proc.wait(timeout=args.timeout) != 0:
                raise RuntimeError(f"backfill exited {proc.returncode}: "
                                   f"{proc.stderr.read().decode()[-2000:]}")  # type: ignore
        return args.docs / (time.perf_counter() - started)
    finally:
        run.close()


def consumer_rate(args: argparse.Namespace, transforms: Path, consumers: int) -> float:
    run = Run(args, transforms, f"c{consumers}")
    settings = run.settings
    try:
        api.backfill(settings, NAME, show_progress=False, workers=2)
        api.pause(settings, NAME)
        for _ in range(consumers):
            run.start("consume", NAME)
        group = settings.group(NAME)
        wait_for(lambda: topics.group_members(settings, group) == consumers, 120,
                 f"{consumers} consumers in the group")
        coll = settings.db[COLLECTION]
        topic = settings.topic(COLLECTION)
        started = time.perf_counter()
        api.resume(settings, NAME)
        wait_for(lambda: coll.count_documents({"tier": {"$exists": False}}, limit=1) == 0
                 and topics.group_lag(settings, topic, group).total == 0, args.timeout,
                 "every document migrated")
        return args.docs / (time.perf_counter() - started)
    finally:
        run.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--workers", default="1,2,4", help="backfill workers to try")
    parser.add_argument("--consumers", default="1,2,3", help="consumers to try")
    parser.add_argument("--threads", action="store_true",
                        help="backfill workers as threads of one process (--workers N)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--mongodb-uri", default=os.environ.get(
        "MONGODB_URI", "mongodb://127.0.0.1:27017/app?directConnection=true"))
    parser.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS",
                                                          "127.0.0.1:9092"))
    args = parser.parse_args(argv)
    pymongo.MongoClient(args.mongodb_uri, serverSelectionTimeoutMS=5000).admin.command("ping")
    transforms = Path(tempfile.mkdtemp(prefix="cdc-scaleout-"))
    (transforms / "scaleout.py").write_text(TRANSFORM)
    print(f"{args.docs:,} documents, {args.partitions} partitions, {os.cpu_count()} cores; "
          f"backfill workers as {'threads' if args.threads else 'processes'}")
    rows = []
    for label, counts, measure in (
            ("backfill workers", args.workers, backfill_rate),
            ("consumers", args.consumers, consumer_rate)):
        base = None
        for n in (int(c) for c in counts.split(",")):
            rate = measure(args, transforms, n)
            base = base or rate
            rows.append((label, n, rate, rate / base))
            print(f"  {label:>16} {n}: {rate:>8,.0f} docs/s  x{rate / base:.2f}", flush=True)
    (transforms / "scaleout.py").unlink()
    transforms.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
