"""`accept`: a migration takes its edited code, and every document meets it; what it cannot take
is refused in one line, changing nothing. Also what the edited code meets elsewhere: `apply`,
`cutover` and `verify` with code other than the code in force."""

from __future__ import annotations

import json
import textwrap

from cdc_migrator.base.naming import FENCE_COLLECTION
from cdc_migrator.core.fingerprint import fingerprint, short
from cdc_migrator.core.state import StateStore
from cdc_migrator.migration import get_migration

from ..harness import CliProcess, run_cli, state_of, wait_for

NAME = "add_tier"
V1 = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="accounts")
    def add_tier(doc, ctx):
        if doc.get("tier") is None:
            return {"tier": "free"}
''')
V2 = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="accounts")
    def add_tier(doc, ctx):
        if doc.get("tier") is None or "quota" not in doc:
            return {"tier": doc.get("tier") or "free", "quota": 10}
''')


def _code(settings, tmp_path, source: str) -> str:
    """Put ``source`` in the transforms directory (an edit, as an operator makes it); its
    fingerprint."""
    transforms = tmp_path / "transforms"
    transforms.mkdir(exist_ok=True)
    (transforms / "accounts.py").write_text(source)
    settings.transforms = transforms
    return fingerprint(get_migration(transforms, NAME), settings.schemas)


def _one_line_refusal(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def test_apply_refuses_other_code_and_accept_applies_the_new_code_to_every_document(
        db, settings, tmp_path):
    db.accounts.insert_many([{"_id": i} for i in range(300)])
    old = _code(settings, tmp_path, V1)
    assert run_cli("apply", NAME, "-q", settings=settings).returncode == 0
    new = _code(settings, tmp_path, V2)
    before = state_of(db, NAME)

    refused = _one_line_refusal(run_cli("apply", NAME, "-q", settings=settings))
    accepted = run_cli("accept", NAME, "-q", settings=settings)

    assert refused == (f"cdc-migrator: {NAME}'s code changed (fingerprint {short(new)}, the "
                       f"code in force is {short(old)}): `cdc-migrator accept {NAME}` applies "
                       "this code to every document again, or run the code in force")
    assert before["code"]["fingerprint"] == old
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert f"accepted the code of fingerprint {short(new)} (was {short(old)}); applied again " \
           "from the first document" in accepted.stdout
    assert db.accounts.count_documents({"tier": "free", "quota": 10}) == 300
    assert state_of(db, NAME)["code"]["fingerprint"] == new
    assert run_cli("verify", NAME, settings=settings).returncode == 0
    again = run_cli("accept", NAME, settings=settings)
    assert again.returncode == 0 and "nothing to accept" in again.stdout


def test_accept_refuses_a_migration_not_started_or_cut_over_and_changes_nothing(
        db, settings, tmp_path):
    db.accounts.insert_many([{"_id": i} for i in range(10)])
    _code(settings, tmp_path, V1)

    not_started = _one_line_refusal(run_cli("accept", NAME, settings=settings))
    assert not_started == (f"cdc-migrator: cannot accept {NAME}: it has not started, so no "
                           "code is in force; run it")
    assert db.list_collection_names() == ["accounts"]

    assert run_cli("apply", NAME, "-q", settings=settings).returncode == 0
    assert run_cli("cutover", NAME, settings=settings).returncode == 0
    old = state_of(db, NAME)["code"]["fingerprint"]
    _code(settings, tmp_path, V2)
    entries = StateStore(db).history.entries()

    cut_over = _one_line_refusal(run_cli("accept", NAME, settings=settings))

    assert f"cannot accept {NAME}: it was cut over with the code of fingerprint {short(old)}" \
           in cut_over and "put the change in a new migration" in cut_over
    assert state_of(db, NAME)["code"]["fingerprint"] == old
    assert StateStore(db).history.entries() == entries


def test_cutover_refuses_code_other_than_the_code_in_force_and_writes_no_fence(
        db, settings, tmp_path):
    db.accounts.insert_many([{"_id": i} for i in range(10)])
    old = _code(settings, tmp_path, V1)
    assert run_cli("apply", NAME, "-q", settings=settings).returncode == 0
    new = _code(settings, tmp_path, V2)
    phase = state_of(db, NAME)["phase"]

    result = run_cli("cutover", NAME, settings=settings)

    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"{NAME}: cutover refused: the code here (fingerprint {short(new)}) is not the code in "
        f"force ({short(old)}): `cdc-migrator accept {NAME}` takes it and backfills again, or "
        "cut over with the code in force")
    assert FENCE_COLLECTION not in db.list_collection_names()
    assert state_of(db, NAME)["phase"] == phase


def test_cutover_refuses_while_a_member_holds(db, settings, tmp_path):
    db.accounts.insert_many([{"_id": i} for i in range(10)])
    old = _code(settings, tmp_path, V1)
    assert run_cli("apply", NAME, "-q", settings=settings).returncode == 0
    v2_dir = tmp_path / "v2"
    v2_dir.mkdir()
    (v2_dir / "accounts.py").write_text(V2)
    held = CliProcess(settings, "consume", NAME, "--instance-id", "next-0",
                      env={"CDC_MIGRATOR_TRANSFORMS": str(v2_dir)})
    try:
        wait_for(lambda: (state_of(db, NAME)["code"].get("members") or {}).get(
            "consumer@next-0", {}).get("holding"), what="the consumer of the new code holding")
        result = run_cli("cutover", NAME, settings=settings)
    finally:
        assert held.stop() == 0, held.log[-2000:]

    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"{NAME}: cutover refused: consumer@next-0 holds: other code than the code in force "
        f"({short(old)}), and the events of its partitions wait; stop it or give it the code "
        "in force, or `accept` its code")
    assert "holding add_tier: this consumer runs its code with fingerprint" in held.log
    assert "consumer@next-0" not in state_of(db, NAME)["code"].get("members", {})  # it left
    assert run_cli("cutover", NAME, settings=settings).returncode == 0


def test_verify_and_status_flag_a_migration_edited_after_cutover(db, settings, tmp_path):
    db.accounts.insert_many([{"_id": i} for i in range(20)])
    old = _code(settings, tmp_path, V1)
    assert run_cli("apply", NAME, "-q", settings=settings).returncode == 0
    assert run_cli("cutover", NAME, settings=settings).returncode == 0
    assert run_cli("verify", NAME, settings=settings).returncode == 0
    new = _code(settings, tmp_path, V2)

    verified = run_cli("verify", NAME, settings=settings)
    as_json = run_cli("verify", NAME, "--json", settings=settings)
    status = run_cli("status", NAME, settings=settings)
    status_json = json.loads(run_cli("status", NAME, "--json", settings=settings).stdout)

    assert verified.returncode == 1
    assert verified.stdout.strip().startswith(f"{NAME}: 20 documents still need migrating")
    assert (f"EDITED AFTER CUTOVER: {NAME} was cut over with the code of fingerprint "
            f"{short(old)}; the code verified here is {short(new)}, which nothing ran") \
        in verified.stdout
    assert json.loads(as_json.stdout)["code"] == {
        "fingerprint": new, "in_force": old, "differs": True, "edited_after_cutover": True}
    assert f"EDITED AFTER CUTOVER: the code here has fingerprint {short(new)}" in status.stdout
    assert status_json["code"]["edited_after_cutover"] is True
    _code(settings, tmp_path, V1 + "\n# a comment changes nothing\n")
    assert run_cli("verify", NAME, settings=settings).returncode == 0
