"""Write-behind: the next chunk is decided while the last one is written.

``apply`` and the consumer both decide a chunk of documents (transforms, guards: this
process's work) and then write it (a bulk write: the server's). With one writer thread, the
server's time for the write is spent while this process decides the next chunk instead of
before it. At most two chunks are in hand, one deciding and one writing, and the chunks are
written in order, each after the one before.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from .applier import BatchResult


class WriteBehind:
    """Chunks handed to ``write`` in ``writer`` (an executor of one thread), in order; each
    result goes to ``written`` in the caller's thread once the next chunk is handed over
    (:meth:`submit`) or the caller asks (:meth:`flush`)."""

    def __init__(self, writer: Executor, write: Callable[..., BatchResult],
                 written: Callable[[BatchResult], None]) -> None:
        self.writer, self.write, self.written = writer, write, written
        self._in_flight: Future[BatchResult] | None = None

    def submit(self, *args: Any) -> None:
        """Write a decided chunk (``write(*args)``) once the chunk before it is written."""
        self.flush()
        self._in_flight = self.writer.submit(self.write, *args)

    def flush(self) -> None:
        """Wait until the chunk in flight is written (its error is raised here)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            self.written(in_flight.result())
