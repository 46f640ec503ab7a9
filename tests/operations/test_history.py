"""`history`: every migration ever armed, what became of it, from where and with which code;
kept by `reset`."""

from __future__ import annotations

import json
import socket

from cdc_migrator import api
from cdc_migrator.core.fingerprint import fingerprint, short
from cdc_migrator.core.history import tool_version

from ..harness import run_cli

NAME = "split_full_name"  # transforms/split_full_name.py, with its inverse
REVERSE = f"{NAME}-revert"


def test_history_after_migrate_cutover_revert_and_reset(db, settings):
    db.people.insert_many([{"_id": i, "full_name": f"Given{i} Family{i}"} for i in range(200)])
    forward = api.run(settings, NAME, then_cutover=True, timeout=180, show_progress=False)
    assert forward.cutover is not None and forward.cutover.ok
    reverted = api.revert(settings, NAME, timeout=180, show_progress=False)
    assert reverted.ok, reverted.summary()
    reset = run_cli("reset", NAME, "--yes", settings=settings)
    assert reset.returncode == 0, reset.stderr

    shown = run_cli("history", "people", settings=settings)
    as_json = run_cli("history", "people", "--json", settings=settings)

    assert shown.returncode == 0 and as_json.returncode == 0, shown.stderr + as_json.stderr
    found = {h["migration"]: h for h in json.loads(as_json.stdout)}
    code = fingerprint(api.load(settings, NAME), settings.schemas)
    back = fingerprint(api.load(settings, REVERSE), settings.schemas)
    forward_events = [e["event"] for e in found[NAME]["entries"]]
    assert forward_events == ["armed", "backfilled", "cut_over", "reverting", "reverted",
                              "reset"]
    assert [e["event"] for e in found[REVERSE]["entries"]] == [
        "armed", "backfilled", "cut_over", "reset"]
    assert found[NAME]["fingerprints"] == [code] and found[REVERSE]["fingerprints"] == [back]
    assert found[NAME]["phase"] is None  # reset: no state, the history stays
    entries = found[NAME]["entries"]
    assert {(e["host"], e["version"]) for e in entries} == {(socket.gethostname(),
                                                            tool_version())}
    cut = entries[2]
    assert cut["details"]["counts"]["updated"] == 200 and cut["details"]["counts"]["failed"] == 0
    assert entries[-1]["details"]["phase"] == "reverted"
    text = shown.stdout
    assert f"{NAME} (people): no state (reset); code {short(code)}" in text
    assert "cut over   " in text and "counts: produced " in text and "updated 200" in text
    assert "(it was reverted)" in text

    # Armed again from scratch: one history, the new run appended to it.
    again = api.run(settings, NAME, timeout=180, show_progress=False)
    assert again.drained
    after = json.loads(run_cli("history", "people", "--json", settings=settings).stdout)
    entries = next(h for h in after if h["migration"] == NAME)["entries"]
    assert [e["event"] for e in entries][-3:] == ["reset", "armed", "backfilled"]


def test_history_of_a_collection_never_armed_is_refused_in_one_line(db, settings):
    db.people.insert_one({"_id": 1, "full_name": "Ada Lovelace"})

    nothing = run_cli("history", "peoples", settings=settings)
    everything = run_cli("history", settings=settings)

    assert nothing.returncode == 1 and nothing.stdout == ""
    assert nothing.stderr.strip() == (f"cdc-migrator: no migration of 'peoples' was ever "
                                      f"armed in database '{db.name}'")
    assert everything.returncode == 0
    assert everything.stdout.strip() == f"no migration was ever armed in database {db.name}"
    assert "cdc_migrator_history" not in db.list_collection_names()
