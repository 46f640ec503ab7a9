"""The one thread runner: targets in named threads, their errors kept; pieces in threads until
stopped (``tail`` and ``consume`` run their migrations so)."""

from __future__ import annotations

import threading

import pytest

from cdc_migrator.base.threads import Threads, run_until_stopped


class Piece:
    def __init__(self, name: str, fail: Exception | None = None) -> None:
        self.name, self.fail = name, fail
        self.stopping = threading.Event()
        self.thread = ""

    def run(self) -> None:
        self.thread = threading.current_thread().name
        if self.fail is not None:
            raise self.fail
        self.stopping.wait(10)

    def stop(self) -> None:
        self.stopping.set()


def test_every_piece_runs_in_its_named_thread_until_stop_is_set():
    pieces = [Piece("a"), Piece("b")]
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()

    run_until_stopped(pieces, stop, name=lambda p: f"piece-{p.name}", join_timeout=5)

    assert [p.thread for p in pieces] == ["piece-a", "piece-b"]
    assert all(p.stopping.is_set() for p in pieces)


def test_a_failing_piece_stops_the_others_and_its_error_is_raised_after_on_error_saw_it():
    boom = RuntimeError("boom")
    pieces = [Piece("ok"), Piece("bad", fail=boom)]
    seen = []

    with pytest.raises(RuntimeError, match="boom"):
        run_until_stopped(pieces, threading.Event(), name=lambda p: p.name, join_timeout=5,
                          on_error=lambda p, exc: seen.append((p.name, exc)))

    assert seen == [("bad", boom)]
    assert pieces[0].stopping.is_set()


def test_a_target_that_raises_is_kept_for_the_caller_and_sets_stop_after_its_on_error():
    stop = threading.Event()
    threads = Threads(stop)
    seen = []
    boom = ValueError("boom")

    def fail() -> None:
        raise boom

    threads.start("fine", lambda: None)
    thread = threads.start("failing", fail, on_error=lambda exc: seen.append(stop.is_set()))
    threads.join(timeout=5)

    assert thread.name == "failing" and not threads.alive()
    assert threads.errors == [boom] and seen == [False] and stop.is_set()
    with pytest.raises(ValueError, match="boom"):
        threads.raise_first()


def test_targets_that_return_leave_nothing_to_raise():
    threads = Threads()
    threads.start("a", lambda: None)
    threads.join(timeout=5)
    assert threads.errors == []
    threads.raise_first()
