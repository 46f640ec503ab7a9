"""`apply` while the application keeps writing: guarded writes never overwrite what the
application wrote after the scan read a document, never bring a deleted document back, and a
final run leaves every document migrated.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import warnings

import bson
import hypothesis
import pytest
from hypothesis import strategies as st

from cdc_migrator import api, migration
from cdc_migrator.apply.applier import MAX_STATEMENT_BYTES, Applier, _too_large, size_bound
from cdc_migrator.base.context import make_context
from cdc_migrator.base.patch import Outcome, guard_filter
from cdc_migrator.migration import _defined

from .harness import MONGO_BASE, UsersWriter, run_cli

ROLE_FROM_TIER = """
from cdc_migrator import migration


@migration(collection="users", batch_size=100)
def role_from_tier(doc, ctx):
    if doc.get("role") is None:
        return {"role": "member" if doc.get("tier") == "free" else "user"}
"""


def role_for(tier: str) -> str:
    return "member" if tier == "free" else "user"


@migration(collection="users")
def role_from_tier(doc, ctx):
    if doc.get("role") is None:
        return {"role": role_for(doc.get("tier"))}


_defined.remove(role_from_tier)  # used directly here, never loaded from a transforms directory


def seed_users(db, n: int, rng: random.Random) -> dict[int, str]:
    tiers = {i: rng.choice(["free", "paid"]) for i in range(n)}
    db.users.insert_many([{"_id": i, "name": f"user {i}", "tier": tier}
                          for i, tier in tiers.items()])
    return tiers


def test_apply_racing_the_application_loses_no_application_write(settings, db, tmp_path):
    n = 5_000
    seeded = seed_users(db, n, random.Random(7))
    (tmp_path / "role_from_tier.py").write_text(ROLE_FROM_TIER)
    user = dataclasses.replace(settings, transforms=tmp_path)
    app = UsersWriter(MONGO_BASE, db.name, range(n), settings.state_collection,
                      "role_from_tier", random.Random(2024))

    app.start()
    try:
        racing = api.apply(user, "role_from_tier", show_progress=False)
    finally:
        app.finish()
    # Writes after the scan passed a document are not seen by this run: one more run, as a
    # user would after `verify`, finishes them.
    final = api.apply(user, "role_from_tier", show_progress=False)

    print(f"\napplication writes during apply: {app.ops:,}; "
          f"apply retried {racing.result.retried:,} guarded writes; "
          f"racing run updated {racing.result.updated:,}, final run {final.result.updated:,}")
    if racing.result.retried == 0:
        warnings.warn("the application's writes never raced a guarded write in this run",
                      stacklevel=1)
    assert app.ops > 100, "the application did write while apply ran"
    assert racing.result.failed == final.result.failed == 0

    users = {d["_id"]: d for d in db.users.find()}
    assert users.keys() == set(range(n)) - app.deleted, "nothing deleted came back"
    admins = [i for i, role in app.role.items() if role == "admin" and i not in app.deleted]
    assert admins
    for _id in admins:
        assert users[_id]["role"] == "admin", "the application's role was overwritten"
    for _id, doc in users.items():
        assert doc["tier"] == app.tier.get(_id, seeded[_id]), "the application's tier stands"
        if app.role.get(_id) != "admin":
            # Migrated from the tier the document had when the role was written.
            assert doc["role"] == role_for(doc["tier"]), doc
    assert api.verify(user, "role_from_tier").ok


# --------------------------------------------------------------------------- one stale read


def stale_batch(db, n: int = 10):
    db.users.insert_many([{"_id": i, "tier": "free" if i % 2 else "paid"} for i in range(n)])
    return list(db.users.find(sort=[("_id", 1)]))


def test_a_write_made_after_the_read_makes_the_guard_miss_and_the_document_is_redecided(db):
    docs = stale_batch(db)
    db.users.update_one({"_id": 3}, {"$set": {"role": "admin"}})  # role, read and written
    db.users.update_one({"_id": 4}, {"$set": {"tier": "free"}})  # tier, only read

    result = Applier(role_from_tier, db.users, make_context(db, "t")).apply_documents(docs)

    assert (result.updated, result.retried, result.unchanged, result.failed) == (9, 2, 0, 0)
    roles = {d["_id"]: d["role"] for d in db.users.find()}
    assert roles[3] == "admin"
    assert roles[4] == "member", "decided again from the tier the application wrote"
    assert roles[2] == "user" and roles[1] == "member"


def test_a_document_deleted_after_the_read_is_not_brought_back(db):
    docs = stale_batch(db)
    db.users.delete_one({"_id": 5})

    result = Applier(role_from_tier, db.users, make_context(db, "t")).apply_documents(docs)

    assert (result.updated, result.retried) == (9, 1)
    assert db.users.find_one({"_id": 5}) is None
    assert db.users.count_documents({"role": {"$exists": True}}) == 9


# --------------------------------------------------------------------------- statement size

_bounded_values = st.one_of(
    st.text(max_size=40), st.booleans(), st.none(), st.floats(allow_nan=True),
    st.integers(-2**63, 2**63 - 1), st.builds(bson.ObjectId), st.binary(max_size=40),
    st.datetimes(timezones=st.just(dt.UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers()),
)
_names = st.text(max_size=12).filter(lambda k: k != "_id" and "\0" not in k)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    _id=st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=20), st.builds(bson.ObjectId),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    doc=st.dictionaries(_names, _bounded_values, max_size=6),
    read=st.sets(_names, max_size=6),
    to_set=st.dictionaries(_names.filter(lambda k: k and k[0] != "$" and "." not in k),
                           _bounded_values, max_size=4),
    to_unset=st.sets(_names, max_size=3),
)
def test_the_size_bound_of_a_guarded_statement_is_never_below_its_encoded_size(
        _id, doc, read, to_set, to_unset):
    """The size check encodes a statement only when its bound does not fit: a bound below the
    real size would let a statement MongoDB refuses through unchecked."""
    doc = {"_id": _id, **doc}
    outcome = Outcome("update", _id, guard=guard_filter(doc, read | set(to_set) | to_unset),
                      set=to_set, unset=tuple(sorted(to_unset - set(to_set))))
    bound = size_bound(outcome)
    if bound is not None:
        assert bound >= len(bson.encode({"q": outcome.guard, "u": outcome.update}))


def test_a_statement_of_large_strings_is_measured_exactly_and_refused_over_the_limit():
    big = "é" * (5 * 1024 * 1024)  # 10 MiB of UTF-8, 5 Mi characters
    doc = {"_id": 1, "text": big}
    fits = Outcome("update", 1, guard=guard_filter(doc, {"text", "n"}), set={"n": 1})
    assert size_bound(fits) > MAX_STATEMENT_BYTES  # the bound is loose: the exact size decides
    assert _too_large(fits) is None
    copied = Outcome("update", 1, guard=guard_filter(doc, {"text", "copy"}), set={"copy": big})
    assert "larger than MongoDB accepts" in _too_large(copied)


# A write error the driver cannot read: one document's failure is that document's dead letter.

CODELESS = "write refused (no code): write error without a code, by the failCommand fail point"


@pytest.fixture
def codeless_write_error(mongo_client):
    """Make the local server answer every update statement on one ``_id`` with a write error
    that has no code (FailCommand's test device, docs/testing.md). pymongo's bulk API then
    raises ``KeyError: 'code'``."""
    def on(doc_id: object) -> None:
        mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                    "data": {"failCommands": ["update"],
                                             "codelessWriteErrorFor": doc_id}})
    yield on
    mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


def dead_letters(settings) -> list[dict]:
    listed = run_cli("dlq", "list", "add_default_role", "--json", settings=settings)
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_a_write_error_the_driver_cannot_read_is_that_documents_dead_letter(
        db, settings, codeless_write_error):
    failing = f"codeless-{db.name}"  # an _id no other test run on the server writes
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(150)]
                         + [{"_id": failing, "name": "fails"}]
                         + [{"_id": i, "name": f"u{i}"} for i in range(150, 299)])
    codeless_write_error(failing)

    ran = run_cli("run", "add_default_role", "--timeout", "120", "-q", settings=settings)
    letters = dead_letters(settings)
    again = run_cli("dlq", "retry", "add_default_role", settings=settings)

    assert ran.returncode == 1 and "1 failed documents unresolved" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr + again.stderr
    assert db.users.count_documents({"role": "user"}) == 299
    assert [(letter["id"], letter["error"]) for letter in letters] == [(repr(failing), CODELESS)]
    assert again.returncode == 1 and f"failed again {failing!r}: {CODELESS}" in again.stderr
    db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    retried = run_cli("dlq", "retry", "add_default_role", settings=settings)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert db.users.count_documents({"role": "user"}) == 300


def test_apply_writes_the_rest_of_a_batch_whose_bulk_write_the_driver_cannot_read(
        db, settings, codeless_write_error):
    failing = f"codeless-{db.name}"
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(249)]
                         + [{"_id": failing, "name": "fails"}])
    codeless_write_error(failing)

    applied = run_cli("apply", "add_default_role", "-q", settings=settings)

    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert f"failed {failing!r}: {CODELESS}" in applied.stderr, applied.stderr
    assert "Traceback" not in applied.stderr
    assert db.users.count_documents({"role": "user"}) == 249
    assert db.users.find_one({"_id": failing}) == {"_id": failing, "name": "fails"}
