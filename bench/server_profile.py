"""Where the local server's CPU goes, from a Java Flight Recorder file: the samples by kind of
work (updates, the change stream's echo checks, the scan, BSON in and out, ...).

    jcmd $(cat .services/mongo.pid) JFR.start name=b settings=profile filename=/tmp/b.jfr
    .venv/bin/python bench/run.py --only throughput --methods pipeline_procs --repeat 1 ...
    jcmd $(cat .services/mongo.pid) JFR.stop name=b
    .venv/bin/python bench/server_profile.py /tmp/b.jfr

Needs the JDK's ``jfr`` tool. Inserts are reported apart: in a benchmark run they are the
seeding, which is not measured. A sample goes to the first kind whose frames it holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter

# (label, frames that must all appear, outermost first, each a substring of "Class.method")
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("seeding inserts (not measured)", ("commandInsert",)),
    ("change stream: echo checks while a getMore awaits", ("hasDeliverable",)),
    ("change stream: batches", ("takeDocuments",)),
    ("updates: the change events recorded", ("ChangeStreamOplog.handleUpdate",)),
    ("updates: the filter or guard matched", ("updateDocuments", "queryDocuments")),
    ("updates: the filter or guard matched", ("matchPosition",)),
    ("updates: applied, copied and sized", ("updateDocument",)),
    ("updates: the rest", ("commandUpdate",)),
    ("the scan: find and getMore", ("commandFind",)),
    ("the scan: find and getMore", ("handleGetMore",)),
    ("aggregate (counts, $sample)", ("commandAggregate",)),
    ("findAndModify (leases, state)", ("findAndModify",)),
    ("requests decoded (BSON in)", ("BsonDecoder",)),
    ("requests decoded (BSON in)", ("decodeRemovalReentryProtection",)),
    ("replies encoded (BSON out)", ("BsonEncoder",)),
    ("history truncated (--truncate-history)", ("truncate",)),
    ("collation checks", ("Collations",)),
]


def stacks(path: str) -> list[list[str]]:
    out = subprocess.run(["jfr", "print", "--json", "--stack-depth", "96", "--events",
                          "jdk.ExecutionSample", path], capture_output=True, text=True,
                         check=True).stdout
    result = []
    for event in json.loads(out)["recording"]["events"]:
        frames = event["values"]["stackTrace"]["frames"]
        result.append([f"{f['method']['type']['name'].rsplit('/', 1)[-1]}.{f['method']['name']}"
                       for f in reversed(frames)])
    return result


def kind_of(stack: list[str]) -> str:
    for label, wanted in KINDS:
        at = 0
        for part in wanted:
            found = next((i for i in range(at, len(stack)) if part in stack[i]), None)
            if found is None:
                break
            at = found + 1
        else:
            return label
    return "other (the network, the JVM)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jfr", nargs="+")
    args = p.parse_args(argv)
    for path in args.jfr:
        counts = Counter(kind_of(s) for s in stacks(path))
        seeding = counts.pop("seeding inserts (not measured)", 0)
        measured = sum(counts.values())
        print(f"{path}: {measured} samples measured ({seeding} of seeding left out)")
        for label, n in counts.most_common():
            print(f"  {n:6d}  {100 * n / max(measured, 1):5.1f}%  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
