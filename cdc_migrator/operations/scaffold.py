"""``cdc-migrator init``: a new migration file to fill in, its schema stubs, a test stub.

The file is named ``STAMP_NAME.py``, STAMP the time of its creation (UTC, to the second, and
later than every stamp in the directory), so file order is creation order; its ``after=``
names the last migration of the collection (see :mod:`cdc_migrator.core.order`).
"""

from __future__ import annotations

import datetime as dt
import json
import keyword
import os
import re
from pathlib import Path

from ..core.order import series
from ..errors import UsageError
from ..migration import Migration, load_migrations

#: How ``init`` stamps a file name: sortable, to the second.
STAMP_FORMAT = "%Y%m%d%H%M%S"
_STAMPED = re.compile(r"^(\d{14})_(.+)\.py$")

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
    collection={collection},{after}
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
    """Write ``transforms/STAMP_NAME.py`` (following the collection's last migration), its
    two schema stubs and, optionally, a test stub.

    Schemas go to ``schemas/`` beside the transforms directory, where ``verify`` and
    ``cutover`` look them up. Refuses (UsageError) when NAME is not a Python identifier, a
    migration or file of that name exists already, or the collection's order is broken (a
    fork, a cycle); returns the files written.
    """
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"{name!r} is not a valid Python identifier: use letters, digits and "
                         "underscores, not starting with a digit")
    if not collection or "$" in collection or "\0" in collection:
        raise UsageError(f"{collection!r} is not a valid collection name")
    schemas = Path(transforms).resolve().parent / "schemas"
    existing_migrations = _existing(Path(transforms), name)
    order = series(existing_migrations, collection)
    after = f"\n    after={json.dumps(order[-1].name)},  # runs once {order[-1].name} has cut " \
        "over" if order else ""
    stamp = _stamp(Path(transforms))
    files = {Path(transforms) / f"{stamp}_{name}.py": MIGRATION_TEMPLATE.format(
        name=name, collection=json.dumps(collection), after=after)}
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


def _existing(transforms: Path, name: str) -> dict[str, Migration]:
    """The migrations of the directory (none when it does not exist yet); a UsageError when
    one of them, or a file of its own, is called ``name`` already."""
    if not transforms.is_dir():
        return {}
    taken = [p for p in transforms.glob("*.py")
             if p.stem == name or ((m := _STAMPED.match(p.name)) and m.group(2) == name)]
    if taken:
        raise UsageError(f"{taken[0]} already exists; choose another name or remove it")
    found = load_migrations(transforms)
    if name in found:
        raise UsageError(f"a migration named {name!r} exists already in "
                         f"{found[name].source or transforms}; choose another name")
    return found


def _stamp(transforms: Path) -> str:
    """Now, as a file name's stamp, later than every stamp in ``transforms``."""
    stamp = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
    stamps = [m.group(1) for p in transforms.glob("*.py") if (m := _STAMPED.match(p.name))] \
        if transforms.is_dir() else []
    if stamps:
        latest = dt.datetime.strptime(max(stamps), STAMP_FORMAT)
        stamp = max(stamp, latest + dt.timedelta(seconds=1))
    return stamp.strftime(STAMP_FORMAT)
