"""`apply`'s client CPU per document in this process, by hot path and collector (issue 27).

    .venv/bin/python bench/apply_cpu.py [--docs 50000] [--repeat 2]

Each run seeds a fresh collection of the benchmark's documents (bench/run.py) and migrates it
with ``apply_migration``, as ``cdc-migrator apply`` does, in a child process of its own, once
for each of the four combinations, alternating: the raw-BSON hot path compiled or in Python
(``CDC_MIGRATOR_PURE_PYTHON=1``), and Python's garbage collector as the command sets it
(base/collector.py) or as Python starts. The figure is the child's CPU (``time.process_time``:
every thread) over the documents, seeding excluded. Needs the services (MONGODB_URI).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = '''\
import contextlib, os, random, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/bench")
import pymongo
from run import COLLECTION, MIGRATION, TRANSFORM_SOURCE, make_doc
from cdc_migrator.apply.shortcut import apply_migration
from cdc_migrator.base import collector
from cdc_migrator.base.settings import Settings
from cdc_migrator.migration import get_migration
uri, docs, tuned = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "tuned"
transforms = Path(tempfile.mkdtemp())
(transforms / "bench_migration.py").write_text(TRANSFORM_SOURCE)
migration = get_migration(transforms, MIGRATION)
name = "apply_cpu_%d" % os.getpid()
client = pymongo.MongoClient(uri.replace("/app?", "/%s?" % name))
coll = client[name][COLLECTION]
rng = random.Random(7)
for start in range(0, docs, 10_000):
    coll.insert_many([make_doc(rng, i) for i in range(start, min(docs, start + 10_000))])
settings = Settings(mongodb_uri=uri.replace("/app?", "/%s?" % name),
                    kafka_bootstrap_servers="127.0.0.1:9092", transforms=transforms)
started = time.process_time()
with collector.tuned() if tuned else contextlib.nullcontext():
    apply_migration(settings, migration, show_progress=False)
used = time.process_time() - started
client.drop_database(name)
print(used / docs * 1e6)
'''

KINDS = [("compiled", "tuned"), ("python", "tuned"), ("compiled", "default"),
         ("python", "default")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    uri = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/app?directConnection=true")
    figures: dict[tuple[str, str], list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.repeat):
        for path, gc in KINDS:
            env = dict(os.environ)
            env.pop("CDC_MIGRATOR_PURE_PYTHON", None)
            if path == "python":
                env["CDC_MIGRATOR_PURE_PYTHON"] = "1"
            out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), uri, str(args.docs),
                                  gc], env=env, capture_output=True, text=True, check=True)
            figures[path, gc].append(float(out.stdout.strip().splitlines()[-1]))
    print(f"apply, client CPU µs per document ({args.docs:,} documents; each run, then the "
          "median):")
    for (path, gc), runs in figures.items():
        print(f"  {path:8} hot path, collector {gc:7}: "
              + ", ".join(f"{r:.1f}" for r in runs) + f"  -> {statistics.median(runs):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
