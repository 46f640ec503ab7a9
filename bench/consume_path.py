"""What the consumer's batch applier costs per document before the applier decides: decoding
a poll's envelopes and the per-batch bookkeeping, old code against new, in one process.

    .venv/bin/python bench/consume_path.py [--docs 50000] [--rounds 3] [--baseline REV]

The old code is ``cdc_migrator/apply/batch.py`` and ``cdc_migrator/core/events.py`` as of
``--baseline`` (a git revision, default the commit before issue 27's consumer change), loaded
from git beside today's. Both run over the same records: backfill records made by
``RawEncoder.snapshot_batch`` (documents grouped up to the scanner's 512 KiB a record) and
change records made by ``RawEncoder.change`` (one per document, with its full document), of
``--docs`` documents of bench/run.py's shape (11 fields, about 300 bytes). The applier is a
stand-in that decides nothing, so only the batch applier's own work is measured, twice: as is
(``decode+bookkeeping``), and with two fields of every document then read (``+read 2 fields``:
``_id`` and ``fullName``, what ``decide`` and bench/run.py's transform read first). A raw
document read as a mapping is decoded whole then, as the applier of this commit does; an
applier that decodes only the fields the transform reads pays less.

Prints CPU microseconds per document (``time.process_time``, medians of the alternating
rounds) and the ratio new/old. No services needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from kafka import TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import make_doc  # noqa: E402
from cdc_migrator.apply import applier as applier_module  # noqa: E402
from cdc_migrator.apply import batch as new_batch  # noqa: E402
from cdc_migrator.base.codec import CODEC_OPTIONS  # noqa: E402
from cdc_migrator.capture.backfill import RECORD_BYTES  # noqa: E402
from cdc_migrator.core import events  # noqa: E402

BASELINE = "aefda4e"  # the branch point of issue 27's consumer change
RAW = CODEC_OPTIONS.with_options(document_class=RawBSONDocument)


class Record:
    __slots__ = ("key", "offset", "value")

    def __init__(self, key: bytes, value: bytes, offset: int) -> None:
        self.key, self.value, self.offset = key, value, offset


class StandIn:
    """Applier, throttle and retrier that cost nothing: what remains is the batch applier."""

    last_write_seconds = None
    read = False

    def decide_ids(self, ids: list[Any], images: dict[Any, Any]) -> Any:
        if self.read:
            for image in images.values():
                if image is not None:
                    image["_id"], image["fullName"]
        return applier_module.Decided(applier_module.BatchResult(seen=len(ids)), [], [])

    def write(self, decided: Any) -> Any:
        return decided.result

    def chunk(self, most: int) -> int:
        return most

    def spend(self, n: int) -> None:
        pass

    def note_write(self, seconds: Any) -> None:
        pass

    def call(self, service: str, fn: Any, *args: Any) -> Any:
        return fn(*args)


def load_baseline(rev: str) -> types.ModuleType:
    """batch.py as of ``rev``, its events module as of ``rev`` too."""
    def source(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True,
                              capture_output=True, text=True).stdout

    modules = {}
    for name, path in (("events", "cdc_migrator/core/events.py"),
                       ("batch", "cdc_migrator/apply/batch.py")):
        package = "cdc_migrator.core" if name == "events" else "cdc_migrator.apply"
        spec = importlib.util.spec_from_loader(f"{package}._baseline_{name}", loader=None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__package__ = package
        code = source(path)
        if name == "batch":  # its `events` is the baseline's
            code = code.replace("from ..core import deadletters, events",
                                "from ..core import deadletters\n"
                                "from ..core import _baseline_events as events")
        sys.modules[spec.name] = module
        exec(compile(code, path, "exec"), module.__dict__)  # noqa: S102
        modules[name] = module
    return modules["batch"]


def make_records(docs: int) -> dict[str, list[Record]]:
    rng = random.Random(7)
    raw = [RawBSONDocument(bson.encode(make_doc(rng, i), codec_options=CODEC_OPTIONS), RAW)
           for i in range(docs)]
    encoder = events.RawEncoder("bench", "app", "users")
    backfill: list[Record] = []
    group: list[Any] = []
    size = 0
    for doc in raw:
        group.append(doc)
        size += len(doc.raw)
        if size >= RECORD_BYTES:
            backfill.append(Record(*encoder.snapshot_batch(group), len(backfill)))
            group, size = [], 0
    if group:
        backfill.append(Record(*encoder.snapshot_batch(group), len(backfill)))
    token = RawBSONDocument(bson.encode({"_data": "8266A1B2C3000000072B022C0100296E5A1004"}), RAW)
    change = []
    for n, doc in enumerate(raw):
        event = {"_id": token, "operationType": "update", "documentKey": {"_id": doc["_id"]},
                 "fullDocument": doc, "clusterTime": bson.Timestamp(1_700_000_000, n)}
        change.append(Record(*encoder.change(event), n))
    return {"backfill": backfill, "change": change}


def measure(module: types.ModuleType, records: list[Record], read: bool) -> float:
    """CPU seconds of one pass of ``module``'s BatchApplier over ``records``, in polls of 2,000
    records (the consumer's max_records)."""
    stand_in = StandIn()
    stand_in.read = read
    migration = types.SimpleNamespace(name="bench")
    tp = TopicPartition("bench", 0)
    with ThreadPoolExecutor(1) as writer:
        applier = module.BatchApplier(migration, stand_in, stand_in, retry=stand_in,
                                      write_retry=stand_in, writer=writer)
        started = time.process_time()
        for at in range(0, len(records), 2000):
            applier.apply({tp: records[at:at + 2000]})
        return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE)
    args = parser.parse_args()
    old = load_baseline(args.baseline)
    records = make_records(args.docs)
    print(f"{args.docs:,} documents; old = {args.baseline}, new = the working tree; "
          f"CPU µs per document, median of {args.rounds} alternating rounds")
    print(f"{'records':<10}{'measured':<22}{'old':>8}{'new':>8}{'new/old':>9}")
    for kind, recs in records.items():
        for read in (False, True):
            times: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.rounds):
                for label, module in (("old", old), ("new", new_batch)):
                    times[label].append(measure(module, recs, read) / args.docs * 1e6)
            o, n = statistics.median(times["old"]), statistics.median(times["new"])
            what = "+read 2 fields" if read else "decode+bookkeeping"
            print(f"{kind:<10}{what:<22}{o:8.2f}{n:8.2f}{n / o:9.2f}")


if __name__ == "__main__":
    main()
