"""The order of a collection's migrations: after= chains, file order without it; a fork, a
cycle, an after= naming no migration of the collection refused in one line."""

from __future__ import annotations

import textwrap

import pytest

from cdc_migrator.core.order import series
from cdc_migrator.errors import UsageError
from cdc_migrator.migration import load_migrations


def _migrations(tmp_path, files: dict[str, list[tuple[str, str, str | None]]]):
    """Files of migrations (name, collection, after), loaded."""
    for file, defined in files.items():
        lines = ["from cdc_migrator import migration", ""]
        for name, collection, after in defined:
            after_arg = f", after={after!r}" if after else ""
            lines += [f"@migration(collection={collection!r}{after_arg})",
                      f"def {name}(doc, ctx):", "    return None", ""]
        (tmp_path / file).write_text(textwrap.dedent("\n".join(lines)))
    return load_migrations(tmp_path)


def _names(tmp_path, files, collection="users") -> list[str]:
    return [m.name for m in series(_migrations(tmp_path, files), collection)]


def test_without_after_the_order_is_the_file_order(tmp_path):
    assert _names(tmp_path, {"b.py": [("second", "users", None)],
                             "a.py": [("first", "users", None), ("elsewhere", "teams", None)],
                             "c.py": [("third", "users", None)]}) == ["first", "second", "third"]


def test_after_puts_a_migration_behind_the_one_it_names_whatever_its_file(tmp_path):
    assert _names(tmp_path, {
        "0001_z.py": [("add_status", "users", "add_role")],
        "0002_y.py": [("drop_legacy", "users", "add_status")],
        "add_role.py": [("add_role", "users", None)],
    }) == ["add_role", "add_status", "drop_legacy"]


def test_a_migration_without_after_follows_the_last_one_without_after(tmp_path):
    # rename follows add_role (after=), fill follows add_role too by file order: a fork...
    files = {"a.py": [("add_role", "users", None)], "b.py": [("rename", "users", "add_role")],
             "c.py": [("fill", "users", None)]}
    with pytest.raises(UsageError) as refused:
        series(_migrations(tmp_path, files), "users")
    assert str(refused.value) == (
        "the order of users forks: rename and fill (by file order: it declares no after) "
        "follow add_role; give one of them after= the other")


def test_two_migrations_after_the_same_one_are_a_fork(tmp_path):
    files = {"a.py": [("add_role", "users", None), ("b1", "users", "add_role"),
                      ("b2", "users", "add_role"), ("b3", "users", "add_role")]}
    with pytest.raises(UsageError, match="forks: b1, b2 and b3 follow add_role"):
        series(_migrations(tmp_path, files), "users")


def test_a_cycle_is_refused_naming_it(tmp_path):
    files = {"a.py": [("first", "users", None), ("x", "users", "z"), ("y", "users", "x"),
                      ("z", "users", "y")]}
    with pytest.raises(UsageError) as refused:
        series(_migrations(tmp_path, files), "users")
    message = str(refused.value)
    assert message.startswith("the order of users has a cycle: ")
    assert message.split(": ", 1)[1] in ("x -> y -> z -> x", "y -> z -> x -> y",
                                         "z -> x -> y -> z")
    assert "\n" not in message


def test_after_must_name_a_migration_of_the_same_collection(tmp_path):
    files = {"a.py": [("add_owner", "teams", None), ("add_role", "users", "add_owner"),
                      ("add_plan", "users", "add_plna")]}
    migrations = _migrations(tmp_path, files)
    with pytest.raises(UsageError, match="add_role declares after='add_owner', a migration of "
                                         "teams: it must name a migration of users"):
        series(migrations, "users")
    assert [m.name for m in series(migrations, "teams")] == ["add_owner"]


def test_a_migration_cannot_follow_itself(tmp_path):
    with pytest.raises(UsageError, match="after= names the migration itself"):
        _migrations(tmp_path, {"a.py": [("loop", "users", "loop")]})
