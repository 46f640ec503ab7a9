"""A migration's fingerprint: what can change a patch changes it, what cannot does not."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from cdc_migrator.core.fingerprint import fingerprint, short
from cdc_migrator.migration import load_migrations

BASE = '''
import datetime as dt

from cdc_migrator import migration, UNSET

GRACE = dt.timedelta(minutes=15)
LABELS = {"pro": "Pro", "basic": "Basic"}


def label_of(plan):
    return LABELS.get(plan, "?")


def owners_of(team, ctx):
    return [team["_id"]]


@migration(collection="teams", filter={"isPro": {"$exists": True}},
           contract_schema="teams.contract.json", depends_on={"owners": owners_of})
def convert(doc, ctx):
    """Turn isPro into a plan."""
    plan = "pro" if doc.get("isPro") else "basic"
    return {"plan": plan, "label": label_of(plan), "isPro": UNSET}


@convert.down
def unconvert(doc, ctx):
    return {"isPro": doc.get("plan") == "pro", "plan": UNSET, "label": UNSET}


@migration(collection="teams")
def other(doc, ctx):
    return {"seen": True} if "seen" not in doc else None
'''
SCHEMA = {"bsonType": "object", "required": ["_id", "plan"]}


def _fingerprints(tmp_path: Path, source: str, schema: object = SCHEMA,
                  schema_text: str | None = None) -> dict[str, str]:
    root = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
    (root / "transforms").mkdir(parents=True)
    (root / "schemas").mkdir()
    (root / "transforms" / "teams.py").write_text(textwrap.dedent(source))
    (root / "schemas" / "teams.contract.json").write_text(
        schema_text if schema_text is not None else json.dumps(schema))
    return {name: fingerprint(m, root / "schemas")
            for name, m in load_migrations(root / "transforms").items()}


def _edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new)


@pytest.mark.parametrize("edit", [
    pytest.param(("    plan = \"pro\"", "    # the plan the team pays for\n    plan = \"pro\""),
                 id="a comment"),
    pytest.param(('"""Turn isPro into a plan."""', '"""Turn isPro into a plan: docs."""'),
                 id="the transform's docstring"),
    pytest.param(('return {"plan": plan, "label": label_of(plan), "isPro": UNSET}',
                  'return {\n        "plan": plan,\n        "label": label_of(plan),\n'
                  '        "isPro": UNSET,\n    }'), id="formatting"),
    pytest.param(("\n\n@convert.down", "\n\n\n\n@convert.down"), id="blank lines"),
    pytest.param(('@migration(collection="teams", filter={"isPro": {"$exists": True}},',
                  '@migration(collection="teams", filter={"isPro": {"$exists": True}},'
                  ' batch_size=50,'), id="batch_size"),
    pytest.param(('def owners_of(team, ctx):\n    return [team["_id"]]\n',
                  'def owners_of(team, ctx):\n    """Who owns it."""\n'
                  '    return [team["_id"]]\n'), id="a helper's docstring"),
    pytest.param(('def other(doc, ctx):\n    return {"seen": True} if "seen" not in doc '
                  'else None', 'def other(doc, ctx):\n    return {"seen": 1}'),
                 id="another migration of the file"),
    pytest.param(('LABELS = {"pro": "Pro", "basic": "Basic"}\n\n\ndef label_of(plan):\n'
                  '    return LABELS.get(plan, "?")\n',
                  'def label_of(plan):\n    return LABELS.get(plan, "?")\n\n\n'
                  'LABELS = {"pro": "Pro", "basic": "Basic"}\n'), id="the order of definitions"),
])
def test_a_change_that_cannot_matter_keeps_the_fingerprint(tmp_path, edit):
    before = _fingerprints(tmp_path, BASE)["convert"]
    after = _fingerprints(tmp_path, _edited(*edit))["convert"]

    assert after == before


@pytest.mark.parametrize("edit", [
    pytest.param(('"pro" if doc.get("isPro") else "basic"',
                  '"pro" if doc.get("isPro") is True else "basic"'), id="the transform"),
    pytest.param(('return LABELS.get(plan, "?")', 'return LABELS.get(plan, "-")'),
                 id="a helper it calls"),
    pytest.param(('"basic": "Basic"}', '"basic": "Free"}'), id="a constant the helper reads"),
    pytest.param(('return {"isPro": doc.get("plan") == "pro"',
                  'return {"isPro": doc.get("plan") != "basic"'), id="the inverse"),
    pytest.param(('filter={"isPro": {"$exists": True}}', 'filter={"isPro": {"$ne": None}}'),
                 id="the filter"),
    pytest.param(('return [team["_id"]]', 'return [team["teamId"]]'),
                 id="a depends_on function"),
    pytest.param(('depends_on={"owners": owners_of}', 'depends_on={"owners": "teamId"}'),
                 id="depends_on itself"),
    pytest.param(('import datetime as dt\n', 'import datetime as dt\n'
                  'from cdc_migrator import DELETE as UNSET\n'), id="what a name imports"),
    pytest.param(('@migration(collection="teams", filter',
                  '@migration(collection="squads", filter'), id="the collection"),
])
def test_a_change_of_what_runs_changes_the_fingerprint(tmp_path, edit):
    before = _fingerprints(tmp_path, BASE)
    after = _fingerprints(tmp_path, _edited(*edit))

    assert after["convert"] != before["convert"]
    assert after["other"] == before["other"]  # its neighbour in the file is not concerned


def test_the_contract_schema_counts_by_content_not_by_layout(tmp_path):
    before = _fingerprints(tmp_path, BASE)["convert"]
    relaid = _fingerprints(tmp_path, BASE, schema_text=json.dumps(
        {"required": ["_id", "plan"], "bsonType": "object"}, indent=4))["convert"]
    stricter = _fingerprints(tmp_path, BASE, schema={**SCHEMA, "required": ["_id", "plan",
                                                                            "label"]})["convert"]

    assert relaid == before
    assert stricter != before


def test_a_process_names_the_code_it_loaded_even_after_the_file_changed(tmp_path):
    root = tmp_path / "transforms"
    root.mkdir()
    path = root / "teams.py"
    path.write_text(textwrap.dedent(BASE))
    loaded = load_migrations(root)["convert"]
    before = fingerprint(loaded, tmp_path / "schemas")

    path.write_text(textwrap.dedent(_edited('else "basic"', 'else "free"')))

    assert fingerprint(loaded, tmp_path / "schemas") == before
    assert fingerprint(load_migrations(root)["convert"], tmp_path / "schemas") != before


def test_values_a_factory_closes_over_count(tmp_path):
    source = '''
        from cdc_migrator import migration

        def defaulting(field, value):
            def transform(doc, ctx):
                return {field: value} if field not in doc else None
            return transform

        add_role = migration(collection="users", name="add_role")(defaulting("role", "user"))
    '''
    before = _fingerprints(tmp_path, source)["add_role"]
    after = _fingerprints(tmp_path, source.replace('"user"', '"member"'))["add_role"]

    assert after != before


def test_the_shown_fingerprint_is_its_first_twelve_hex_digits():
    assert short("0123456789abcdef" * 4) == "0123456789ab"
    assert short(None) == "none"


def test_a_function_closing_over_itself_has_a_fingerprint(tmp_path):
    source = '''
        from cdc_migrator import migration

        def flattening(field):
            def flat(value):
                return [x for v in value for x in flat(v)] if isinstance(value, list) else [value]

            def transform(doc, ctx):
                return {field: flat(doc[field])} if flat(doc[field]) != doc[field] else None
            return transform

        flatten_tags = migration(collection="posts", name="flatten_tags")(flattening("tags"))
    '''
    before = _fingerprints(tmp_path, source)["flatten_tags"]

    assert _fingerprints(tmp_path, source)["flatten_tags"] == before
    assert _fingerprints(tmp_path, source.replace("[value]", "[str(value)]"))["flatten_tags"] \
        != before
