"""Pattern: splitting a field, with its inverse — ``full_name`` becomes ``first_name`` and
``last_name``; ``join_full_name`` puts ``full_name`` back (``cdc-migrator revert``).

The split is at the first space: ``"Ada King Lovelace"`` -> ``"Ada"``, ``"King Lovelace"``. A
name without a space has ``last_name`` None, so that the join can tell ``"Ada"`` from
``"Ada "`` (whose ``last_name`` is ``""``): joining gives back exactly the string split, which
``verify --reversible`` proves shape by shape. A ``full_name`` that is not a string is left
alone (``census`` shows such documents breaking the contract schema: no ``first_name``).

Deploy 1 (dual read): the application reads ``first_name``/``last_name`` when present, else
splits ``full_name``, and writes only ``first_name``/``last_name``. It must not write both
shapes into one document: such a document does not come back through the inverse
(``full_name`` and the two new fields cannot all be kept), and census says so for its shape.
Migration: split, and remove ``full_name``, in one guarded patch; a person whose split fields
the application wrote already keeps them, and only loses the stale ``full_name``.
Deploy 2 (after cutover): the application reads and writes only the two fields.
Revert: deploy code that reads both shapes again (Deploy 1), then `cdc-migrator revert
split_full_name`; once it exits 0, every person has ``full_name`` and no split fields, and the
application may go back to the code from before Deploy 1. The revert ends by installing
``people.old.json`` (the old shape: no split fields) as the validator, so that a write still in
the new shape is refused by the server rather than left unmigrated.
"""

from cdc_migrator import UNSET, migration


@migration(collection="people", expand_schema="people.expand.json",
           contract_schema="people.contract.json", old_schema="people.old.json")
def split_full_name(doc, ctx):
    full = doc.get("full_name")
    if "first_name" in doc:  # written by the application (Deploy 1): the split is the truth
        return {"full_name": UNSET}
    if not isinstance(full, str):
        return None
    first, space, last = full.partition(" ")
    return {"first_name": first, "last_name": last if space else None, "full_name": UNSET}


@split_full_name.down
def join_full_name(doc, ctx):
    if "first_name" not in doc:
        return None
    first, last = doc["first_name"], doc.get("last_name")
    if not isinstance(first, str) or not (last is None or isinstance(last, str)):
        raise ValueError(f"cannot join first_name {first!r} and last_name {last!r}")
    full = first if last is None else f"{first} {last}"
    return {"full_name": full, "first_name": UNSET, "last_name": UNSET}
