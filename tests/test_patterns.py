"""The shipped migrations (one per common pattern, see docs/writing-migrations.md) on the demo
dataset, and what `apply` promises a user: dry-run writes nothing, an interrupted run resumes,
mistakes in a migration file are one-line errors with no write, failing documents are reported
and kept.

Everything runs against the real local MongoDB; each test has its own database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import textwrap
from pathlib import Path

import bson
import pytest
from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from cdc_migrator import api, demo_data
from cdc_migrator.base.context import make_context
from cdc_migrator.base.patch import decide
from cdc_migrator.base.settings import Settings
from cdc_migrator.migration import load_migrations

from .harness import ROOT, run_cli

RAW = CodecOptions(document_class=RawBSONDocument)


# --------------------------------------------------------------------------- helpers


def snapshot(db, *names: str) -> dict[str, list[bytes]]:
    """The exact bytes of every document of each collection, in _id order."""
    return {name: [d.raw for d in db.get_collection(name, codec_options=RAW).find(
        sort=[("_id", 1)])] for name in names}


def by_id(db, name: str) -> dict:
    return {d["_id"]: d for d in db[name].find()}


def same_bson(a: dict, b: dict) -> bool:
    """Equal with types and field order (1 != 1.0 != True), as stored."""
    return bson.encode(a) == bson.encode(b)


def without(doc: dict, *names: str) -> dict:
    return {k: v for k, v in doc.items() if k not in names}


def migrate_and_check_idempotent(settings: Settings, db, name: str, *also: str):
    """verify finds work; apply; verify passes; a second apply changes nothing at all."""
    migration = api.load(settings, name)
    before = api.verify(settings, name)
    assert before.remaining > 0 and not before.ok, before.summary()

    first = api.apply(settings, name, show_progress=False)
    assert first.result.failed == 0, first.result.failures[:3]
    after = api.verify(settings, name)
    assert after.ok, after.summary()
    assert after.checked == db[migration.collection].count_documents({})

    migrated = snapshot(db, migration.collection, *also)
    second = api.apply(settings, name, show_progress=False)
    assert (second.result.updated, second.result.deleted, second.result.failed) == (0, 0, 0)
    assert not second.resumed
    assert snapshot(db, migration.collection, *also) == migrated
    return before, first


def with_transforms(settings: Settings, directory: Path) -> Settings:
    return dataclasses.replace(settings, transforms=directory)


def write_transforms(tmp_path: Path, files: dict[str, str]) -> Path:
    directory = tmp_path / "transforms"
    directory.mkdir(exist_ok=True)
    for filename, source in files.items():
        (directory / filename).write_text(textwrap.dedent(source))
    return directory


@pytest.fixture
def demo(db) -> demo_data.DemoData:
    return demo_data.seed(db, n_users=400, seed=7)


# --------------------------------------------------------------------------- shipped migrations


def test_add_default_role_gives_every_user_a_role_and_keeps_admins(settings, db, demo):
    original = by_id(db, "users")

    before, report = migrate_and_check_idempotent(settings, db, "add_default_role")

    without_role = set(demo.users.role_missing) | set(demo.users.role_none)
    assert before.remaining == report.result.updated == len(without_role)
    users = by_id(db, "users")
    assert users.keys() == original.keys()
    for _id, user in users.items():
        expected = "admin" if _id in demo.users.admins else "user"
        assert user["role"] == expected
        assert without(user, "role") == without(original[_id], "role")
    assert sum(u["role"] == "admin" for u in users.values()) == len(demo.users.admins)


def test_remove_is_pro_removes_the_field_and_nothing_else(settings, db, demo):
    original = by_id(db, "legacy_teams")

    before, report = migrate_and_check_idempotent(settings, db, "remove_is_pro")

    assert before.remaining == report.result.updated == len(demo.legacy_teams.with_is_pro)
    for _id, team in by_id(db, "legacy_teams").items():
        assert "isPro" not in team
        assert same_bson(team, without(original[_id], "isPro"))


def test_convert_is_pro_to_plan_derives_plan_from_is_pro_in_one_patch(settings, db, demo):
    original = by_id(db, "teams")
    assert any(t.get("isPro") for t in original.values())
    assert any(t.get("isPro") is False for t in original.values())

    before, report = migrate_and_check_idempotent(settings, db, "convert_is_pro_to_plan")

    # Teams with isPro (with or without a plan already) are patched; plan-only teams are not.
    assert report.result.updated == len(demo.teams.is_pro)
    teams = by_id(db, "teams")
    assert teams.keys() == set(demo.teams.ids)
    for _id, team in teams.items():
        if _id in demo.teams.plan:
            expected = demo.teams.plan[_id]  # written by dual-read code: the truth
        else:
            expected = "pro" if demo.teams.is_pro[_id] is True else "basic"
        assert team["plan"] == expected, team
        assert "isPro" not in team
        assert without(team, "plan") == without(original[_id], "plan", "isPro")
    pro = {_id for _id, is_pro in demo.teams.is_pro.items()
           if is_pro and _id not in demo.teams.plan}
    assert pro and {_id for _id, t in teams.items() if t["plan"] == "pro"} >= pro


def test_extract_preferences_moves_each_users_preferences_once_with_identical_content(
        settings, db, demo):
    original_users = by_id(db, "users")
    app_written = {d["userId"]: d["_id"] for d in db.userPreferences.find()}
    assert demo.users.already_extracted and demo.users.only_new_format

    before, report = migrate_and_check_idempotent(
        settings, db, "extract_preferences", "userPreferences")

    assert before.remaining == report.result.updated == len(demo.users.preferences)
    for _id, user in by_id(db, "users").items():
        assert "preferences" not in user
        assert same_bson(user, without(original_users[_id], "preferences"))

    docs = list(db.userPreferences.find())
    owners = [d["userId"] for d in docs]
    assert len(owners) == len(set(owners)), "one userPreferences document per user"
    assert set(owners) == set(demo.users.preferences) | set(demo.users.only_new_format)
    for doc in docs:
        if doc["userId"] in app_written:
            assert doc["_id"] == app_written[doc["userId"]], "the application's copy stands"
        if doc["userId"] in demo.users.preferences:
            # Same fields, same order, same types as the nested document had.
            assert same_bson(without(doc, "_id", "userId"), demo.users.preferences[doc["userId"]])
    index = [i for i in db.userPreferences.list_indexes() if dict(i["key"]) == {"userId": 1}]
    assert index and index[0].get("unique") is True


def test_extract_preferences_rerun_after_a_crash_between_insert_and_patch_inserts_no_duplicate(
        settings, db, demo):
    migration = api.load(settings, "extract_preferences")
    user_id = next(i for i in demo.users.preferences if i not in demo.users.already_extracted)
    user = db.users.find_one({"_id": user_id})
    # The transform ran for real (its insert landed) but the process died before the patch.
    outcome = decide(migration, user, make_context(db, migration.name))
    assert outcome.kind == "update" and outcome.unset == ("preferences",)
    assert db.userPreferences.count_documents({"userId": user_id}) == 1
    assert "preferences" in db.users.find_one({"_id": user_id})

    report = api.apply(settings, "extract_preferences", show_progress=False)

    assert report.result.failed == 0
    assert db.userPreferences.count_documents({"userId": user_id}) == 1
    assert "preferences" not in db.users.find_one({"_id": user_id})
    moved = without(db.userPreferences.find_one({"userId": user_id}), "_id", "userId")
    assert same_bson(moved, demo.users.preferences[user_id])
    assert api.verify(settings, "extract_preferences").ok


class _LookupMisses:
    """``ctx.db`` for a run that raced another: its look-up happened before the other's insert."""

    def __init__(self, db) -> None:
        self._db = db
        self.name = db.name

    def __getitem__(self, name: str):
        collection = self._db[name]

        class Collection:
            def __getattr__(self, attr):
                if attr == "find_one":
                    return lambda *args, **kwargs: None
                return getattr(collection, attr)

        return Collection()


def test_extract_preferences_racing_itself_on_one_user_inserts_one_document(settings, db, demo):
    migration = api.load(settings, "extract_preferences")
    user = db.users.find_one({"_id": next(iter(demo.users.preferences))})
    first = decide(migration, user, make_context(db, migration.name))

    ctx = make_context(db, migration.name)
    ctx.db = _LookupMisses(db)
    second = decide(migration, user, ctx)

    assert first.kind == second.kind == "update", second.error
    assert db.userPreferences.count_documents({"userId": user["_id"]}) == 1


def test_delete_orphaned_embeddings_deletes_exactly_the_orphans(settings, db, demo):
    original = snapshot(db, "embeddings", "chunks")
    assert demo.embeddings.orphaned and demo.embeddings.referenced

    before, report = migrate_and_check_idempotent(
        settings, db, "delete_orphaned_embeddings", "chunks")

    assert before.remaining == report.result.deleted == len(demo.embeddings.orphaned)
    assert report.result.updated == 0
    remaining = set(d["_id"] for d in db.embeddings.find({}, {"_id": 1}))
    assert remaining == set(demo.embeddings.referenced)
    kept = [raw for raw in original["embeddings"]
            if bson.decode(raw)["_id"] in remaining]
    assert snapshot(db, "embeddings")["embeddings"] == kept, "survivors untouched"
    assert snapshot(db, "chunks") == {"chunks": original["chunks"]}


def test_delete_orphaned_embeddings_spares_orphans_younger_than_the_grace_period(settings, db):
    now = dt.datetime.now(dt.UTC)
    old = {"_id": ObjectId(), "model": "m", "createdAt": now - dt.timedelta(days=3)}
    fresh = {"_id": ObjectId(), "model": "m", "createdAt": now - dt.timedelta(seconds=5)}
    fresh_by_id = {"_id": ObjectId(), "model": "m"}  # no createdAt: the ObjectId's time counts
    db.embeddings.insert_many([old, fresh, fresh_by_id])
    db.chunks.insert_one({"text": "hello", "embeddingId": ObjectId()})

    report = api.apply(settings, "delete_orphaned_embeddings", show_progress=False)

    assert report.result.deleted == 1
    assert {d["_id"] for d in db.embeddings.find()} == {fresh["_id"], fresh_by_id["_id"]}


def test_backfill_small_config_through_the_cli_apply_then_verify(settings, db, demo):
    original = by_id(db, "smallConfig")

    assert api.verify(settings, "backfill_small_config").remaining == \
        len(demo.small_config.missing_new_field)

    applied = run_cli("apply", "backfill_small_config", "--quiet", settings=settings)
    assert applied.returncode == 0, applied.stderr
    assert f"updated {len(demo.small_config.missing_new_field)}," in applied.stdout

    verified = run_cli("verify", "backfill_small_config", settings=settings)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "none left to migrate" in verified.stdout

    config = by_id(db, "smallConfig")
    for _id, doc in config.items():
        expected = demo.small_config.preset.get(_id, "default")
        assert "newField" in doc and doc["newField"] == expected  # None stays None
        assert without(doc, "newField") == without(original[_id], "newField")
    assert [k for k, v in config.items() if v["newField"] is None]

    again = api.apply(settings, "backfill_small_config", show_progress=False)
    assert (again.result.updated, again.result.unchanged) == (0, len(demo.small_config.ids))


# --------------------------------------------------------------------------- dry run


def test_apply_dry_run_prints_each_patch_and_side_effect_and_writes_nothing(settings, db):
    users = demo_data.seed_users(db, 120)
    db.drop_collection("userPreferences")
    before = snapshot(db, "users")

    result = run_cli("apply", "extract_preferences", "--dry-run", settings=settings)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 120  # one per document of the first batch
    with_prefs = [line for line in lines if "$unset ['preferences']" in line]
    assert len(with_prefs) == len(users.preferences)
    assert all("would also write: " in line and "userPreferences.insert_one({'userId': ObjectId("
               in line for line in with_prefs)
    assert sum("no change" in line for line in lines) == 120 - len(users.preferences)
    assert "userPreferences.create_index('userId')" in result.stdout

    assert snapshot(db, "users") == before
    assert db.userPreferences.count_documents({}) == 0
    assert "userPreferences" not in db.list_collection_names()
    assert db[settings.state_collection].count_documents({}) == 0


# --------------------------------------------------------------------------- resume


CRASHY = """
    import os

    from cdc_migrator import migration

    _migrated = 0


    @migration(collection="items", batch_size=50)
    def tag_items(doc, ctx):
        global _migrated
        if doc.get("tag") is not None:
            return None
        if not ctx.dry_run:
            _migrated += 1
            if os.environ.get("CRASH_AFTER") and _migrated > int(os.environ["CRASH_AFTER"]):
                os._exit(9)  # the process dies mid-batch: no cleanup, no state saved
        return {"tag": "migrated", "run": os.environ["RUN"]}
"""


def test_apply_resumes_from_its_saved_position_after_the_process_died(settings, db, tmp_path):
    ids = sorted(ObjectId() for _ in range(500))
    db.items.insert_many([{"_id": _id, "n": n} for n, _id in enumerate(ids)])
    crashy = with_transforms(settings, write_transforms(tmp_path, {"crashy.py": CRASHY}))

    crashed = run_cli("apply", "tag_items", "--quiet", settings=crashy,
                      env={"CRASH_AFTER": "120", "RUN": "first"})

    assert crashed.returncode == 9, crashed.stderr
    # Batch 1 was written and its position saved; batch 3 died while it was decided, with
    # batch 2's write in flight (apply writes one batch while it decides the next): batch 2
    # may be written, and its position saved, or not. Never is a position saved past
    # documents not written.
    first = sorted(d["n"] for d in db.items.find({"run": "first"}))
    assert first in (list(range(50)), list(range(100))), first
    state = db[settings.state_collection].find_one({"_id": "tag_items"})
    saved = ids.index(state["apply"]["cursor"]) + 1
    assert saved in (50, 100) and saved <= len(first) and state["apply"]["done"] is False
    assert state["counts"]["updated"] == saved

    resumed = run_cli("apply", "tag_items", "--quiet", settings=crashy, env={"RUN": "second"})

    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from the saved position" in resumed.stdout
    assert f"scanned {500 - saved} documents; updated {500 - len(first)}," in resumed.stdout
    runs = [d["run"] for d in db.items.find(sort=[("_id", 1)])]
    assert runs == ["first"] * len(first) + ["second"] * (500 - len(first)), \
        "documents before the crash not rewritten"
    state = db[settings.state_collection].find_one({"_id": "tag_items"})
    assert state["counts"]["updated"] == 500 - len(first) + saved
    assert state["apply"]["done"] is True
    assert api.verify(crashy, "tag_items").ok


# --------------------------------------------------------------------------- user errors


def _bad_return(value: str) -> dict[str, str]:
    return {"bad.py": f"""
        from cdc_migrator import migration

        @migration(collection="items")
        def bad(doc, ctx):
            return {value}
    """}


USER_ERRORS = {
    "syntax error": ({"broken.py": "from cdc_migrator import migration\ndef oops(:\n"},
                     "bad", "SyntaxError"),
    "import error": ({"broken.py": "import no_such_module_here\n"}, "bad",
                     "ModuleNotFoundError"),
    "error at import": ({"broken.py": "raise RuntimeError('config missing')\n"}, "bad",
                        "RuntimeError: config missing"),
    "empty collection name": ({"broken.py": """
        from cdc_migrator import migration

        @migration(collection="")
        def bad(doc, ctx):
            return None
    """}, "bad", "collection="),
    "unknown name": (_bad_return("None"), "no_such_migration", "no migration named"),
    "two migrations with one name": ({**_bad_return("None"), "again.py": """
        from cdc_migrator import migration

        @migration(collection="other", name="bad")
        def something_else(doc, ctx):
            return None
    """}, "bad", "two migrations are named 'bad'"),
    "returns a list": (_bad_return("[('x', 1)]"), "bad", "returned list"),
    "returns a str": (_bad_return("'x'"), "bad", "returned str"),
    "returns an int": (_bad_return("1"), "bad", "returned int"),
    "returns an operator": (_bad_return("{'$set': {'x': 1}}"), "bad", "'$set'"),
    "returns a dotted path": (_bad_return("{'a.b': 1}"), "bad", "'a.b'"),
    "changes _id": (_bad_return("{'_id': 5}"), "bad", "_id is immutable"),
}


@pytest.mark.parametrize("files, name, message", USER_ERRORS.values(), ids=USER_ERRORS.keys())
def test_a_mistake_in_a_migration_is_one_line_exit_2_and_no_write(
        settings, db, tmp_path, files, name, message):
    db.items.insert_many([{"_id": i, "n": i} for i in range(30)])
    before = snapshot(db, "items")
    user = with_transforms(settings, write_transforms(tmp_path, files))

    result = run_cli("apply", name, settings=user)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cdc-migrator: "), result.stderr
    assert message in lines[0]
    assert snapshot(db, "items") == before
    assert db[settings.state_collection].count_documents({}) == 0


def test_migrations_mounted_from_a_kubernetes_configmap_load_once(tmp_path):
    # A ConfigMap volume (the Helm chart's `migrations.configMap`) holds each key as a link to
    # ..data/KEY, ..data a link to a hidden, timestamped directory holding the files.
    copy = tmp_path / "..2026_12_07_13_00_00.000000001"
    copy.mkdir()
    shutil.copy(ROOT / "transforms" / "add_default_role.py", copy)
    (tmp_path / "..data").symlink_to(copy.name)
    (tmp_path / "add_default_role.py").symlink_to("..data/add_default_role.py")

    assert list(load_migrations(tmp_path)) == ["add_default_role"]


FRAGILE = """
    from cdc_migrator import migration


    @migration(collection="items", batch_size=40)
    def fragile(doc, ctx):
        if doc["n"] % 7 == 3:
            raise ValueError(f"cannot migrate n={doc['n']}")
        if "done" not in doc:
            return {"done": True}
"""


def test_documents_whose_transform_raises_are_reported_and_kept_and_the_rest_migrated(
        settings, db, tmp_path):
    db.items.insert_many([{"_id": i, "n": i} for i in range(200)])
    failing = {i for i in range(200) if i % 7 == 3}
    original = snapshot(db, "items")["items"]
    user = with_transforms(settings, write_transforms(tmp_path, {"fragile.py": FRAGILE}))

    result = run_cli("apply", "fragile", "--quiet", settings=user)

    assert result.returncode == 1, result.stderr
    assert f"updated {200 - len(failing)}," in result.stdout
    assert f"failed {len(failing)}" in result.stdout
    assert "Traceback" not in result.stderr
    assert "failed 3: ValueError: cannot migrate n=3" in result.stderr
    items = by_id(db, "items")
    for i in range(200):
        if i in failing:
            assert bson.encode(items[i]) == original[i], "left exactly as it was"
        else:
            assert items[i]["done"] is True
    state = db[settings.state_collection].find_one({"_id": "fragile"})
    assert state["counts"]["failed"] == len(failing)
    assert {e["id"] for e in state["errors"]} == failing
    assert all(e["error"].startswith("ValueError: cannot migrate") for e in state["errors"])
    report = api.verify(user, "fragile")
    assert report.failing == len(failing) and report.remaining == 0 and not report.ok
