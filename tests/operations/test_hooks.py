"""Hooks: a command and a webhook told of each phase change, once, with the event as JSON; a
failing hook changes nothing; the before_cutover hook may refuse a cutover, with its reason.

The first half runs the hooks against a state held in memory (pure logic, no service); the
second runs the tool's commands against the local services, as an operator would.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from bson import Timestamp

from cdc_migrator import api
from cdc_migrator.base.settings import Settings
from cdc_migrator.capture.tailer import arm
from cdc_migrator.core.state import BackfillState, MigrationState, Phase, TailState
from cdc_migrator.errors import UsageError
from cdc_migrator.operations.hooks import Hooks, occurrences

from ..harness import ROOT, CliProcess, Service, invoke, run_cli, wait_for, write_transforms

NAME = "add_default_role"

# A hook: appends what it was told (stdin, and the event from its environment) to a file, then
# says something and exits with the code its second argument names.
RECORDER = textwrap.dedent('''
    import json, os, sys
    told = json.load(sys.stdin)
    with open(sys.argv[1], "a") as out:
        out.write(json.dumps({"told": told, "env": os.environ["CDC_MIGRATOR_HOOK_EVENT"],
                              "migration": os.environ["CDC_MIGRATOR_HOOK_MIGRATION"]}) + "\\n")
    print("first line\\n" + sys.argv[3], file=sys.stderr)
    sys.exit(int(sys.argv[2]))
''')


@pytest.fixture
def recorder(tmp_path: Path):
    """``recorder(code=0, says="...")``: a hook command line that records each call in
    ``tmp_path/told.jsonl``, says ``says`` and exits ``code``."""
    script = tmp_path / "hook.py"
    script.write_text(RECORDER)

    def command(code: int = 0, says: str = "noted") -> str:
        return f"{sys.executable} {script} {tmp_path / 'told.jsonl'} {code} '{says}'"
    return command


def told(tmp_path: Path) -> list[dict[str, Any]]:
    """Every call the recorder got, in order."""
    path = tmp_path / "told.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Webhook:
    """An HTTP endpoint on a free port that keeps what is POSTed to it and answers ``code``."""

    def __init__(self, code: int = 200, answer: str = "ok") -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                length = int(self.headers["Content-Length"])
                hook.bodies.append({"type": self.headers["Content-Type"],
                                    **json.loads(self.rfile.read(length))})
                self.send_response(code)
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Claims:
    """The one operation of StateStore the hooks use, in memory, shared as the state is."""

    def __init__(self) -> None:
        self.announced: dict[tuple[str, str], str] = {}

    def claim_announcement(self, name: str, event: str, occurrence: str) -> bool:
        if self.announced.get((name, event)) == occurrence:
            return False
        self.announced[(name, event)] = occurrence
        return True


ARMED = Timestamp(1_700_000_000, 1)


def state_at(phase: Phase | None, **more: Any) -> MigrationState:
    """A migration's state as it stands in ``phase``."""
    backfill = None if phase in (None, Phase.ARMED) else BackfillState(
        total=40, scanned=40 if phase is not Phase.BACKFILLING else 10,
        done=phase is not Phase.BACKFILLING, started_at=dt.datetime(2025, 1, 1))
    tail = TailState() if phase is None else TailState(armed_at=ARMED)
    completed = dt.datetime(2025, 1, 2) if phase is Phase.CUT_OVER else None
    return MigrationState(name=NAME, collection="users", phase=phase, backfill=backfill,
                          tail=tail, completed_at=completed, **more)


def look(hooks: Hooks, claims: Any, state: MigrationState) -> None:
    """One look of a process's watch at ``state`` (its lag zero)."""
    hooks.watch(claims, state, {"phase": state.phase.label if state.phase else None,
                                "lag": {"total": 0}})


# ----------------------------------------------------------------- the hooks, in memory

def test_each_phase_change_is_told_once_in_order_with_the_event_on_stdin(tmp_path, recorder):
    hooks = Hooks(Settings(hook_command=recorder()))
    claims = Claims()
    other = Hooks(Settings(hook_command=recorder()))  # another process watching too
    hooks.baseline(NAME, None)
    other.baseline(NAME, None)
    try:
        for phase in (Phase.ARMED, Phase.BACKFILLING, Phase.CATCHING_UP, Phase.READY,
                      Phase.CUT_OVER):
            look(hooks, claims, state_at(phase))
            look(other, claims, state_at(phase))
        look(hooks, claims, state_at(Phase.CUT_OVER))  # nothing new
    finally:
        hooks.close()
        other.close()

    calls = told(tmp_path)
    assert [c["env"] for c in calls] == ["armed", "backfill_done", "ready_for_cutover",
                                         "cut_over"]
    first = calls[0]["told"]
    assert first["event"] == "armed" and first["migration"] == NAME == calls[0]["migration"]
    assert first["collection"] == "users" and first["phase"] == "armed"
    assert set(first) >= {"counts", "reason", "at", "host", "backfill", "lag", "dead_letters"}
    assert calls[1]["told"]["reason"] == "backfill finished: 40 documents scanned"


def test_a_failure_a_revert_and_new_dead_letters_are_told(tmp_path, recorder):
    hooks = Hooks(Settings(hook_command=recorder()))
    claims = Claims()
    hooks.baseline(NAME, state_at(Phase.CATCHING_UP))
    try:
        look(hooks, claims, state_at(Phase.FAILED, failure={
            "reason": "collection 'users' was dropped", "at": dt.datetime(2025, 1, 3)}))
        look(hooks, claims, state_at(Phase.CUT_OVER))
        reverted = state_at(Phase.REVERTED, reverted_at=dt.datetime(2025, 1, 4))
        reverted.completed_at = dt.datetime(2025, 1, 2)
        look(hooks, claims, reverted)
        look(hooks, claims, state_at(Phase.CATCHING_UP, dlq_pending=2, dlq_offset=0))
        look(hooks, claims, state_at(Phase.CATCHING_UP))  # `dlq retry` resolved them
        look(hooks, claims, state_at(Phase.CATCHING_UP, dlq_pending=1, dlq_offset=40))
    finally:
        hooks.close()

    calls = told(tmp_path)
    assert [c["env"] for c in calls] == ["failed", "cut_over", "reverted", "dead_letters",
                                         "dead_letters"]
    assert calls[0]["told"]["reason"] == "collection 'users' was dropped"


def test_what_happened_before_a_process_looked_is_not_told_again(tmp_path, recorder):
    hooks = Hooks(Settings(hook_command=recorder()))
    claims = Claims()
    hooks.baseline(NAME, state_at(Phase.CATCHING_UP))
    try:
        look(hooks, claims, state_at(Phase.CATCHING_UP, dlq_pending=3))
    finally:
        hooks.close()

    assert [c["env"] for c in told(tmp_path)] == ["dead_letters"]
    assert told(tmp_path)[0]["told"]["reason"].startswith("3 documents failed")


def test_a_failing_hook_is_logged_and_the_rest_goes_on(tmp_path, recorder, caplog):
    webhook = Webhook(code=500, answer="upstream down")
    hooks = Hooks(Settings(hook_command=recorder(code=3, says="disk full"),
                           hook_url=webhook.url))
    claims = Claims()
    hooks.baseline(NAME, state_at(Phase.CATCHING_UP))
    try:
        with caplog.at_level(logging.INFO, logger="cdc_migrator.hooks"):
            look(hooks, claims, state_at(Phase.CUT_OVER))
            hooks.close()
    finally:
        webhook.close()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"hook cut_over for {NAME} failed: command {sys.executable} exited 3: disk full; " \
           "the migration goes on" in warnings
    # The webhook's host only: its path holds its token.
    assert f"hook cut_over for {NAME} failed: webhook 127.0.0.1:" \
           f"{webhook.server.server_address[1]} answered 500: upstream down; the migration " \
           "goes on" in warnings
    assert not any("secret-token" in r.getMessage() for r in caplog.records)
    assert [c["env"] for c in told(tmp_path)] == ["cut_over"]
    assert webhook.bodies[0]["event"] == "cut_over"
    assert webhook.bodies[0]["type"] == "application/json"


def test_a_hook_that_does_not_finish_in_time_is_killed_and_logged(tmp_path, caplog):
    hooks = Hooks(Settings(hook_command=f"{sys.executable} -c 'import time; time.sleep(60)'",
                           hook_timeout=0.5))
    claims = Claims()
    hooks.baseline(NAME, state_at(Phase.CATCHING_UP))
    with caplog.at_level(logging.WARNING, logger="cdc_migrator.hooks"):
        look(hooks, claims, state_at(Phase.CUT_OVER))
        hooks.close()

    assert any("did not finish within 0.5s (killed)" in r.getMessage()
               for r in caplog.records), caplog.text


def test_an_unreachable_webhook_is_a_failed_hook_not_an_error(caplog):
    closed = Webhook()
    url = closed.url
    closed.close()  # nothing listens there any more
    hooks = Hooks(Settings(hook_url=url))
    hooks.baseline(NAME, state_at(Phase.CATCHING_UP))
    with caplog.at_level(logging.WARNING, logger="cdc_migrator.hooks"):
        look(hooks, Claims(), state_at(Phase.CUT_OVER))
        hooks.close()

    assert "did not answer" in caplog.text and "the migration goes on" in caplog.text


def test_the_before_cutover_hook_answers_with_its_last_line(tmp_path, recorder):
    state = state_at(Phase.CATCHING_UP)
    no = Hooks(Settings(hook_command=recorder(code=1, says="deploy freeze until 18:00"),
                        hook_events="before_cutover"))
    yes = Hooks(Settings(hook_command=recorder(), hook_events="before_cutover"))
    deaf = Hooks(Settings(hook_command=recorder(code=1)))  # not asked: not in its events

    refusal = no.ask(state)

    assert refusal is not None and not refusal.ok
    assert refusal.detail == f"command {sys.executable} exited 1: deploy freeze until 18:00"
    assert yes.ask(state) is None
    assert deaf.ask(state) is None
    assert [c["told"]["event"] for c in told(tmp_path)] == ["before_cutover"] * 2


def test_occurrences_are_keyed_by_pass_so_a_new_pass_is_told_again():
    first = state_at(Phase.CATCHING_UP)
    again = state_at(Phase.CATCHING_UP)
    again.tail.armed_at = Timestamp(1_700_000_500, 1)  # capture re-armed after lost history

    assert occurrences(first, Phase.READY)["ready_for_cutover"] != \
        occurrences(again, Phase.READY)["ready_for_cutover"]
    assert set(occurrences(first, Phase.CATCHING_UP)) == {"armed", "backfill_done"}
    assert set(occurrences(state_at(Phase.FAILED, failure={"reason": "dropped", "at": 1}),
                           Phase.FAILED)) >= {"failed"}


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("hook_events", "armed,nope", "events separated by commas, of: armed, backfill_done, "
                                  "ready_for_cutover, cut_over, failed, reverted, dead_letters, "
                                  "before_cutover ('nope' is none)"),
    ("hook_url", "ftp://example.com/x", "an http:// or https:// URL"),
    ("hook_command", "no-such-program-here --now", "a command line whose first word is an "
                     "executable found on the PATH ('no-such-program-here' is not)"),
    ("hook_command", "notify 'unclosed", "a command line, its quotes closed, whose first word "
                                         "is an executable"),
])
def test_a_hook_setting_given_wrong_is_one_line_and_exit_2_before_any_work(setting, value,
                                                                         message):
    # Checked by the settings table, as every value is (issue 24): from Python, a variable,
    # config show, and before any work of the commands that run hooks.
    with pytest.raises(UsageError) as refused:
        Hooks(Settings(**{setting: value}))
    assert str(refused.value).endswith(f"for setting {setting}: expected {message}")
    variable = f"CDC_MIGRATOR_{setting.upper()}"
    for command in (["tail", NAME, "-q"], ["cutover", NAME, "-q"], ["config", "show"]):
        env = {variable: value, "PATH": os.environ["PATH"],
               # No service is reached: a mistake is found before any connection.
               "CDC_MIGRATOR_MONGODB_URI": "mongodb://127.0.0.1:9/app?serverSelectionTimeoutMS=100",
               "CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
               "CDC_MIGRATOR_TRANSFORMS": str(ROOT / "transforms")}
        code, _, err = invoke(command, env)  # in this process: `make unit` stays quick
        assert code == 2, (command, err)
        assert err.startswith("cdc-migrator: invalid value "), err
        assert f"for environment variable {variable}: expected {message}" in err, err
        assert len(err.splitlines()) == 1, err


# ------------------------------------------------------------- the commands, for real

def test_run_tells_each_phase_once_and_a_failing_webhook_changes_nothing(db, settings,
                                                                       tmp_path, recorder):
    db.users.insert_many([{"_id": i} for i in range(300)])
    webhook = Webhook(code=503, answer="maintenance")
    try:
        done = run_cli("run", NAME, "--cutover", "--timeout", "120s", "-q", settings=settings,
                       env={"CDC_MIGRATOR_HOOK_COMMAND": recorder(),
                            "CDC_MIGRATOR_HOOK_URL": webhook.url}, timeout=180)
    finally:
        webhook.close()

    assert done.returncode == 0, done.stderr
    events = [c["env"] for c in told(tmp_path)]
    # ready_for_cutover only if a look fell between drained and cut over: it may not.
    assert [e for e in events if e != "ready_for_cutover"] == ["armed", "backfill_done",
                                                                "cut_over"], events
    assert [b["event"] for b in webhook.bodies] == events
    assert "answered 503: maintenance; the migration goes on" in done.stderr
    assert db.users.count_documents({"role": "user"}) == 300
    cut = told(tmp_path)[-1]["told"]
    assert cut["phase"] == "cut over" and cut["counts"]["updated"] == 300


def test_the_before_cutover_hook_refuses_a_cutover_with_its_reason(db, settings, tmp_path,
                                                                  recorder):
    db.users.insert_many([{"_id": i} for i in range(50)])
    assert run_cli("run", NAME, "--timeout", "120s", "-q", settings=settings).returncode == 0

    refused = run_cli("cutover", NAME, settings=settings, env={
        "CDC_MIGRATOR_HOOK_COMMAND": recorder(code=1, says="deploy freeze until 18:00"),
        "CDC_MIGRATOR_HOOK_EVENTS": "before_cutover,cut_over"})
    state = settings.store.get(NAME)
    agreed = run_cli("cutover", NAME, settings=settings, env={
        "CDC_MIGRATOR_HOOK_COMMAND": recorder(),
        "CDC_MIGRATOR_HOOK_EVENTS": "before_cutover,cut_over"})

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stdout.strip() == (
        f"{NAME}: cutover refused: the before_cutover hook refused: command {sys.executable} "
        "exited 1: deploy freeze until 18:00")
    assert state is not None and state.phase is not Phase.CUT_OVER
    assert agreed.returncode == 0, agreed.stdout + agreed.stderr
    assert settings.store.get(NAME).phase is Phase.CUT_OVER
    assert [c["env"] for c in told(tmp_path)] == ["before_cutover", "before_cutover",
                                                  "cut_over"]


PICKY = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="users")
    def picky_role(doc, ctx):
        if doc["_id"] % 10 == 7:
            raise ValueError("no role for a seven")
        if doc.get("role") is None:
            return {"role": "user"}
''')


def test_services_watching_one_migration_tell_each_change_once(db, settings, tmp_path,
                                                              recorder):
    transforms = tmp_path / "transforms"
    transforms.mkdir()
    write_transforms(transforms, settings, {"users.py": PICKY})
    db.users.insert_many([{"_id": i} for i in range(100)])
    arm(settings, api.load(settings, "picky_role"))  # before the services: not told
    hook = {"CDC_MIGRATOR_HOOK_COMMAND": recorder()}

    with Service(settings, "tail", "picky_role", env=hook) as tail, \
            Service(settings, "consume", "picky_role", env=hook) as consumer:
        backfill = CliProcess(settings, "backfill", "picky_role", "-q", env=hook)
        assert backfill.wait() == 0, backfill.log
        wait_for(lambda: {"dead_letters", "ready_for_cutover"} <= {
            c["env"] for c in told(tmp_path)}, what="the dead letters and ready told")
        assert tail.stop() == 0 and consumer.stop() == 0  # each looks a last time

    events = sorted(c["env"] for c in told(tmp_path))
    assert events == ["backfill_done", "dead_letters", "ready_for_cutover"], events
    letters = next(c["told"] for c in told(tmp_path) if c["env"] == "dead_letters")
    assert letters["dead_letters"] == 10 and "dlq list picky_role" in letters["reason"]
