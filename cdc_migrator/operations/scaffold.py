"""``cdc-migrator init``: a new migration file to fill in, its schema stubs, a test stub."""

from __future__ import annotations

import json
import keyword
import os
from pathlib import Path

from ..errors import UsageError

MIGRATION_TEMPLATE = '''\
"""{name}: TODO say in one line what changes in each document of {collection}.

Deploy 1 (before the migration): the application handles both shapes: it writes both and
reads the old one (dual write, preferred), or reads both and writes the new one (dual read).
schemas/{name}.expand.json describes the collection meanwhile.
Migration: TODO what the transform changes, and which documents it leaves alone.
Deploy 2 (after `cdc-migrator cutover {name}`): the application relies on the new shape,
described by schemas/{name}.contract.json.

Try it without writing anything: cdc-migrator apply {name} --dry-run
"""

from cdc_migrator import migration


@migration(
    collection={collection},
    expand_schema="{name}.expand.json",
    contract_schema="{name}.contract.json",  # `verify` checks it, `cutover` applies it
)
def {name}(doc, ctx):
    """Return the patch that migrates ``doc``, or None when it needs nothing.

    A patch sets top-level fields ({{"field": value}}); {{"field": UNSET}} removes one and
    returning DELETE deletes the document (both from cdc_migrator). Return None for a document
    already in the new shape: the transform runs again on documents written meanwhile.
    ctx.db is the database, for look-ups and writes to other collections.
    """
    # TODO: for example, give every document a status:
    #     if doc.get("status") is None:
    #         return {{"status": "active"}}
    return None
'''

TEST_TEMPLATE = '''\
"""The {name} migration's transform on sample documents (no services needed)."""

from pathlib import Path

from cdc_migrator.migration import get_migration

TRANSFORMS = Path(__file__).resolve().parent / {transforms}
{name} = get_migration(TRANSFORMS, "{name}")


def test_{name}_migrates_a_document_in_the_old_shape():
    old = {{"_id": 1}}  # TODO: a document as the application wrote it before
    assert {name}(old, None) is None  # TODO: the patch it needs, e.g. {{"status": "active"}}


def test_{name}_leaves_a_migrated_document_alone():
    new = {{"_id": 2}}  # TODO: a document in the new shape
    assert {name}(new, None) is None
'''


def schema_stub(collection: str, when: str) -> dict:
    """A ``$jsonSchema`` every document passes, to be narrowed to the shape it describes."""
    return {"bsonType": "object",
            "description": f"{collection} {when}: TODO list its fields under properties "
                           "and required",
            "required": ["_id"], "properties": {}}


def init_migration(name: str, collection: str, transforms: Path,
                   test_path: Path | None = None) -> list[Path]:
    """Write ``transforms/NAME.py``, its two schema stubs and, optionally, a test stub.

    Schemas go to ``schemas/`` beside the transforms directory, where ``verify`` and
    ``cutover`` look them up. Refuses (UsageError) when NAME is not a Python identifier or
    any file exists already; returns the files written.
    """
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"{name!r} is not a valid Python identifier: use letters, digits and "
                         "underscores, not starting with a digit")
    if not collection or "$" in collection or "\0" in collection:
        raise UsageError(f"{collection!r} is not a valid collection name")
    schemas = Path(transforms).resolve().parent / "schemas"
    files = {Path(transforms) / f"{name}.py": MIGRATION_TEMPLATE.format(
        name=name, collection=json.dumps(collection))}
    for stage, when in (("expand", f"during {name}"), ("contract", f"after {name}")):
        files[schemas / f"{name}.{stage}.json"] = json.dumps(
            schema_stub(collection, when), indent=2) + "\n"
    if test_path is not None:
        relative = os.path.relpath(Path(transforms).resolve(), test_path.resolve().parent)
        files[test_path] = TEST_TEMPLATE.format(name=name, transforms=json.dumps(relative))
    existing = [str(p) for p in files if p.exists()]
    if existing:
        raise UsageError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}"
                         "; choose another name or remove it")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
