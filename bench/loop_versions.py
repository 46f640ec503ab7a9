"""The careful loop's client CPU per document under several Python environments.

Issue 27 asked why bench/run.py's careful loop (method ``loop``, its code unchanged since
``13c077e``) took 18.3 µs of client CPU per document in phase 3 and 8.5 at ``62218eb``. This
script runs that loop, imported from bench/run.py, alone, under each interpreter given (one
venv per pymongo version, each with this package installed), alternating them round by
round. The machine is shared, so the figure is CPU per document (``time.process_time()`` of
the loop, every thread of its process, the seeding excluded), not wall clock.

    python bench/loop_versions.py --python /tmp/pm492/bin/python --python /tmp/pm4201/bin/python \
        --docs 100000 --rounds 3

Each measurement is a child process (``--one``) of the interpreter measured: it seeds a fresh
database of the benchmark's documents, runs the loop over it, prints one JSON line and drops
the database. The local server's CPU and the machine's other users are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run as bench_run  # noqa: E402


def measure_once(uri: str, docs: int) -> dict[str, Any]:
    """Seed ``docs`` documents in a new database, run the careful loop over them, measure."""
    import bson
    import pymongo

    database = f"cdcloop_{uuid.uuid4().hex[:10]}"
    settings = bench_run.Settings(mongodb_uri=bench_run.uri_for(uri, database))
    admin: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(settings.mongodb_uri)
    server_pid = bench_run.local_server_pid(uri, 27017)
    try:
        bench_run.seed(admin[database][bench_run.COLLECTION], docs)
        truncate_history(admin)  # the seeding's inserts are history nothing needs
        timeline = bench_run.Timeline()
        busy_before = bench_run.machine_busy_seconds()
        server_before = bench_run.cpu_seconds(server_pid)
        cpu_before = time.process_time()
        timeline.start()
        result = bench_run.run_loop(None, settings, bench_run.Run(docs, timeline),  # type: ignore[arg-type]
                                    bench_run.careful_filter)
        seconds = time.perf_counter() - timeline.started
        client = time.process_time() - cpu_before
        server = _delta(server_before, bench_run.cpu_seconds(server_pid))
        busy = _delta(busy_before, bench_run.machine_busy_seconds())
        if result["matched"] != docs:
            raise RuntimeError(f"the loop matched {result['matched']} of {docs} documents")
        return {
            "python": sys.version.split()[0], "pymongo": pymongo.version,
            "c_extensions": bson.has_c() and pymongo.has_c(), "docs": docs,
            "seconds": round(seconds, 3), "docs_per_s": round(docs / seconds),
            "client_us_per_doc": round(client / docs * 1e6, 2),
            "server_us_per_doc": round(server / docs * 1e6, 1) if server is not None else None,
            # Busy CPU of the whole machine not the loop's or the server's: other users.
            "others_cores": round((busy - client - (server or 0.0)) / seconds, 2)
            if busy is not None else None,
        }
    finally:
        admin.drop_database(database)
        truncate_history(admin)
        admin.close()


def truncate_history(client: Any) -> None:
    """Drop the local server's change history (a test-only command of the local server), as
    bench/run.py --truncate-history does: kept, 100,000 documents a run fill its heap."""
    import pymongo

    try:
        client.admin.command({"truncateChangeHistory": 1})
    except pymongo.errors.PyMongoError:
        pass


def _delta(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


def child(python: str, uri: str, docs: int) -> dict[str, Any]:
    """One measurement in a process of ``python``."""
    out = subprocess.run([python, __file__, "--one", "--docs", str(docs), "--uri", uri],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{python}: the measurement failed: {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["interpreter"] = python
    return result


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", action="append", default=[],
                   help="an interpreter to measure (repeat; default: this one)")
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--uri", default=os.environ.get("MONGODB_URI",
                                                   "mongodb://127.0.0.1:27017/app"))
    p.add_argument("--json", help="write every measurement to this file")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure_once(args.uri, args.docs)))
        return 0
    pythons = args.python or [sys.executable]
    runs: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        # Each round starts with the next interpreter, so none always runs first or last.
        order = pythons[round_no % len(pythons):] + pythons[:round_no % len(pythons)]
        for python in order:
            run = child(python, args.uri, args.docs)
            run["round"] = round_no + 1
            runs.append(run)
            print(f"round {run['round']} pymongo {run['pymongo']:<8} C {run['c_extensions']!s:<5}"
                  f" client {run['client_us_per_doc']:6.2f} us/doc  server "
                  f"{run['server_us_per_doc']} us/doc  {run['docs_per_s']:,} docs/s  others "
                  f"{run['others_cores']} cores", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    print("\n| interpreter | Python | pymongo | C extensions | client µs/doc | local server "
          "µs/doc | docs/s | others, cores |")
    print("|---|---|---|---|---|---|---|---|")
    for python in pythons:
        mine = [r for r in runs if r["interpreter"] == python]
        first = mine[0]
        servers = [r["server_us_per_doc"] for r in mine if r["server_us_per_doc"] is not None]
        print(f"| {python} | {first['python']} | {first['pymongo']} | {first['c_extensions']} | "
              f"{spread([r['client_us_per_doc'] for r in mine])} | "
              f"{spread(servers) if servers else '-'} | "
              f"{statistics.median(r['docs_per_s'] for r in mine):,.0f} | "
              f"{spread([r['others_cores'] or 0.0 for r in mine])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
