"""`init`: a migration to fill in, with its schema stubs and a test stub; its file name sorts
in creation order and its after= names the collection's last migration."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from cdc_migrator import api
from cdc_migrator.base.settings import Settings
from cdc_migrator.core.order import series
from cdc_migrator.errors import UsageError
from cdc_migrator.migration import load_migrations

from ..harness import (
    run_cli,
)


def test_init_writes_a_migration_that_apply_dry_run_accepts(db, settings, tmp_path):
    transforms = tmp_path / "transforms"
    test_file = tmp_path / "tests" / "test_add_status.py"
    db.widgets.insert_many([{"_id": i} for i in range(3)])
    settings.transforms = transforms

    created = run_cli("init", "add_status", "--collection", "widgets", "--with-test",
                      str(test_file), settings=settings)
    dry_run = run_cli("apply", "add_status", "--dry-run", settings=settings)
    stub = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(test_file)], capture_output=True, text=True, cwd=tmp_path)

    assert created.returncode == 0, created.stderr
    (written,) = transforms.glob("*.py")
    assert re.fullmatch(r"\d{14}_add_status\.py", written.name), written.name
    source = written.read_text()
    assert '@migration(\n    collection="widgets"' in source
    assert 'contract_schema="add_status.contract.json"' in source
    contract = json.loads((tmp_path / "schemas" / "add_status.contract.json").read_text())
    assert contract["bsonType"] == "object"
    assert dry_run.returncode == 0, dry_run.stderr
    assert dry_run.stdout.splitlines() == [f"{i}: no change" for i in range(3)]
    assert stub.returncode == 0, stub.stdout + stub.stderr
    assert run_cli("verify", "add_status", settings=settings).returncode == 0


@pytest.mark.parametrize("name", ["add_status", "9lives", "class", "add-status"])
def test_init_refuses_an_existing_file_or_a_name_that_is_no_identifier(settings, tmp_path,
                                                                        name):
    settings.transforms = tmp_path / "transforms"
    settings.transforms.mkdir()
    (settings.transforms / "add_status.py").write_text("# someone's migration\n")

    result = run_cli("init", name, "--collection", "widgets", settings=settings)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (settings.transforms / "add_status.py").read_text() == "# someone's migration\n"
    assert sorted(p.name for p in settings.transforms.iterdir()) == ["add_status.py"]


def _offline(tmp_path) -> Settings:
    """Settings whose services are never reached: init needs none."""
    return Settings(mongodb_uri="mongodb://127.0.0.1:1/app", transforms=tmp_path / "transforms")


def test_init_names_files_in_creation_order_and_chains_each_after_the_last(tmp_path):
    settings = _offline(tmp_path)
    settings.transforms.mkdir()
    # An existing deployment's file, named before init stamped names: it sorts after digits.
    (settings.transforms / "add_role.py").write_text(textwrap.dedent('''
        from cdc_migrator import migration

        @migration(collection="users")
        def add_role(doc, ctx):
            return None
    '''))
    for name in ("add_status", "add_plan", "drop_legacy"):
        api.init(settings, name, "users")
    api.init(settings, "add_owner", "teams")

    files = sorted(p.name for p in settings.transforms.glob("*.py"))
    migrations = load_migrations(settings.transforms)

    assert [re.sub(r"^\d{14}_", "", f) for f in files] == [
        "add_status.py", "add_plan.py", "drop_legacy.py", "add_owner.py", "add_role.py"]
    assert [m.name for m in series(migrations, "users")] == [
        "add_role", "add_status", "add_plan", "drop_legacy"]
    assert migrations["add_status"].after == "add_role"
    assert migrations["drop_legacy"].after == "add_plan"
    assert migrations["add_owner"].after is None  # the first of teams
    assert 'after="add_plan",  # runs once add_plan has cut over' in \
        next(settings.transforms.glob("*_drop_legacy.py")).read_text()


def test_init_refuses_a_name_a_migration_has_already_in_another_file(tmp_path):
    settings = _offline(tmp_path)
    settings.transforms.mkdir()
    (settings.transforms / "roles.py").write_text(textwrap.dedent('''
        from cdc_migrator import migration

        @migration(collection="users", name="add_role")
        def set_role(doc, ctx):
            return None
    '''))

    with pytest.raises(UsageError, match="a migration named 'add_role' exists already"):
        api.init(settings, "add_role", "users")
    assert [p.name for p in settings.transforms.iterdir()] == ["roles.py"]
