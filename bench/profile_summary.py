"""Where the time goes, from py-spy raw profiles: per thread, per function, per category, in
seconds and in microseconds per document.

    .venv/bin/python bench/profile_summary.py PROFILE.txt [...] --docs 300000 [--rate 100]
        [--thread REGEX] [--top 25] [--category 'label=REGEX' ...] [--no-default-categories]

A profile is what ``bench/run.py --py-spy DIR`` (or ``py-spy record -f raw --threads``)
writes: one line per distinct stack, ``thread (tid): name;frame;...;frame COUNT``, each frame
``function (file:line)``. Without ``--idle`` py-spy samples a thread only while it runs, so a
thread's samples over the rate are about its CPU seconds; with ``--idle`` they are its wall
time, waits included. A category takes a stack when one of its frames matches the category's
pattern; the categories are tried in order (the first that matches takes the stack), so put
the narrow ones first.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

# What the client does per document, narrowest first. Patterns match a frame as py-spy writes
# it, "function (path:line)".
DEFAULT_CATEGORIES = [
    ("guard: patch.guard_filter", r"^guard_filter \(.*cdc_migrator/(\w+/)?patch\.py"),
    ("statement size check: applier._too_large",
     r"^_too_large \(.*cdc_migrator/(\w+/)?applier\.py"),
    ("patch check: patch.validate_patch", r"^validate_patch \(.*cdc_migrator/(\w+/)?patch\.py"),
    ("compare: patch.same_value", r"^same_value \(.*cdc_migrator/(\w+/)?patch\.py"),
    ("the transform (user code)", r"^bench_split_full_name "),
    ("recording view: RecordingDocument", r"RecordingDocument|fields_read|_detached"),
    ("decide, the rest", r"^decide \(.*cdc_migrator/(\w+/)?patch\.py"),
    ("state writes: StateStore", r"cdc_migrator/(\w+/)?state\.py"),
    ("envelope decode: events.decode", r"^decode \(.*cdc_migrator/(\w+/)?events\.py"),
    ("envelope encode: events.RawEncoder", r"cdc_migrator/(\w+/)?events\.py"),
    ("tailer: _needs_nothing (echo check)", r"^_needs_nothing \("),
    ("kafka: producer send/flush", r"kafka/producer/"),
    ("kafka: consumer poll/fetch", r"kafka/consumer/|kafka/coordinator/"),
    ("kafka: client/network", r"kafka/"),
    ("pymongo: bulk write", r"^bulk_write \(.*pymongo|pymongo/synchronous/bulk\.py"),
    ("pymongo: find/cursor/getMore", r"pymongo/synchronous/(cursor|command_cursor|change_stream)"),
    ("pymongo: other", r"pymongo/|bson/"),
    ("apply/consumer/tailer/backfill, the rest", r"cdc_migrator/"),
    ("bench (the loop's own code)", r"bench/run\.py"),
]

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_THREAD = re.compile(r"^thread \((?P<tid>[^)]*)\): ?(?P<name>.*)$")
_LINENO = re.compile(r":\d+\)$")


def stacks(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(thread name, frames from the root to the leaf, samples) per line of a raw profile."""
    for line in path.read_text().splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        frames = match["stack"].split(";")
        thread = "?"
        head = _THREAD.match(frames[0])
        if head:
            thread = head["name"] or head["tid"]
            frames = frames[1:]
        yield thread, frames, int(match["count"])


def function(frame: str) -> str:
    """A frame without its line number: the function and its file."""
    return _LINENO.sub(")", frame)


def categorize(frames: list[str], categories: list[tuple[str, re.Pattern[str]]]) -> str:
    for label, pattern in categories:
        if any(pattern.search(f) for f in frames):
            return label
    return "other"


def summarize(paths: list[Path], docs: int, rate: float, thread_filter: str | None, top: int,
              categories: list[tuple[str, re.Pattern[str]]],
              waiting: re.Pattern[str] | None = None) -> str:
    per_thread: Counter[str] = Counter()
    waits: Counter[str] = Counter()  # per category: samples whose innermost frame waits
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    total = 0
    for path in paths:
        for thread, frames, count in stacks(path):
            if thread_filter and not re.search(thread_filter, thread):
                continue
            per_thread[thread] += count
            total += count
            if frames:
                own[function(frames[-1])] += count
            for name in {function(f) for f in frames}:
                inclusive[name] += count
            category = categorize(frames, categories)
            by_category[category] += count
            if waiting is not None and frames and waiting.search(frames[-1]):
                waits[category] += count

    def row(label: str, samples: int) -> str:
        seconds = samples / rate
        us = seconds / docs * 1e6 if docs else float("nan")
        share = samples / total * 100 if total else 0.0
        return f"  {samples:>8} {seconds:9.2f} s {share:6.1f}% {us:9.2f} us/doc  {label}"

    out = [f"{', '.join(p.name for p in paths)}: {total} samples at {rate:g}/s = "
           f"{total / rate:.2f} s" + (f", {docs:,} documents" if docs else ""), "",
           "  samples   seconds   share    per doc   thread"]
    out += [row(t, n) for t, n in per_thread.most_common()]
    out += ["", "  by category (first match, in order)"]
    for c, n in by_category.most_common():
        out.append(row(c, n) + (f"  (waiting: {waits[c] / n * 100:.0f}%)" if waiting else ""))
    out += ["", f"  top {top} functions, inclusive (the function and what it calls)"]
    out += [row(f, n) for f, n in inclusive.most_common(top)]
    out += ["", f"  top {top} functions, own time (the innermost frame)"]
    out += [row(f, n) for f, n in own.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profiles", nargs="+", type=Path)
    p.add_argument("--docs", type=int, default=0, help="documents of the run, for us/doc")
    p.add_argument("--rate", type=float, default=100.0, help="py-spy's samples per second")
    p.add_argument("--thread", default=None, help="only threads whose name matches")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--category", action="append", default=[], metavar="LABEL=REGEX",
                   help="a category, tried before the default ones")
    p.add_argument("--no-default-categories", action="store_true")
    p.add_argument("--waiting", default=None, metavar="REGEX",
                   help="innermost frames that wait (of an --idle profile), e.g. "
                        "'recv_into|receive_data|Condition.wait': each category then says how "
                        "much of it was waiting")
    args = p.parse_args(argv)
    categories: list[tuple[str, re.Pattern[str]]] = []
    for spec in args.category:
        label, sep, pattern = spec.partition("=")
        if not sep:
            print(f"--category {spec!r}: write it as LABEL=REGEX", file=sys.stderr)
            return 2
        categories.append((label, re.compile(pattern)))
    if not args.no_default_categories:
        categories += [(label, re.compile(pattern)) for label, pattern in DEFAULT_CATEGORIES]
    missing = [str(p) for p in args.profiles if not p.is_file()]
    if missing:
        print(f"no such profile: {', '.join(missing)}", file=sys.stderr)
        return 2
    print(summarize(args.profiles, args.docs, args.rate, args.thread, args.top, categories,
                    re.compile(args.waiting) if args.waiting else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
