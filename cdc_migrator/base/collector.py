"""Python's garbage collector set for a process that migrates documents for a long time.

Deciding a document allocates a few small objects that the collector tracks (the raw view, the
recording view, the outcome); CPython's youngest generation is collected every 700 of them, and
each collection of the oldest generation walks every object the process holds, the loaded
modules of pymongo, kafka-python and click included. On the benchmark's migration that was about
a fifth of ``apply``'s CPU per document (docs/benchmarks.md, "Issue 27, round 3").

The long-running commands (``apply``, ``tail``, ``backfill``, ``consume``, ``run`` and the
others that migrate; cli.py) run in :func:`tuned`: what is loaded by then is moved out of the
collector's sight (``gc.freeze``: modules, settings, connections live as long as the process
anyway), and the youngest generation is collected every :data:`YOUNG` allocations; the
collector is put back when the command ends. Nothing is collected less in the end: garbage
with cycles waits for the next collection, at most :data:`YOUNG` allocations later. The Python
API leaves the process's collector alone (the benchmark's in-process runs use :func:`tuned`).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Allocations of tracked objects between collections of the youngest generation (CPython:
#: 700). At about 25 per document, one collection per 800 documents or so.
YOUNG = 20_000


def tune() -> None:
    """Set this process's collector for migrating documents (see the module's text)."""
    gc.collect()  # nothing that is already garbage is frozen
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)


@contextlib.contextmanager
def tuned() -> Iterator[None]:
    """:func:`tune` for the block, the collector as it was after it."""
    threshold = gc.get_threshold()
    tune()
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
