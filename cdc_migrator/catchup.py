"""Catching up for ``cutover`` when the pipeline does not run.

After ``run`` finished (or the always-on services were stopped), nothing forwards the
cutover's fence or applies the events before it. ``cutover`` then runs, in its own process and
only while it waits, the pieces that are missing: a tailer from the saved resume token and a
member of the consumer group from the committed offsets. Beside running services it starts
nothing. Either way the fence travels the whole path, so it still proves that everything
before it was applied.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .apply.consumer import TransformConsumer, group_id
from .base import topics
from .base.settings import Settings
from .capture.tailer import HEARTBEAT_STALE_AFTER, Tailer
from .migration import Migration

log = logging.getLogger("cdc_migrator.cutover")

@dataclass
class CatchUp:
    """What cutover started itself, and how those pieces ended."""

    started: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def note(self) -> str | None:
        if not self.started:
            return None
        return (f"No {' or '.join(self.started)} was running: cutover caught up itself from "
                "the saved positions.")


def tailer_running(state: dict[str, Any]) -> bool:
    """A heartbeat as fresh as ``status`` wants it, and after the last clean stop (a tailer
    records that, so the one of a finished ``run`` does not count)."""
    tail = state.get("tail") or {}
    heartbeat, stopped = tail.get("heartbeat"), tail.get("stopped_at")
    return heartbeat is not None and time.time() - heartbeat < HEARTBEAT_STALE_AFTER \
        and (stopped is None or heartbeat > stopped)


def consumers_running(settings: Settings, migration: Migration) -> bool:
    return topics.group_members(settings, group_id(settings, migration)) > 0


@contextlib.contextmanager
def catching_up(settings: Settings, migration: Migration,
                state: dict[str, Any]) -> Iterator[CatchUp]:
    """Run a tailer and a consumer in threads while in the block, each only if none runs."""
    outcome = CatchUp()
    pieces: list[tuple[str, Any]] = []
    if not tailer_running(state):
        pieces.append(("tailer", Tailer(settings, migration)))
    if not consumers_running(settings, migration):
        pieces.append(("consumer", TransformConsumer(settings, migration)))
    threads = []
    for name, piece in pieces:
        log.info("no %s is running: cutover runs one until its fence has passed", name)
        outcome.started.append(name)
        thread = threading.Thread(target=_reporting(name, piece.run, outcome), daemon=True,
                                  name=f"cutover-{name}")
        thread.start()
        threads.append(thread)
    try:
        yield outcome
    finally:
        for _, piece in pieces:
            piece.stop()  # each saves its position: the tailer its token, the consumer offsets
        for thread in threads:
            thread.join(timeout=60)


def _reporting(name: str, run: Callable[[], Any], outcome: CatchUp) -> Callable[[], None]:
    def target() -> None:
        try:
            run()
        except Exception as exc:  # reported as a reason the cutover is refused
            outcome.errors.append(f"the {name} cutover started failed: {exc}")
    return target
