"""Long-lived pieces (one tailer or one group member per migration) run in threads of one
process until asked to stop: ``cdc-migrator tail`` and ``cdc-migrator consume``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar


class Piece(Protocol):
    def run(self) -> Any: ...

    def stop(self) -> None: ...


P = TypeVar("P", bound=Piece)


def run_until_stopped(pieces: Sequence[P], stop: threading.Event, *, name: Callable[[P], str],
                      join_timeout: float,
                      on_error: Callable[[P, Exception], None] | None = None) -> None:
    """Run each piece in a thread of its own until ``stop`` is set, then stop them all and
    wait up to ``join_timeout`` s for each. A piece that fails sets ``stop`` (so the others
    stop too, after ``on_error`` saw the error), and the first error is raised here."""
    errors: list[Exception] = []

    def run(piece: P) -> None:
        try:
            piece.run()
        except Exception as exc:  # raised again below, in the caller's thread
            errors.append(exc)
            if on_error is not None:
                on_error(piece, exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(p,), daemon=True, name=name(p))
               for p in pieces]
    for thread in threads:
        thread.start()
    stop.wait()
    for piece in pieces:
        piece.stop()
    for thread in threads:
        thread.join(timeout=join_timeout)
    if errors:
        raise errors[0]
