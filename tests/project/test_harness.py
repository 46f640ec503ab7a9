"""The shared test harness itself: what it does without any service."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from .. import harness
from ..harness import ROOT, AppWriter, CliProcess, pick, poll, uri_for, wait_for


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


INNER_SESSION = textwrap.dedent('''
    import os
    from pathlib import Path

    from tests.harness import CliProcess, wait_for

    PID = Path(__file__).with_name("pid")
    NOWHERE = {"CDC_MIGRATOR_MONGODB_URI": "mongodb://127.0.0.1:1/app?directConnection=true",
               "CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


    def test_fails_with_its_command_running():
        tail = CliProcess(None, "tail", "split_full_name", env=NOWHERE)  # retries for minutes
        PID.write_text(str(tail.proc.pid))
        wait_for(lambda: tail.count("tailing split_full_name"), what="the tailer started")
        assert False, "failed before it stopped its command"


    def test_the_command_is_gone():
        try:
            os.kill(int(PID.read_text()), 0)
        except ProcessLookupError:
            return
        raise AssertionError("the failed test's command outlived it")
''')


def test_a_background_command_does_not_outlive_the_test_that_started_it(tmp_path):
    # Regression: a test that failed before stopping its commands left them running for the
    # rest of the session, a consumer among them working on against a dropped database.
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import *  # noqa: F403 (its hooks)\n")
    (tmp_path / "test_inner.py").write_text(INNER_SESSION)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, timeout=120)
        assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
        assert "left running, killed: tail split_full_name" in result.stdout, result.stdout
    finally:
        pid = tmp_path / "pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid.read_text()), signal.SIGKILL)


def test_a_command_that_ignores_sigterm_is_killed_and_the_stop_fails():
    proc = CliProcess(None, "tail", "split_full_name",
                      env={"CDC_MIGRATOR_MONGODB_URI": "mongodb://127.0.0.1:1/app?directConnection=true"})
    wait_for(lambda: proc.count("tailing split_full_name"), what="the tailer started")
    proc.proc.send_signal(signal.SIGSTOP)  # it can act on no signal but SIGKILL now
    with pytest.raises(AssertionError, match="did not exit within 0.5s of SIGTERM; killed"):
        proc.stop(timeout=0.5)
    assert not proc.alive and proc.returncode == -signal.SIGKILL
@pytest.mark.parametrize(("base", "expected"), [
    ("mongodb://127.0.0.1:27017/app?directConnection=true",
     "mongodb://127.0.0.1:27017/t_1?directConnection=true"),
    ("mongodb://h1:1,h2:2/app?replicaSet=rs0", "mongodb://h1:1,h2:2/t_1?replicaSet=rs0"),
    # A user of a cluster brought to `make test-real` authenticates where the URI said.
    ("mongodb://u:p@h:1/app?replicaSet=rs0", "mongodb://u:p@h:1/t_1?replicaSet=rs0&authSource=app"),
    ("mongodb://u:p@h:1/?replicaSet=rs0", "mongodb://u:p@h:1/t_1?replicaSet=rs0&authSource=admin"),
    ("mongodb://u:p@h:1/app", "mongodb://u:p@h:1/t_1?authSource=app"),
    ("mongodb://u:p@h:1/app?authSource=users", "mongodb://u:p@h:1/t_1?authSource=users"),
])
def test_each_tests_database_is_the_base_uris_with_the_users_authentication_kept(
        monkeypatch, base, expected):
    monkeypatch.setattr(harness, "MONGO_BASE", base)

    assert uri_for("t_1") == expected
