"""`apply`, the small-collection shortcut: scan and patch in one process, resumable, its dry run
writing nothing, a mistake in a migration one line, a slow rate riding out dying cursors."""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
from pathlib import Path

import bson
import pytest
from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from cdc_migrator import api, demo_data
from cdc_migrator.base.settings import Settings
from cdc_migrator.migration import load_migrations

from ..harness import (
    ROOT,
    private_settings,
    run_cli,
    seed_legacy,
)


def test_apply_at_a_rate_slower_than_the_cursor_timeout_migrates_every_document(short_cursors,
                                                                                tmp_path):
    settings = private_settings(short_cursors, tmp_path)
    seed_legacy(settings.db.items, 6)
    # Two documents per batch at 2/0.9 s: each getMore comes 0.9 s after the last, > 0.6 s.
    report = api.apply(settings, "price_total", batch_size=2, rate=2 / 0.9,
                       show_progress=False)
    assert report.scanned == 6 and report.result.updated == 6
    assert settings.db.items.count_documents({"legacy": {"$exists": True}}) == 0
    settings.close()


RAW = CodecOptions(document_class=RawBSONDocument)


def snapshot(db, *names: str) -> dict[str, list[bytes]]:
    """The exact bytes of every document of each collection, in _id order."""
    return {name: [d.raw for d in db.get_collection(name, codec_options=RAW).find(
        sort=[("_id", 1)])] for name in names}


def by_id(db, name: str) -> dict:
    return {d["_id"]: d for d in db[name].find()}


def with_transforms(settings: Settings, directory: Path) -> Settings:
    return dataclasses.replace(settings, transforms=directory)


def write_transforms(tmp_path: Path, files: dict[str, str]) -> Path:
    directory = tmp_path / "transforms"
    directory.mkdir(exist_ok=True)
    for filename, source in files.items():
        (directory / filename).write_text(textwrap.dedent(source))
    return directory


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


# A migration that cannot be loaded is a usage error (exit 2): the command cannot start. A
# return value that is no patch shows only on a document, at any point of the run: the run
# fails (exit 1), as it would after a million documents.
FAILS_AT_RUN_TIME = {"returns a list", "returns a str", "returns an int", "returns an operator",
                     "returns a dotted path", "changes _id"}


@pytest.mark.parametrize("files, name, message", USER_ERRORS.values(), ids=USER_ERRORS.keys())
def test_a_mistake_in_a_migration_is_one_line_exit_2_or_1_and_no_write(
        request, settings, db, tmp_path, files, name, message):
    db.items.insert_many([{"_id": i, "n": i} for i in range(30)])
    before = snapshot(db, "items")
    user = with_transforms(settings, write_transforms(tmp_path, files))
    expected = 1 if request.node.callspec.id in FAILS_AT_RUN_TIME else 2

    result = run_cli("apply", name, settings=user)

    assert result.returncode == expected, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cdc-migrator: "), result.stderr
    assert message in lines[0]
    assert snapshot(db, "items") == before
    assert db[settings.state_collection].count_documents({}) == 0


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


def test_migrations_mounted_from_a_kubernetes_configmap_load_once(tmp_path):
    # A ConfigMap volume (the Helm chart's `migrations.configMap`) holds each key as a link to
    # ..data/KEY, ..data a link to a hidden, timestamped directory holding the files.
    copy = tmp_path / "..2026_12_07_13_00_00.000000001"
    copy.mkdir()
    shutil.copy(ROOT / "transforms" / "add_default_role.py", copy)
    (tmp_path / "..data").symlink_to(copy.name)
    (tmp_path / "add_default_role.py").symlink_to("..data/add_default_role.py")

    assert list(load_migrations(tmp_path)) == ["add_default_role"]
