"""A rolling upgrade of a running migration's code, under application writes: members running
the new code hold until `accept`; then the old ones hold, the backfill runs again, and every
document ends right by the new code."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import textwrap

from cdc_migrator.base import topics
from cdc_migrator.core.fingerprint import fingerprint, short
from cdc_migrator.core.history import Event
from cdc_migrator.core.state import StateStore
from cdc_migrator.migration import get_migration

from ..harness import (
    CliProcess,
    ItemsWriter,
    Service,
    run_cli,
    seed_items,
    wait_for,
    write_transforms,
)

NAME = "price_total"
V1 = textwrap.dedent('''
    from cdc_migrator import migration, UNSET

    @migration(collection="items", batch_size=500)
    def price_total(doc, ctx):
        """total = price * qty, and the legacy flag goes."""
        total = doc["price"] * doc["qty"]
        if doc.get("total") != total or "legacy" in doc:
            return {"total": total, "legacy": UNSET}
''')
# The fix rolled out: the total in cents too. A comment and a docstring changed as well, which
# alone would change nothing.
V2 = textwrap.dedent('''
    from cdc_migrator import migration, UNSET

    @migration(collection="items", batch_size=500)
    def price_total(doc, ctx):
        """total = price * qty (and in cents), and the legacy flag goes."""
        total = doc["price"] * doc["qty"]
        # billing reads cents
        if doc.get("total") != total or doc.get("totalCents") != total * 100 \\
                or "legacy" in doc:
            return {"total": total, "totalCents": total * 100, "legacy": UNSET}
''')


def _versions(tmp_path, settings):
    """The settings of the old code and of the new code (two transforms directories)."""
    old, new = tmp_path / "v1" / "transforms", tmp_path / "v2" / "transforms"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    write_transforms(new, settings, {"items.py": V2})
    v2 = dataclasses.replace(settings)
    write_transforms(old, settings, {"items.py": V1})
    return settings, v2


def _members(db) -> dict[str, dict]:
    return (StateStore(db).collection.find_one({"_id": NAME}) or {}).get("code", {}).get(
        "members", {})


def _holding(db, fp: str) -> set[str]:
    return {m for m, r in _members(db).items() if r["fingerprint"] == fp and r["holding"]}


def _status(settings) -> dict:
    result = run_cli("status", NAME, "--json", settings=settings)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_new_code_holds_until_accept_then_every_document_is_right_by_it(db, settings,
                                                                       tmp_path):
    seed = int(os.environ.get("CDC_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed={seed}")
    v1, v2 = _versions(tmp_path, settings)
    old_fp = fingerprint(get_migration(v1.transforms, NAME), v1.schemas)
    new_fp = fingerprint(get_migration(v2.transforms, NAME), v2.schemas)
    assert old_fp != new_fp
    coll = db.items
    expected = seed_items(coll, random.Random(seed), 3000)
    writer = ItemsWriter(coll, random.Random(seed + 1), next_id=3000, expected=expected,
                         pace=0.002)
    tail = CliProcess(v1, "tail", NAME)
    old_consumer = Service(v1, "consume", NAME, "--instance-id", "c0")
    procs = [tail, old_consumer]
    try:
        writer.start()
        assert run_cli("backfill", NAME, "-q", settings=v1).returncode == 0
        # Applied up to where the topic ended when the backfill did. (Not "zero lag": under
        # the writer's steady changes the lag is 0 only between two events, which a loaded
        # machine may not show for minutes.)
        topic, group = v1.topic("items"), v1.group(NAME)
        ends = {p.partition: p.end for p in topics.group_lag(v1, topic, group).partitions}
        wait_for(lambda: all((p.committed or 0) >= ends.get(p.partition, 0)
                             for p in topics.group_lag(v1, topic, group).partitions),
                 timeout=180, what="the old consumer applied the backfill")

        # Rolling upgrade, first member: the new code joins the group and holds.
        new_consumer = Service(v2, "consume", NAME, "--instance-id", "c1")
        procs.append(new_consumer)
        wait_for(lambda: "consumer@c1" in _holding(db, new_fp), what="the new consumer holding")
        group = topics.group_lag(v1, v1.topic("items"), v1.group(NAME))
        wait_for(lambda: topics.group_lag(v1, v1.topic("items"), v1.group(NAME)).total >= 50,
                 what=f"events waiting on the new consumer's partitions (lag {group.total})")
        assert coll.count_documents({"totalCents": {"$exists": True}}) == 0  # held: none applied
        status = _status(v2)
        members = {m["member"]: m for m in status["code"]["members"]}
        assert members["consumer@c1"]["holding"] and members["consumer@c1"]["fingerprint"] \
            == new_fp
        assert not members["consumer@c0"]["holding"]
        assert status["code"]["fingerprint"] == old_fp and status["code"]["differs"]
        metrics = new_consumer.metrics()
        assert metrics[("cdc_migrator_code_holding", frozenset({("migration", NAME)}))] == 1
        assert metrics[("cdc_migrator_code_info", frozenset({
            ("migration", NAME), ("loaded", short(new_fp)), ("in_force", short(old_fp))}))] == 1
        code, reason = new_consumer.get("/readyz")
        assert code == 503 and f"migration {NAME} holds" in reason, reason
        rendered = run_cli("status", NAME, settings=v2).stdout
        assert f"consumer@c1 {short(new_fp)} HOLDING" in rendered
        assert f"`cdc-migrator accept {NAME}` takes it" in rendered

        # The operator takes the new code: the old members hold, the backfill runs again.
        accepted = run_cli("accept", NAME, "-q", settings=v2, timeout=300)
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        assert f"accepted the code of fingerprint {short(new_fp)} (was {short(old_fp)})" \
            in accepted.stdout
        assert {"consumer@c0"} <= _holding(db, old_fp)
        assert any(m.startswith("tailer@") for m in _holding(db, old_fp))
        wait_for(lambda: new_consumer.get("/readyz")[0] == 200, what="the new consumer ready")
        assert new_consumer.metrics()[("cdc_migrator_code_holding",
                                       frozenset({("migration", NAME)}))] == 0

        # The rest of the rollout: the old members come back with the new code.
        for proc in (tail, old_consumer):
            assert proc.stop() == 0, proc.log[-2000:]
        procs += [CliProcess(v2, "tail", NAME), Service(v2, "consume", NAME, "--instance-id",
                                                        "c0")]
        wait_for(lambda: not _holding(db, old_fp) and not _holding(db, new_fp),
                 what="no member holding")
    finally:
        writer.finish()
    try:
        done = run_cli("cutover", NAME, "--timeout", "120s", settings=v2, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        for proc in procs:
            proc.stop()
    print(f"seed={seed}: writer ops {writer.ops}")
    docs = {d["_id"]: d for d in coll.find()}
    assert not (writer.deleted & docs.keys()), "a deleted document came back"
    assert docs.keys() == writer.expected.keys()
    wrong = [i for i, (price, qty) in writer.expected.items()
             if (docs[i]["price"], docs[i]["qty"]) != (price, qty) or "legacy" in docs[i]
             or docs[i].get("total") != price * qty
             or docs[i].get("totalCents") != price * qty * 100]
    assert not wrong, f"{len(wrong)} documents wrong, e.g. {docs[wrong[0]]}"
    assert run_cli("verify", NAME, settings=v2).returncode == 0
    stale = run_cli("verify", NAME, settings=v1)
    assert stale.returncode == 1 and "EDITED AFTER CUTOVER" in stale.stdout
    assert f"was cut over with the code of fingerprint {short(new_fp)}" in stale.stdout
    events = [(e.event, e.fingerprint) for e in StateStore(db).history.entries("items")]
    assert events[0] == (Event.ARMED, old_fp)
    assert (Event.ACCEPTED, new_fp) in events and events[-1] == (Event.CUT_OVER, new_fp)
