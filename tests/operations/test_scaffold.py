"""`init`: a migration to fill in, with its schema stubs and a test stub."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
    source = (transforms / "add_status.py").read_text()
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
