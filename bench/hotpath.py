"""CPU per document of the applier's hot path, decoded documents vs raw BSON (issue 27).

For the benchmark's migration (split ``fullName``; bench/run.py), on documents of the
benchmark's shape read raw from the local server, in this one process:

* ``old``: each document decoded to a dict with the tool's codec (what a scan with the tool's
  client did), then decided and written as today's code does for a dict (``decide``, the size
  bound, ``UpdateOne``, ``bulk_write``);
* ``new``: the raw document decided without decoding it (only the fields the transform
  reads), its guarded statement built as bytes and sent in ``update`` commands.

Each round seeds two fresh collections and runs both paths, in alternating order; the figures
are medians over rounds of ``time.process_time()`` per document (this process's CPU only: the
server's work is not in them). Wall-clock time on a shared machine is noise and is not shown.

    python bench/hotpath.py --docs 50000 --rounds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
import pymongo
from bson.raw_bson import RawBSONDocument

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import MIGRATION, TRANSFORM_SOURCE, make_doc  # noqa: E402

from cdc_migrator.apply.applier import Applier  # noqa: E402
from cdc_migrator.base.codec import CODEC_OPTIONS, client_options  # noqa: E402
from cdc_migrator.migration import Migration, get_migration  # noqa: E402

RAW_OPTIONS = CODEC_OPTIONS.with_options(document_class=RawBSONDocument)
BATCH = 1000


def seeded(db: Any, name: str, n: int) -> list[list[RawBSONDocument]]:
    """A fresh collection of ``n`` benchmark documents, and its documents read raw in batches
    (as ``apply``'s scan reads them)."""
    coll = db[name]
    coll.drop()
    rng = random.Random(7)
    for start in range(0, n, 10_000):
        coll.insert_many([make_doc(rng, i) for i in range(start, min(n, start + 10_000))],
                         ordered=False)
    docs = list(coll.with_options(codec_options=RAW_OPTIONS).find(sort=[("_id", 1)]))
    return [docs[i:i + BATCH] for i in range(0, len(docs), BATCH)]


def measure(applier: Applier, batches: list[list[RawBSONDocument]],
            prepare: Callable[[list[RawBSONDocument]], list[Any]]) -> tuple[float, float, int]:
    """CPU seconds deciding (``prepare`` included) and writing every batch, and the documents
    updated."""
    decide_cpu = write_cpu = 0.0
    updated = 0
    for batch in batches:
        started = time.process_time()
        decided = applier.decide_documents(prepare(batch))
        decided_at = time.process_time()
        result = applier.write(decided)
        write_cpu += time.process_time() - decided_at
        decide_cpu += decided_at - started
        updated += result.updated
    return decide_cpu, write_cpu, updated


def decoded(batch: list[RawBSONDocument]) -> list[dict[str, Any]]:
    return [bson.decode(doc.raw, CODEC_OPTIONS) for doc in batch]


def as_is(batch: list[RawBSONDocument]) -> list[RawBSONDocument]:
    return batch


PATHS = {"old": decoded, "new": as_is}


def run_round(db: Any, migration: Migration, n: int, order: list[str], number: int
              ) -> dict[str, tuple[float, float]]:
    figures = {}
    for path in order:
        batches = seeded(db, f"hotpath_{number}_{path}", n)
        applier = Applier(migration, db[f"hotpath_{number}_{path}"], None)
        decide_cpu, write_cpu, updated = measure(applier, batches, PATHS[path])
        if updated != n:
            raise SystemExit(f"{path}: {updated} of {n} documents updated")
        figures[path] = (decide_cpu / n * 1e6, write_cpu / n * 1e6)
        db.drop_collection(f"hotpath_{number}_{path}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mongodb-uri", default="mongodb://127.0.0.1:27017/?directConnection=true")
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    client: pymongo.MongoClient = pymongo.MongoClient(args.mongodb_uri, **client_options())
    db = client["cdcbench_hotpath"]
    with tempfile.TemporaryDirectory() as transforms:
        (Path(transforms) / "bench_migration.py").write_text(TRANSFORM_SOURCE)
        migration = get_migration(Path(transforms), MIGRATION)
        rounds = [run_round(db, migration, args.docs, ["old", "new"][::1 - 2 * (r % 2)], r)
                  for r in range(args.rounds)]
    client.drop_database(db.name)
    print(f"{args.docs:,} documents, {args.rounds} rounds (alternating order), "
          "client CPU µs per document, median [min-max]:")
    medians = {}
    for path in PATHS:
        for part, label in ((0, "decide+build"), (1, "write"), (None, "total")):
            samples = [r[path][0] + r[path][1] if part is None else r[path][part]
                       for r in rounds]
            medians[path, label] = statistics.median(samples)
            print(f"  {path:3} {label:13} {medians[path, label]:7.2f} "
                  f"[{min(samples):.2f}-{max(samples):.2f}]")
    for label in ("decide+build", "write", "total"):
        print(f"  new/old {label:13} {medians['new', label] / medians['old', label]:.2f}x")


if __name__ == "__main__":
    main()
