"""A member whose code is not the code in force holds: it applies nothing until the operator
decides.

Every tailer, consumer and backfill of a migration computes the fingerprint of the code it
loaded (:mod:`.fingerprint`) and compares it with the code in force, which the state records
(armed with it; replaced only by ``accept``). While they differ, the member holds: a consumer
pauses its partitions, a tailer stops reading the change stream (its resume token keeps the
place), a backfill scans nothing. ``accept`` makes its code the code in force, and a rollback of
the member gives it the code in force again: either way it goes on by itself.

Each member reports what it runs in the state (``code.members``): at once when it starts or
stops holding, and every :data:`~.state.CODE_REPORT_INTERVAL` seconds, so ``status`` lists the
members and their code, and a new backfill pass waits until every live member running other
code has seen the change and holds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from .fingerprint import short
from .state import CODE_REPORT_INTERVAL, MemberCode, MigrationState, StateStore, last_word

log = logging.getLogger("cdc_migrator.holding")

#: How often a holding member looks at the code in force again, in seconds.
CHECK_INTERVAL = 1.0


def member_name(component: str, instance: str | None = None) -> str:
    """A member's name in the state: its component and its instance (``--instance-id``), or
    this host and process. No dots and no leading dollar: it is a field name."""
    who = instance or f"{socket.gethostname()}:{os.getpid()}"
    return f"{component}@{who}".replace(".", "-").replace("$", "-")


class CodeHold:
    """One member's code against the code in force of its migration.

    :meth:`holds` decides from a state the member just read, and reports the member; the
    member calls :meth:`leave` when it stops. Safe to share between the threads of a member
    (a backfill's workers).
    """

    def __init__(self, store: StateStore, migration: str, fingerprint: str, component: str,
                 member: str | None = None) -> None:
        self.store, self.migration, self.fingerprint = store, migration, fingerprint
        self.component = component
        self.member = member or member_name(component)
        self._lock = threading.Lock()
        self._holding: bool | None = None  # as last decided (None: not yet)
        self._reported_at = float("-inf")

    def holds(self, state: MigrationState | None) -> bool:
        """Whether the member must hold now, given its migration's state (None: no state,
        nothing recorded yet, so it goes on)."""
        in_force = state.code.fingerprint if state is not None else None
        holding = in_force is not None and in_force != self.fingerprint
        with self._lock:
            was, self._holding = self._holding, holding
            due = was != holding or time.monotonic() - self._reported_at >= CODE_REPORT_INTERVAL
            if due and state is not None:
                self._reported_at = time.monotonic()
        if was != holding:
            self._log(holding, was, in_force)
        if due and state is not None:
            self.store.report_code(self.migration, self.member, MemberCode(
                self.component, self.fingerprint, holding, socket.gethostname(), time.time()))
        return holding

    def waits_for(self, state: MigrationState | None) -> list[str]:
        """The other live members still applying other code than the code in force (a new
        pass of the backfill waits for them to hold)."""
        if state is None:
            return []
        return [m for m in state.code.applying_other_code() if m != self.member]

    def leave(self, stopped_by: BaseException | None = None) -> None:
        """The member stopped (on ``stopped_by``, when it failed): its report goes, as a last
        word (:func:`~.state.last_word`: not after MongoDB was found unavailable, and within
        seconds; a report left behind goes stale by itself). A member that never reported
        writes nothing."""
        if self._reported_at == float("-inf"):
            return
        last_word(lambda: self.store.forget_code_member(self.migration, self.member),
                  stopped_by)

    def _log(self, holding: bool, was: bool | None, in_force: str | None) -> None:
        name = self.migration
        if holding:
            log.warning("holding %s: this %s runs its code with fingerprint %s, the code in "
                        "force is %s; nothing is applied until `cdc-migrator accept %s` takes "
                        "this code (and backfills again) or this process runs the code in "
                        "force again", name, self.component, short(self.fingerprint),
                        short(in_force), name)
        elif was:
            log.info("%s: this %s runs the code in force now (fingerprint %s): it goes on",
                     name, self.component, short(self.fingerprint))
