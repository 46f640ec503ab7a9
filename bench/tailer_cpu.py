"""The tailer's CPU per change, measured in this process (issue 27): a micro-benchmark of the
capture path alone, free of the noise of the other processes of a latency run.

    .venv/bin/python bench/tailer_cpu.py [--changes 20000] [--rates 0,500,1500] [--repeat 2]
        [--profile FILE]

For each rate, a fresh database and topic. The tailer runs in a thread of this process; once it
is following the stream (its start-up is not counted), the application's inserts come from a
child process (``--rates 0``: 1,000 per ``insert_many``, as fast as they go), until the broker
acknowledged every change. The figure is this process's CPU (``time.process_time``: the
tailer's thread and the producer's network thread) over the changes, and the tailer's thread's
alone. ``--profile`` writes a cProfile of the tailer's thread of the last run. Needs the
services (MONGODB_URI, KAFKA_BOOTSTRAP_SERVERS). To compare two versions of the tool, run it
with each on PYTHONPATH, alternating. ``--collector default`` leaves Python's garbage collector
as it starts (the command sets it: base/collector.py).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import COLLECTION, MIGRATION, TRANSFORM_SOURCE  # noqa: E402
from cdc_migrator.base import collector  # noqa: E402
from cdc_migrator.base.settings import Settings  # noqa: E402
from cdc_migrator.capture.tailer import Tailer, arm  # noqa: E402
from cdc_migrator.migration import get_migration  # noqa: E402
from tests.harness import wait_for  # noqa: E402

# The application: ``count`` inserts at ``rate`` a second (0: at once), in a process of its own.
WRITER = '''\
import sys, time, pymongo
uri, db, coll = sys.argv[1:4]
count, rate = int(sys.argv[4]), float(sys.argv[5])
c = pymongo.MongoClient(uri)[db][coll]
start = time.perf_counter()
if not rate:
    for s in range(0, count, 1000):
        c.insert_many([{"n": i, "fullName": f"Ada Lovelace {i}", "email": f"ada{i}@example.com",
                        "tags": ["a", "b"], "address": {"city": "London", "zip": str(i)}}
                       for i in range(s, min(count, s + 1000))])
    sys.exit(0)
for i in range(count):
    if rate:
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
    c.insert_one({"n": i, "fullName": f"Ada Lovelace {i}", "email": f"ada{i}@example.com",
                  "tags": ["a", "b"], "address": {"city": "London", "zip": str(i)}})
'''


def measure(transforms: Path, changes: int, rate: float,
            profile: str | None) -> tuple[float, float]:
    """The process's and the tailer thread's CPU µs per change at ``rate`` (0: a backlog)."""
    name = f"tailcpu_{uuid.uuid4().hex[:8]}"
    # The local services' addresses unless named, as bench/run.py and make's targets default.
    base = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/app?directConnection=true")
    uri = base.replace("/app?", f"/{name}?") if "/app?" in base else base
    settings = Settings(mongodb_uri=uri, kafka_bootstrap_servers=os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), transforms=transforms, topic_prefix=name,
        group_prefix=name, partitions=6)
    migration = get_migration(transforms, MIGRATION)
    arm(settings, migration)
    writer = [sys.executable, "-c", WRITER, uri, settings.database_name, COLLECTION,
              str(changes), str(rate)]
    tailer = Tailer(settings, migration)
    profiler = cProfile.Profile() if profile else None

    def run() -> None:  # the profile of the tailer's thread
        if profiler:
            profiler.runcall(tailer.run)
        else:
            tailer.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    app = None
    try:
        wait_for(lambda: tailer.position is not None, 120, "the tailer to follow the stream")
        clock = time.pthread_getcpuclockid(thread.ident or 0)
        started, thread_started = time.process_time(), time.clock_gettime(clock)
        app = subprocess.Popen(writer)
        wait_for(lambda: tailer.produced >= changes, 600, "every change produced", 0.02)
        used = time.process_time() - started
        in_thread = time.clock_gettime(clock) - thread_started
    finally:
        tailer.stop()
        thread.join(60)
        if app:
            app.wait()
        settings.client.drop_database(settings.database_name)
    if profiler and profile:
        profiler.dump_stats(profile)
    return used / changes * 1e6, in_thread / changes * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=20_000)
    p.add_argument("--rates", default="0,500,1500")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--profile", default=None)
    p.add_argument("--collector", choices=("tuned", "default"), default="tuned",
                   help="Python's garbage collector as `cdc-migrator tail` sets it (tuned, "
                        "base/collector.py) or as Python starts")
    args = p.parse_args()
    tuned = collector.tuned() if args.collector == "tuned" else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, tuned:
        transforms = Path(tmp)
        (transforms / "bench_migration.py").write_text(TRANSFORM_SOURCE)
        for rate in [float(r) for r in args.rates.split(",")]:
            figures = [measure(transforms, args.changes, rate, args.profile)
                       for _ in range(args.repeat)]
            label = "backlog" if not rate else f"{rate:,.0f}/s"
            print(f"tailer CPU per change, {label}: "
                  + ", ".join(f"{f:.1f} ({t:.1f} in the tailer's thread)" for f, t in figures)
                  + " µs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
