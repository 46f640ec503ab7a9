"""What `cdc-migrator census` costs: documents per second and peak memory, at two sizes.

    .venv/bin/python bench/census.py [--docs 1000000] [--small 100000] [--mongodb-uri URI]
                                     [--truncate-history]

Seeds a collection of people (``full_name``, ``age``, a nested ``address``, a ``tags`` array,
a date; about 170 bytes of BSON) with a few rare shapes among them, with ``insert_many`` in
batches of 20,000, then runs ``cdc-migrator census split_full_name --json`` as a process on
the first ``--small`` documents' collection and on the whole ``--docs`` one, and reports wall
time, documents per second and the process's peak RSS (``wait4``). Each size gets a database of
its own, dropped afterwards. See docs/benchmarks.md for the figures.

``--truncate-history`` drops the local server's change history after seeding (a test-only
command of the local server): 1,000,000 inserts otherwise stay in its heap as history. Never
use it against services others use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pymongo
from bson import Int64

ROOT = Path(__file__).resolve().parent.parent
BATCH = 20_000
CITIES = ["Oslo", "Lima", "Pune", "Kyiv", "Graz", "Nice", "Cork", "Baku"]


def person(i: int) -> dict:
    doc = {"_id": i, "full_name": f"Given{i % 9973} Family{i % 7919}", "age": i % 90,
           "address": {"city": CITIES[i % len(CITIES)], "zip": 10_000 + i % 89_999},
           "tags": ["a", "b"] if i % 3 else [], "created": dt.datetime(2024, 1, 1) +
           dt.timedelta(seconds=i)}
    # A few rare shapes, as real collections have them.
    if i % 100_003 == 7:
        del doc["address"]
    if i % 250_007 == 11:
        doc["age"] = Int64(doc["age"])
    if i % 333_331 == 13:
        doc["full_name"] = None
    return doc


def seed(coll, n: int) -> float:
    started = time.monotonic()
    for start in range(0, n, BATCH):
        coll.insert_many([person(i) for i in range(start, min(n, start + BATCH))],
                         ordered=False)
    return time.monotonic() - started


def run_census(uri: str, env: dict[str, str]) -> dict:
    full_env = {**os.environ, **env, "CDC_MIGRATOR_MONGODB_URI": uri,
                "CDC_MIGRATOR_TRANSFORMS": str(ROOT / "transforms")}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "cdc_migrator", "census", "split_full_name", "--json",
         "--batch-size", "5000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=full_env, cwd=ROOT)
    out = process.stdout.read() if process.stdout else b""
    err = process.stderr.read() if process.stderr else b""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"census failed ({code}): {err.decode()[-500:]}")
    report = json.loads(out)
    return {"exit": code, "seconds": round(seconds, 2), "documents": report["documents"],
            "shapes": len(report["shapes"]), "bad_shapes": report["bad_shapes"],
            "docs_per_second": round(report["documents"] / seconds),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--mongodb-uri", default=os.environ.get(
        "MONGODB_URI", "mongodb://127.0.0.1:27017/app?directConnection=true"))
    parser.add_argument("--truncate-history", action="store_true")
    args = parser.parse_args()
    client = pymongo.MongoClient(args.mongodb_uri)
    results = []
    for n in (args.small, args.docs):
        name = f"bench_census_{uuid.uuid4().hex[:8]}"
        try:
            seeded = seed(client[name].people, n)
            if args.truncate_history:
                client.admin.command({"truncateChangeHistory": 1})
            head, _, tail = args.mongodb_uri.partition("://")
            host, _, rest = tail.partition("/")
            query = rest.partition("?")[2]
            uri = f"{head}://{host}/{name}" + (f"?{query}" if query else "")
            result = {"size": n, "seed_seconds": round(seeded, 1), **run_census(uri, {})}
        finally:
            client.drop_database(name)
        print(json.dumps(result), flush=True)
        results.append(result)
    print("\n| documents | shapes | census wall time | documents/s | census CPU | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['documents']:,} | {r['shapes']} | {r['seconds']:.1f} s | "
              f"{r['docs_per_second']:,} | {r['cpu_seconds']:.1f} s | "
              f"{r['peak_rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
