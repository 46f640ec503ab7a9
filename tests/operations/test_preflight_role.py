"""The one role of docs/compatibility.md, on a local server with access control: a whole
migration runs for a user holding only it, preflight passes for that user, and fails naming
each privilege a narrower role lacks (``run`` refusing at its start with the same line)."""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_migrator.base.settings import Settings
from cdc_migrator.core.state import Phase

from ..harness import KAFKA, ROOT, run_cli, state_of
from ..services.test_server_auth import Secured

pytestmark = [pytest.mark.services,
              pytest.mark.local_server("a LocalMongo of its own with access control")]

MIGRATION = textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="users", contract_schema="users.contract.json")
    def add_role(doc, ctx):
        if doc.get("role") is None:
            return {"role": "user"}
''')


def documented_role(database: str) -> dict[str, Any]:
    """The createRole document of docs/compatibility.md, for ``database``."""
    text = (ROOT / "docs" / "compatibility.md").read_text()
    block = re.search(r"<!-- cdc-migrator-role -->\n```json\n(.*?)```", text, re.S)
    assert block is not None, "docs/compatibility.md lost its role"
    return json.loads(block.group(1).replace('"db": "app"', f'"db": "{database}"'))


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[Secured]:
    server = Secured(tmp_path_factory.mktemp("role"))
    yield server
    server.close()


def migration_as(secured: Secured, tmp_path: Path,
                 role_for: Callable[[str], dict[str, Any]]) -> tuple[Settings, str]:
    """A database of 30 users to migrate with a contract schema, the role ``role_for`` gives
    for it created on admin, and settings that connect as a new admin user holding only that
    role."""
    db = f"mig{uuid.uuid4().hex[:8]}"
    secured.root[db].users.insert_many([{"_id": i, "name": f"user {i}"} for i in range(30)])
    role = role_for(db)
    role = {**role, "createRole": f"{role['createRole']}_{db}"}
    secured.root.admin.command(role)
    user = f"migrator_{db}"
    secured.root.admin.command("createUser", user, pwd="migrator-pw",
                               roles=[{"role": role["createRole"], "db": "admin"}])
    (tmp_path / "transforms").mkdir()
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "users.contract.json").write_text(json.dumps(
        {"bsonType": "object", "required": ["role"], "properties": {"role": {"enum": ["user"]}}}))
    (tmp_path / "transforms" / "users.py").write_text(MIGRATION)
    settings = Settings(mongodb_uri=secured.uri(user, "migrator-pw", "admin", db),
                        kafka_bootstrap_servers=KAFKA, transforms=tmp_path / "transforms",
                        topic_prefix=f"t-{db}", group_prefix=f"g-{db}", partitions=2,
                        max_replication_lag=5)
    return settings, db


def without(role: dict[str, Any], action: str) -> dict[str, Any]:
    return {**role, "privileges": [
        {**p, "actions": [a for a in p["actions"] if a != action]} for p in role["privileges"]]}


def test_a_whole_migration_runs_for_a_user_holding_only_the_documented_role(secured, tmp_path):
    settings, db = migration_as(secured, tmp_path, documented_role)
    try:
        checked = run_cli("preflight", "add_role", settings=settings)
        ran = run_cli("run", "add_role", "--cutover", "--timeout", "120s", settings=settings)
    finally:
        settings.close()

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"ok   privileges: connectionStatus showPrivileges: migrator_{db}@admin holds every " \
           "privilege the migration needs" in checked.stdout
    assert "ok   runway:" in checked.stdout  # local.oplog.rs read with the role's find
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "add_role: cut over." in ran.stdout
    migrated = secured.root[db]
    assert migrated.users.count_documents({"role": "user"}) == 30
    assert state_of(migrated, "add_role")["phase"] == Phase.CUT_OVER


@pytest.mark.parametrize(("action", "named"), [
    ("collMod", "collMod on {db}.users (cutover's contract schema)"),
    ("replSetGetStatus", "replSetGetStatus on the cluster (--max-replication-lag)"),
    ("changeStream", "changeStream on database {db} (the change stream on the database)"),
])
def test_preflight_fails_naming_the_privilege_a_role_lacks_and_run_refuses_at_start(
        secured, tmp_path, action, named):
    settings, db = migration_as(secured, tmp_path,
                                lambda db: without(documented_role(db), action))
    try:
        checked = run_cli("preflight", "add_role", settings=settings)
        ran = run_cli("run", "add_role", "--cutover", "--timeout", "120s", settings=settings)
    finally:
        settings.close()

    assert checked.returncode == 1, checked.stdout + checked.stderr
    line = next(x for x in checked.stdout.splitlines() if x.startswith("FAIL privileges"))
    assert f"migrator_{db}@admin lacks {named.format(db=db)}" in line, line
    assert "fix: grant the user a role with these privileges, e.g. docs/compatibility.md" in line
    assert "add_role: preflight failed: privileges" in checked.stdout
    assert ran.returncode == 1, ran.stdout + ran.stderr
    # (the lag bound's own check, before preflight's, names replSetGetStatus the same way)
    assert f"run refused by preflight: {line}" in ran.stderr or \
        "replSetGetStatus refused (13 Unauthorized" in ran.stderr
    assert state_of(secured.root[db], "add_role") == {}  # refused before anything was armed
