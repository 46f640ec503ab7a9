"""Hooks, as gh-ost has them: a command and a webhook told of a migration's phase changes, and
asked before a cutover.

The settings ``hook_command`` (a command, split as a shell would split it but not run by one)
and ``hook_url`` (an ``http(s)://`` URL, POSTed to) each get every event of ``hook_events``
as one JSON object (:func:`payload`: the event, the migration, its phase, counts and a
reason): on stdin for the command, as the request's body for the URL.

The events are the phase changes of :data:`EVENTS`, and :data:`BEFORE_CUTOVER`. A phase change
is announced by a process that serves the migration (``tail``, ``consume``, ``backfill``,
``run``, ``revert``, ``next --run``) when its watch (:mod:`.observability`) sees it happen,
and by ``cutover`` for its own cutover; each occurrence is claimed in the migration's state
first, so one process of all those watching announces it, once. A hook that fails (a non-zero
exit, an HTTP error, no answer within ``hook_timeout``) is logged and changes nothing: the
migration goes on. Only :data:`BEFORE_CUTOVER` answers back: its refusal (or failure) refuses
the cutover, with the hook's reason.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import shlex
import socket
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..base.messages import first_line, shorten
from ..base.settings import Settings
from ..core.state import MigrationState, Phase, StateStore

log = logging.getLogger("cdc_migrator.hooks")

#: The phase changes announced, in the order a migration goes through them.
EVENTS = ("armed", "backfill_done", "ready_for_cutover", "cut_over", "failed", "reverted",
          "dead_letters")
#: Asked after every check of ``cutover`` passed, before anything is written: a refusal
#: refuses the cutover.
BEFORE_CUTOVER = "before_cutover"
ALL_EVENTS = (*EVENTS, BEFORE_CUTOVER)

_REASONS: dict[str, Callable[[MigrationState], str]] = {
    "armed": lambda s: "change capture armed: every write from now on becomes an event",
    "backfill_done": lambda s: "backfill finished: "
                               f"{s.backfill.scanned if s.backfill else 0:,} documents scanned",
    "ready_for_cutover": lambda s: "backfill done, no lag, the tailer running: `cdc-migrator "
                                   f"cutover {s.name}` may run",
    "cut_over": lambda s: "cut over: every document verified, recorded complete",
    "failed": lambda s: s.failure_reason,
    "reverted": lambda s: "reverted: every document is back in the old shape",
    "dead_letters": lambda s: f"{s.dlq_pending:,} documents failed and wait in the dead-letter "
                              f"topic: `cdc-migrator dlq list {s.name}`",
    BEFORE_CUTOVER: lambda s: "every check of cutover passed: exit non-zero (or answer other "
                              "than 2xx) to refuse it",
}


def occurrences(state: MigrationState, phase: Phase | None) -> dict[str, str]:
    """The events the state of a migration shows it went through, each with a key of which
    time it did (capture is armed again after lost history, a backfill starts over, ...);
    ``phase`` is the phase ``status`` shows (ready measured)."""
    found: dict[str, str] = {}
    armed = str(state.tail.armed_at)
    backfill = state.backfill
    this_pass = f"{armed}|{backfill.started_at if backfill else None}"
    if state.armed:
        found["armed"] = armed
    if state.armed and backfill is not None and backfill.done:
        found["backfill_done"] = this_pass
    if phase is Phase.READY:
        found["ready_for_cutover"] = this_pass
    if state.completed_at is not None:
        found["cut_over"] = str(state.completed_at)
    if state.failed:
        found["failed"] = str((state.failure or state.last_error or {}).get("at"))
    if state.phase is Phase.REVERTED:
        found["reverted"] = str(state.reverted_at)
    if state.dlq_pending:
        found["dead_letters"] = str(state.dlq_offset)
    return found


def payload(event: str, state: MigrationState, status: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
    """What a hook is told of ``event``: JSON-friendly."""
    status = status or {}
    backfill = state.backfill
    return {
        "event": event,
        "migration": state.name,
        "collection": state.collection,
        "phase": status.get("phase") or (state.phase.label if state.phase else None),
        "paused": state.paused,
        "counts": state.counts.as_dict(),
        "backfill": None if backfill is None else {
            "scanned": backfill.scanned, "total": backfill.total, "done": backfill.done},
        "lag": (status.get("lag") or {}).get("total"),
        "dead_letters": state.dlq_pending,
        "reason": _REASONS[event](state),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "host": socket.gethostname(),
    }


@dataclass
class Outcome:
    """How one hook answered: ``ok``, and a line saying what it did or why it failed."""

    ok: bool
    detail: str


class Hooks:
    """The hooks of a process, from its settings (checked by the settings table: a mistake
    is one line and exit 2 before any work).

    :meth:`watch` announces in a thread of its own (a slow hook delays no metric and no
    check); :meth:`announce` and :meth:`ask` run the hooks at once, for a command that exits
    right after.
    """

    def __init__(self, settings: Settings) -> None:
        self.command = _command(settings.hook_command)
        self.url = _url(settings.hook_url)
        self.events = _events(settings.hook_events)
        self.timeout = settings.hook_timeout
        self._seen: dict[str, dict[str, str]] = {}
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def configured(self) -> bool:
        return bool(self.command or self.url)

    def wants(self, event: str) -> bool:
        return self.configured and event in self.events

    def baseline(self, name: str, state: MigrationState | None) -> None:
        """What migration ``name`` went through before this process looked (its ``state``,
        None before it has one): not announced again."""
        self._seen[name] = {} if state is None else occurrences(state, state.phase)

    def watch(self, store: StateStore, state: MigrationState, status: dict[str, Any]) -> None:
        """One look at a migration (``status`` as ``status`` shows it): each event that
        happened since the last look is claimed and, when this process won it, announced."""
        now = occurrences(state, Phase.parse(status.get("phase")))
        before = self._seen.get(state.name)
        self._seen[state.name] = now
        if before is None:  # the first look: a baseline only
            return
        for event in EVENTS:
            if event in now and before.get(event) != now[event] and self.wants(event) \
                    and store.claim_announcement(state.name, event, now[event]):
                self._submit(event, payload(event, state, status))

    def announce(self, store: StateStore, state: MigrationState, event: str) -> None:
        """Announce ``event`` now, unless another process did (a one-off command's)."""
        key = occurrences(state, state.phase).get(event)
        if key is not None and self.wants(event) \
                and store.claim_announcement(state.name, event, key):
            self._run(event, payload(event, state))

    def ask(self, state: MigrationState) -> Outcome | None:
        """Ask the hooks whether the cutover may go on: the first refusal, or None when
        every one agreed (or none is asked)."""
        if not self.wants(BEFORE_CUTOVER):
            return None
        for outcome in self._run(BEFORE_CUTOVER, payload(BEFORE_CUTOVER, state)):
            if not outcome.ok:
                return outcome
        return None

    def close(self) -> None:
        """Run what is queued (each hook within its timeout), then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _submit(self, event: str, body: dict[str, Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, daemon=True, name="hooks")
            self._thread.start()
        self._queue.put((event, body))

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            self._run(*item)

    def _run(self, event: str, body: dict[str, Any]) -> list[Outcome]:
        """Run the command and post to the URL; log how each answered (never raises)."""
        data = json.dumps(body, default=str).encode()
        outcomes = []
        for target, run in ((self.command, self._run_command), (self.url, self._post)):
            if not target:
                continue
            try:
                outcome = run(data, body)
            except Exception as exc:  # a hook must never stop the migration
                outcome = Outcome(False, f"{_described(target)}: {first_line(exc)}")
            if outcome.ok:
                log.info("hook %s for %s: %s", event, body["migration"], outcome.detail)
            else:
                log.warning("hook %s for %s failed: %s%s", event, body["migration"],
                            outcome.detail, "" if event == BEFORE_CUTOVER
                            else "; the migration goes on")
            outcomes.append(outcome)
        return outcomes

    def _run_command(self, data: bytes, body: dict[str, Any]) -> Outcome:
        assert self.command is not None
        what = _described(self.command)
        env = {**os.environ, "CDC_MIGRATOR_HOOK_EVENT": body["event"],
               "CDC_MIGRATOR_HOOK_MIGRATION": body["migration"],
               "CDC_MIGRATOR_HOOK_PHASE": str(body["phase"] or "")}
        try:
            done = subprocess.run(self.command, input=data, capture_output=True, env=env,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            return Outcome(False, f"{what} did not finish within {self.timeout:g}s (killed)")
        said = _said(done.stderr) or _said(done.stdout)
        if done.returncode == 0:
            return Outcome(True, f"{what} exited 0" + (f": {said}" if said else ""))
        return Outcome(False, f"{what} exited {done.returncode}" + (f": {said}" if said else ""))

    def _post(self, data: bytes, body: dict[str, Any]) -> Outcome:
        assert self.url is not None
        what = _described(self.url)
        request = urllib.request.Request(self.url, data=data, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "cdc-migrator"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                said = _said(reply.read(2000))
                return Outcome(True, f"{what} answered {reply.status}"
                               + (f": {said}" if said else ""))
        except urllib.error.HTTPError as exc:
            said = _said(exc.read(2000))
            return Outcome(False, f"{what} answered {exc.code}" + (f": {said}" if said else ""))
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            text = first_line(why) if isinstance(why, BaseException) else str(why)
            return Outcome(False, f"{what} did not answer: {text}")


def _said(output: bytes) -> str:
    """The last non-empty line a hook wrote, shortened (its reason, by convention)."""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return shorten(lines[-1], 200) if lines else ""


def _described(target: list[str] | str) -> str:
    """A hook as the logs name it: the command's program, or the URL's host only (a webhook's
    path often holds its token)."""
    if isinstance(target, list):
        return f"command {target[0]}"
    return f"webhook {urllib.parse.urlsplit(target).netloc.rpartition('@')[2]}"


# The settings table checked these values (base/settings.py's rules): here they are parsed.

def _command(value: str | None) -> list[str] | None:
    return shlex.split(value) or None if value else None


def _url(value: str | None) -> str | None:
    return value or None


def _events(value: str) -> frozenset[str]:
    return frozenset(n.strip() for n in value.split(",") if n.strip())
