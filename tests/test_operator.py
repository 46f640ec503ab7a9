"""What an operator meets: `run` that fails when documents failed, a `cutover` that finishes
on its own after `run`, and a stopped piece whose last error `status`, `/readyz` and the
metrics show, naming the document and the migration."""

from __future__ import annotations

import textwrap

import pytest

from .conftest import run_cli

ACCOUNTS = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="accounts")
    def add_plan(doc, ctx):
        if "plan" not in doc:
            if doc.get("broken"):
                raise ValueError(f"account {doc['_id']} has no owner")
            return {"plan": "free"}
''')


@pytest.fixture
def transforms(tmp_path, settings):
    (tmp_path / "accounts.py").write_text(ACCOUNTS)
    settings.transforms = tmp_path
    return tmp_path


def test_run_with_failed_documents_exits_1_as_apply_does(db, settings, transforms):
    db.accounts.insert_many([{"_id": i, "broken": i in (7, 11)} for i in range(30)])

    ran = run_cli("run", "add_plan", "--timeout", "60", "-q", settings=settings)
    applied = run_cli("apply", "add_plan", "-q", settings=settings)

    assert ran.returncode == applied.returncode == 1, ran.stdout + ran.stderr
    assert "failed 2" in ran.stdout
    assert "2 failed documents unresolved in the dead-letter topic" in ran.stderr
    assert "`cdc-migrator dlq list add_plan`" in ran.stderr
    assert db.accounts.count_documents({"plan": "free"}) == 28
