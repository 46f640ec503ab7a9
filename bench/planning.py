"""What planning a backfill's ranges costs, with a migration filter and without.

    .venv/bin/python bench/planning.py [--docs 1000000] [--rounds 3] [--ranges 32]

Starts a LocalMongo of its own (`tests/harness.py: start_local_mongo`, 3 GiB of heap), seeds
``--docs`` documents (``{_id, n, group}``, about 40 bytes of BSON) with ``insert_many`` in
batches of 20,000 and drops its change history, then plans the ranges of a backfill of them the
way this version does (``capture/leases.py: sample``: ``$sample`` first, the filter applied to
the sample) and the way the planner did before issue 25 (``count_documents`` of the filter, then
``$match`` before ``$sample``), each ``--rounds`` times, with the filter ``{group: 0}`` (a third
of the documents) and without. For each it prints the median wall time, the documents the
server read (``serverStatus``'s ``scannedObjects``) and the total the planner found against the
exact count. See docs/benchmarks.md for the figures.

The local server is not MongoDB: its ``$sample`` reads only the documents it picks in the same
cases as MongoDB's random cursor (the first stage, at most 5% of more than 100 documents), and
reads and shuffles everything otherwise; a ``$match`` reads every document, as a collection
scan does. The documents read are the comparable figure; the times are this server's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdc_migrator.capture.leases import SAMPLES_PER_RANGE, quantiles, ranges_for, sample  # noqa: E402
from tests.harness import scanned_objects, start_local_mongo, stop_local_mongo  # noqa: E402

BATCH = 20_000
FILTER = {"group": 0}


def seed(coll: Any, n: int) -> float:
    started = time.monotonic()
    for start in range(0, n, BATCH):
        coll.insert_many([{"_id": i, "n": i, "group": i % 3}
                          for i in range(start, min(n, start + BATCH))], ordered=False)
    return time.monotonic() - started


def plan_now(coll: Any, condition: dict | None, most: int) -> tuple[int, int]:
    """This version's planning: (total, split points)."""
    found = sample(coll, condition, most * SAMPLES_PER_RANGE)
    return found.total, len(quantiles(found.ids, ranges_for(found.total, most)))


def plan_before(coll: Any, condition: dict | None, most: int) -> tuple[int, int]:
    """The planning before issue 25: the filter counted, then ``$match`` before ``$sample``."""
    total = coll.count_documents(condition) if condition else coll.estimated_document_count()
    parts = ranges_for(total, most)
    stages: list[dict] = [{"$match": condition}] if condition else []
    stages += [{"$sample": {"size": parts * SAMPLES_PER_RANGE}}, {"$project": {"_id": 1}},
               {"$sort": {"_id": 1}}]
    return total, len(quantiles([d["_id"] for d in coll.aggregate(stages)], parts))


def measure(client: Any, coll: Any, plan: Any, condition: dict | None, most: int,
            rounds: int) -> dict:
    seconds, read, totals = [], [], []
    for _ in range(rounds):
        before = scanned_objects(client)
        started = time.perf_counter()
        total, _points = plan(coll, condition, most)
        seconds.append(time.perf_counter() - started)
        read.append(scanned_objects(client) - before)
        totals.append(total)
    return {"seconds": statistics.median(seconds), "read": int(statistics.median(read)),
            "total": int(statistics.median(totals))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ranges", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        proc, client = start_local_mongo(Path(home), heap="3g")
        try:
            coll = client.bench.items
            seeded = seed(coll, args.docs)
            client.admin.command({"truncateChangeHistory": 1})
            print(f"seeded {args.docs:,} documents in {seeded:.1f} s", flush=True)
            exact = {"without": args.docs, "with": coll.count_documents(FILTER)}
            rows = []
            for label, condition in (("without", None), ("with", FILTER)):
                for way, plan in (("before issue 25", plan_before), ("now", plan_now)):
                    found = measure(client, coll, plan, condition, args.ranges, args.rounds)
                    rows.append((label, way, found, exact[label]))
                    print(label, way, found, flush=True)
        finally:
            stop_local_mongo(proc, client)
    print(f"\n| filter | planner | wall time (median of {args.rounds}) | documents read | "
          "total found | exact |")
    print("|---|---|---:|---:|---:|---:|")
    for label, way, found, exact_total in rows:
        print(f"| {label} | {way} | {found['seconds']:.3f} s | {found['read']:,} | "
              f"{found['total']:,} | {exact_total:,} |")


if __name__ == "__main__":
    main()
