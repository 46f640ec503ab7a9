"""The shipped migrations (one per common pattern, see docs/writing-migrations.md) on the demo
dataset, through `apply` and the command line.

Everything runs against the real local MongoDB; each test has its own database."""

from __future__ import annotations

import datetime as dt

import bson
import pytest
from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from cdc_migrator import api, demo_data
from cdc_migrator.base.settings import Settings
from cdc_migrator.core.context import make_context
from cdc_migrator.core.patch import decide

from ..harness import run_cli

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


# --------------------------------------------------------------------------- resume


# --------------------------------------------------------------------------- user errors


