"""The shared test harness itself: what it does without any service."""

from __future__ import annotations

import random
import sys

import pytest

from ..harness import AppWriter, CliProcess, pick, poll, wait_for


def test_pick_near_a_position_past_the_last_id_gives_none_instead_of_raising():
    rng = random.Random(1)
    ids = range(5000)
    # The scan passed the last user: nothing lies ahead of it (this raised "empty range for
    # randrange" in the application writer of test_apply, and killed it).
    assert pick(rng, ids, 5000, 5249) is None
    assert pick(rng, ids, 4999, 5248) == 4999
    assert {pick(rng, ids, 4990, 5239) for _ in range(200)} == set(range(4990, 5000))
    assert pick(rng, range(0), 0, 10) is None and pick(rng, []) is None
    assert pick(rng, [3, 9, 12], 4, 11) == 9
    assert pick(rng, {7: "x"}) == 7


def test_a_writer_that_died_fails_when_it_is_finished():
    class Broken(AppWriter):
        def write(self) -> bool:
            if self.ops == 3:
                raise ValueError("the application's write failed")
            return True

    writer = Broken(random.Random(1))
    writer.start()
    writer.join(10)
    with pytest.raises(AssertionError, match="the application writer failed: ValueError"):
        writer.finish()
    assert writer.ops == 3


def test_wait_for_returns_the_first_true_result_and_names_what_never_came():
    results = iter([0, None, [], "done", "later"])
    assert wait_for(lambda: next(results), timeout=5, interval=0) == "done"
    seen = []
    with pytest.raises(AssertionError, match=r"the thing \(last: 0\) not reached within 0.05s"):
        wait_for(lambda: seen.append(0), timeout=0.05, interval=0.01,
                 what=lambda: f"the thing (last: {len(seen) and 0})")
    assert len(seen) >= 2, "polled until the timeout"
    assert poll(lambda: 0, timeout=0.02, interval=0.01) == 0


def test_a_background_command_collects_its_log_and_exit_code():
    with CliProcess(None, "--no-such-option") as proc:
        code = proc.wait(timeout=60)
    assert code == 2
    assert proc.count("No such option") == 1, proc.log
    assert not proc.alive and proc.returncode == 2
    assert sys.executable in proc.proc.args
