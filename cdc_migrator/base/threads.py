"""Running pieces of work in threads of one process: the one thread runner of the tool.

A long-lived piece (a tailer, a group member, a backfill worker, a recovery backfill) runs in
a named daemon thread of :class:`Threads`, which keeps the first error of any of them for the
caller to raise, and may set a ``stop`` event then, so that the others stop too.
:func:`run_until_stopped` runs pieces with ``run``/``stop`` methods until asked to stop:
``cdc-migrator tail`` and ``cdc-migrator consume``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar


class Threads:
    """Callables run in named daemon threads; what they raise is kept, not lost.

    A target that raises has its error recorded (:attr:`errors`, in the order they came),
    then its own ``on_error`` called with it, then ``stop`` set when one was given.
    """

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, name: str, target: Callable[[], Any], *,
              on_error: Callable[[BaseException], None] | None = None) -> threading.Thread:
        """Run ``target()`` in a new daemon thread called ``name``, started now."""
        thread = self.new(name, target, on_error=on_error)
        thread.start()
        return thread

    def new(self, name: str, target: Callable[[], Any], *,
            on_error: Callable[[BaseException], None] | None = None) -> threading.Thread:
        """The thread of :meth:`start`, not started yet: for a caller that must know it before
        it runs."""
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # kept for the caller, raised in its thread
                with self._lock:
                    self.errors.append(exc)
                if on_error is not None:
                    on_error(exc)
                if self.stop is not None:
                    self.stop.set()

        thread = threading.Thread(target=run, daemon=True, name=name)
        self._threads.append(thread)
        return thread

    def alive(self) -> bool:
        """Whether any of the threads still runs."""
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float | None = None) -> None:
        """Wait for each thread, up to ``timeout`` seconds each."""
        for thread in self._threads:
            thread.join(timeout=timeout)

    def raise_first(self) -> None:
        """Raise the first error a target raised, if any did."""
        if self.errors:
            raise self.errors[0]


class Piece(Protocol):
    def run(self) -> Any: ...

    def stop(self) -> None: ...


P = TypeVar("P", bound=Piece)


def run_until_stopped(pieces: Sequence[P], stop: threading.Event, *, name: Callable[[P], str],
                      join_timeout: float,
                      on_error: Callable[[P, BaseException], None] | None = None) -> None:
    """Run each piece in a thread of its own until ``stop`` is set, then stop them all and
    wait up to ``join_timeout`` s for each. A piece that fails sets ``stop`` (so the others
    stop too, after ``on_error`` saw the error), and the first error is raised here."""
    threads = Threads(stop)
    for piece in pieces:
        seen = None if on_error is None else _bound(on_error, piece)
        threads.start(name(piece), piece.run, on_error=seen)
    stop.wait()
    for piece in pieces:
        piece.stop()
    threads.join(join_timeout)
    threads.raise_first()


def _bound(on_error: Callable[[P, BaseException], None],
           piece: P) -> Callable[[BaseException], None]:
    return lambda exc: on_error(piece, exc)
