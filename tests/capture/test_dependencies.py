"""Migrations that read other collections (``depends_on``): a write to the other collection
during the window makes the affected documents due again, through the tailer's own stream."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import textwrap
import threading
import uuid

import pytest
from bson import ObjectId

from cdc_migrator import api
from cdc_migrator.apply.consumer import TransformConsumer
from cdc_migrator.base.settings import Settings
from cdc_migrator.base.threads import Threads
from cdc_migrator.capture.tailer import Tailer
from cdc_migrator.core import events
from cdc_migrator.errors import UsageError
from cdc_migrator.migration import get_migration, load_migrations
from cdc_migrator.pipeline import run_pipeline
from cdc_migrator.pipeline import wait_drained as drained_by_run

from ..harness import KAFKA, ROOT, AppWriter, part_of, run_cli, wait_for

OLD = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)  # older than the orphan pattern's grace period
REFERENCES = "cdc_migrator_references"  # the reference map (base/naming.py)
MIB = 1 << 20


# --------------------------------------------------------------------------- declarations


def _write(tmp_path, source: str):
    (tmp_path / "m.py").write_text(textwrap.dedent(source))
    return tmp_path


@pytest.mark.parametrize("declaration, complaint", [
    ('["chunks"]', "depends_on must be a dict"),
    ('{"chunks": "meta.embeddingId"}', "must be a top-level field"),
    ('{"chunks": "$embeddingId"}', "must be a top-level field"),
    ('{"chunks": "_id"}', "must be a top-level field"),
    ('{"chunks": ""}', "must be a top-level field"),
    ('{"embeddings": "x"}', "is the migrated collection itself"),
    ('{"cdc_migrator_state": "x"}', "is a collection of the tool"),
    ('{"": "x"}', "is not a collection name"),
    ('{"chunks": 3}', "must be a field name or a function"),
    ('{"chunks": lambda doc: [doc["_id"]]}', "must take (changed_doc, ctx)"),
])
def test_a_wrong_depends_on_is_one_line_at_load_time(tmp_path, declaration, complaint):
    directory = _write(tmp_path, f'''
        from cdc_migrator import migration

        @migration(collection="embeddings", depends_on={declaration})
        def m(doc, ctx):
            return None
    ''')
    with pytest.raises(UsageError) as raised:
        load_migrations(directory)
    message = str(raised.value)
    assert complaint in message and "\n" not in message and "m.py: @migration" in message


def test_a_wrong_depends_on_stops_the_command_line_with_exit_2_and_no_traceback(
        tmp_path, settings, db):
    db.embeddings.insert_one({"_id": 1})
    directory = _write(tmp_path, '''
        from cdc_migrator import migration

        @migration(collection="embeddings", depends_on={"chunks": "a.b"})
        def m(doc, ctx):
            return None
    ''')
    result = run_cli("apply", "m", "--dry-run", "--transforms", str(directory),
                     settings=settings)
    assert result.returncode == 2
    assert "must be a top-level field" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_shipped_patterns_declare_what_they_read():
    shipped = load_migrations(ROOT / "transforms")
    orphans = shipped["delete_orphaned_embeddings"].depends_on["chunks"]
    assert orphans.field == "embeddingId" and orphans.affected is None
    authors = shipped["copy_author_name"].depends_on["users"]
    assert authors.field is None and callable(authors.affected)
    text = (ROOT / "transforms" / "delete_orphaned_embeddings.py").read_text()
    assert "no longer leaves embeddings behind" not in text  # the old workaround


# --------------------------------------------------------------------------- the envelope


def test_a_dependency_event_names_the_affected_document_and_the_collection():
    key, value = events.RawEncoder("m", "app", "embeddings").dependency(
        ObjectId("6b0e9a101e1178fee7def4c3"), "chunks", None)
    envelope = events.decode(value)
    assert key == events.key_bytes(ObjectId("6b0e9a101e1178fee7def4c3"))
    assert envelope.source == "dependency" and envelope.dependency == "chunks"
    assert envelope.document is None and envelope.collection == "embeddings"


# --------------------------------------------------------------------------- orphan cleanup


def _after_backfill(db, name: str, writer: AppWriter, stop: threading.Event) -> None:
    """Stops ``writer`` once the backfill of ``name`` is done (or ``stop`` is set)."""
    def watch() -> None:
        try:
            wait_for(lambda: stop.is_set() or part_of(db, name, "backfill").get("done"),
                     timeout=600, what="the backfill done", interval=0.05)
        finally:
            writer.stop.set()

    threading.Thread(target=watch, daemon=True).start()


class ChunkWriter(AppWriter):
    """The application of the orphan pattern: deletes chunks, re-points them, adds new ones.

    It attaches chunks only to embeddings that have one now (as the pattern asks), so an
    embedding whose last chunk went never gets one again. Keeps the model of chunk -> embedding.
    """

    def __init__(self, db, rng: random.Random, chunks: dict) -> None:
        super().__init__(rng, pace=0.002)
        self.db, self.chunks = db, chunks
        self.next_chunk = 1_000_000

    def referenced(self) -> set:
        return {e for e in self.chunks.values() if e is not None}

    def write(self) -> bool:
        if len(self.chunks) <= 10:
            return False
        self.step()
        return True

    def step(self) -> None:
        roll = self.rng.random()
        live = sorted(self.referenced())
        chunk = self.rng.choice(sorted(self.chunks))
        if roll < 0.4:
            self.db.chunks.delete_one({"_id": chunk})
            del self.chunks[chunk]
        elif roll < 0.8 and live:
            target = self.rng.choice(live)
            self.db.chunks.update_one({"_id": chunk}, {"$set": {"embeddingId": target}})
            self.chunks[chunk] = target
        elif live:
            target = self.rng.choice(live)
            self.db.chunks.insert_one({"_id": self.next_chunk, "embeddingId": target})
            self.chunks[self.next_chunk] = target
            self.next_chunk += 1


def _seed_embeddings(db, rng: random.Random, n: int) -> tuple[dict, list]:
    embeddings = list(range(n))
    db.embeddings.insert_many([{"_id": i, "vector": [0.1, 0.2], "createdAt": OLD}
                               for i in embeddings])
    chunks: dict = {}
    for i in embeddings:
        if i % 5 == 0:
            continue  # an orphan from the start
        for _ in range(rng.choice((1, 1, 2))):
            chunks[len(chunks) + 10_000] = i
    chunks.update({len(chunks) + 10_000 + k: None for k in range(20)})  # not embedded yet
    db.chunks.insert_many([{"_id": c, "embeddingId": e} for c, e in chunks.items()])
    return chunks, embeddings


def _status(settings, name: str) -> tuple[dict, str]:
    as_json = run_cli("status", name, "--json", settings=settings)
    assert as_json.returncode == 0, as_json.stderr
    parsed = json.loads(as_json.stdout)
    text = run_cli("status", name, settings=settings)
    assert text.returncode == 0, text.stderr
    return (parsed[0] if isinstance(parsed, list) else parsed), text.stdout


@pytest.mark.parametrize("pre_images", [True, False], ids=["pre-images", "reference-map"])
def test_orphans_made_during_the_window_are_deleted_and_verify_passes(
        db, settings, pre_images):
    rng = random.Random(20)
    chunks, _ = _seed_embeddings(db, rng, 1500)
    if pre_images:
        db.command("collMod", "chunks", changeStreamPreAndPostImages={"enabled": True})
    migration = get_migration(settings.transforms, "delete_orphaned_embeddings")
    writer = ChunkWriter(db, random.Random(21), chunks)
    stop = threading.Event()
    writer.start()
    _after_backfill(db, migration.name, writer, stop)
    report = run_pipeline(settings, migration, show_progress=False, timeout=300, stop=stop,
                          batch_size=200, rate=1500)
    writer.finish()
    assert report.drained
    racing = writer.ops
    # After every embedding was migrated once: the application deletes and re-points chunks,
    # which only the dependency events can bring back to the consumer.
    for _ in range(300):
        writer.write()
    report = run_pipeline(settings, migration, show_progress=False, timeout=120)
    assert report.drained and report.lag == 0
    print(f"writer ops={writer.ops} (during backfill {racing}) counts={report.counts}")
    assert racing > 20, "the writer did not race with the backfill"

    alive = {d["_id"] for d in db.embeddings.find({}, {"_id": 1})}
    assert alive == writer.referenced(), (
        f"{len(alive - writer.referenced())} orphans left, "
        f"{len(writer.referenced() - alive)} referenced ones deleted")
    verify = run_cli("verify", migration.name, settings=settings)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    mapped = db[REFERENCES].count_documents({"_id.m": migration.name})
    # with pre-images too: it stands in for one that is missing
    assert mapped >= len(writer.chunks) - 20, "the reference map follows every chunk"
    status, text = _status(settings, migration.name)
    assert status["counts"]["dependency"] > 0
    assert status["events"]["dependency"] == status["counts"]["dependency"]
    assert status["events"]["own"] == status["counts"]["produced"] - status["counts"]["dependency"]
    assert f"dependency events: {status['counts']['dependency']:,}" in text


def test_a_deleted_chunk_reaches_its_embedding_through_the_reference_map(db, settings):
    """The delete event carries no embeddingId: without pre-images the map knows it."""
    db.embeddings.insert_many([{"_id": 1, "createdAt": OLD}, {"_id": 2, "createdAt": OLD}])
    db.chunks.insert_many([{"_id": 10, "embeddingId": 1}, {"_id": 11, "embeddingId": 2},
                           {"_id": 12, "embeddingId": 2}])
    migration = get_migration(settings.transforms, "delete_orphaned_embeddings")
    assert run_pipeline(settings, migration, show_progress=False, timeout=120).drained
    assert db.embeddings.count_documents({}) == 2
    db.chunks.delete_one({"_id": 10})  # embedding 1 loses its only chunk
    db.chunks.update_one({"_id": 11}, {"$set": {"embeddingId": 1}})  # 1 back, 2 keeps 12
    db.chunks.delete_one({"_id": 11})  # and 1 loses it again
    db.chunks.delete_one({"_id": 12})  # 2 loses its last one
    report = run_pipeline(settings, migration, show_progress=False, timeout=120)
    assert report.drained
    assert db.embeddings.count_documents({}) == 0
    assert db[REFERENCES].count_documents({"_id.m": migration.name, "refs": {
        "$exists": True}}) == 0, "deleted chunks leave the map"
    db.chunks.insert_one({"_id": 13, "embeddingId": 3})
    assert run_pipeline(settings, migration, show_progress=False, timeout=120).drained
    assert db[REFERENCES].count_documents({"_id.m": migration.name}) >= 1
    api.reset(settings, migration.name)
    assert db[REFERENCES].count_documents({"_id.m": migration.name}) == 0, "reset forgets it"


# --------------------------------------------------------------------------- denormalization


class Renamer(AppWriter):
    """Renames users, at most 400 times (each is about 7 dependency events: the drain stays
    short on a loaded machine)."""

    def __init__(self, db, rng: random.Random, users: dict) -> None:
        super().__init__(rng, pace=0.003)
        self.db, self.users = db, users

    def write(self) -> bool:
        if self.ops >= 400:
            return False
        user = self.rng.randrange(200)
        self.users[user] = f"renamed {user} {self.ops}"
        self.db.users.update_one({"_id": user}, {"$set": {"name": self.users[user]}})
        return True


def test_renamed_and_deleted_users_reach_their_posts_and_verify_passes(db, settings):
    rng = random.Random(5)
    users = {i: f"user {i}" for i in range(200)}
    db.users.insert_many([{"_id": i, "name": name} for i, name in users.items()])
    posts = {1000 + k: rng.randrange(200) for k in range(1500)}
    db.posts.insert_many([{"_id": p, "authorId": a, "title": f"t{p}"} for p, a in posts.items()])
    migration = get_migration(settings.transforms, "copy_author_name")
    stop = threading.Event()
    # Renames while the backfill runs (then after it, below): the posts migrated before a
    # rename only learn of it through the dependency events.
    app = Renamer(db, rng, users)
    app.start()
    _after_backfill(db, migration.name, app, stop)
    report = run_pipeline(settings, migration, show_progress=False, timeout=300, stop=stop,
                          batch_size=200, rate=1500)
    app.finish()
    assert report.drained and app.ops > 20
    for user in range(0, 200, 7):
        users[user] = f"late {user}"
        db.users.update_one({"_id": user}, {"$set": {"name": users[user]}})
    for user in range(3, 200, 50):
        db.users.delete_one({"_id": user})
        del users[user]
    db.posts.insert_one({"_id": 99_999, "authorId": 7, "title": "new"})
    posts[99_999] = 7
    # The fence travels after the dependency events of those writes.
    report = run_pipeline(settings, migration, show_progress=False, timeout=120,
                          then_cutover=True)
    assert report.drained and report.lag == 0
    assert report.cutover is not None and report.cutover.ok, report.cutover

    found = {d["_id"]: d.get("authorName") for d in db.posts.find()}
    wrong = [p for p, author in posts.items() if found[p] != users.get(author)]
    assert not wrong, f"{len(wrong)} posts wrong, e.g. {wrong[0]}: {found[wrong[0]]!r}"
    verify = run_cli("verify", migration.name, settings=settings)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert report.counts["dependency"] > 0


# --------------------------------------------------------------------------- the read-set

READS_PRICES = '''
    from cdc_migrator import migration

    @migration(collection="items")
    def priced(doc, ctx):
        price = ctx.db["prices"].find_one({"_id": doc["sku"]})
        if price and doc.get("price") != price["value"]:
            return {"price": price["value"]}
'''


def test_a_read_of_an_undeclared_collection_is_reported_by_the_dry_run(tmp_path, settings, db):
    db.items.insert_one({"_id": 1, "sku": "a"})
    db.prices.insert_one({"_id": "a", "value": 3})
    directory = _write(tmp_path, READS_PRICES)
    result = run_cli("apply", "priced", "--dry-run", "--transforms", str(directory),
                     settings=settings)
    assert result.returncode == 0, result.stderr
    assert "reads prices, not declared in depends_on" in result.stdout
    declared = _write(tmp_path, READS_PRICES.replace(
        '@migration(collection="items")',
        '@migration(collection="items", depends_on={"prices": lambda d, ctx: []})'))
    result = run_cli("apply", "priced", "--dry-run", "--transforms", str(declared),
                     settings=settings)
    assert result.returncode == 0 and "not declared" not in result.stdout


def test_a_read_of_an_undeclared_collection_is_logged_once_by_the_consumer(
        tmp_path, settings, db, caplog):
    db.items.insert_many([{"_id": i, "sku": "a"} for i in range(30)])
    db.prices.insert_one({"_id": "a", "value": 3})
    settings.transforms = _write(tmp_path, READS_PRICES)
    migration = get_migration(settings.transforms, "priced")
    with caplog.at_level(logging.WARNING, logger="cdc_migrator.reads"):
        assert run_pipeline(settings, migration, show_progress=False, timeout=120).drained
    warnings = [r.getMessage() for r in caplog.records if r.name == "cdc_migrator.reads"]
    assert len(warnings) == 1, warnings
    assert "reads collection 'prices', which it does not declare in depends_on" in warnings[0]
    assert db.items.count_documents({"price": 3}) == 30
    assert api.verify(settings, "priced").ok


# --------------------------------------------------------------------------- the local server


# --------------------------------------------------------------------------- failures

POSTS_BY_MAY_RAISE = '''
    from cdc_migrator import UNSET, migration

    def posts_by(user, ctx):
        if user.get("name") == "boom" and ctx.db["flags"].find_one({"_id": "fixed"}) is None:
            raise ValueError("cannot look up boom")
        return [p["_id"] for p in ctx.db["posts"].find({"authorId": user["_id"]}, {"_id": 1})]

    @migration(collection="posts", depends_on={"users": posts_by})
    def author(doc, ctx):
        user = ctx.db["users"].find_one({"_id": doc["authorId"]})
        return {"authorName": user["name"]} if user else {"authorName": UNSET}
'''


def test_a_dependency_function_that_raises_stops_capture_before_the_change(
        tmp_path, settings, db):
    from cdc_migrator.errors import CaptureStopped

    db.users.insert_many([{"_id": 1, "name": "a"}, {"_id": 2, "name": "b"}])
    db.posts.insert_many([{"_id": 10, "authorId": 1}, {"_id": 11, "authorId": 2}])
    settings.transforms = _write(tmp_path, POSTS_BY_MAY_RAISE)
    migration = get_migration(settings.transforms, "author")
    assert run_pipeline(settings, migration, show_progress=False, timeout=120).drained
    db.users.update_one({"_id": 1}, {"$set": {"name": "boom"}})
    with pytest.raises(CaptureStopped) as stopped:
        run_pipeline(settings, migration, show_progress=False, timeout=120)
    message = str(stopped.value)
    assert "posts_by() raised on users document 1: ValueError: cannot look up boom" in message
    assert "\n" not in message
    assert db.posts.find_one({"_id": 10})["authorName"] == "a"
    db.flags.insert_one({"_id": "fixed"})
    assert run_pipeline(settings, migration, show_progress=False, timeout=120).drained
    assert db.posts.find_one({"_id": 10})["authorName"] == "boom", "the change was not lost"


def test_a_dropped_dependency_collection_fails_the_migration(db, settings):
    db.embeddings.insert_one({"_id": 1, "createdAt": OLD})
    db.chunks.insert_one({"_id": 10, "embeddingId": 1})
    migration = get_migration(settings.transforms, "delete_orphaned_embeddings")
    assert run_pipeline(settings, migration, show_progress=False, timeout=120).drained
    db.chunks.drop()
    with pytest.raises(Exception, match="'chunks', which delete_orphaned_embeddings depends on, "
                                        "was dropped"):
        run_pipeline(settings, migration, show_progress=False, timeout=120)
    state = db.cdc_migrator_state.find_one({"_id": migration.name})
    assert state["phase"] == "failed"


def _update(coll: str, doc_id, fields: dict, *, removed=(), full=None) -> dict:
    return {"_id": {"_data": "82"}, "operationType": "update", "ns": {"db": "x", "coll": coll},
            "documentKey": {"_id": doc_id}, "fullDocument": full,
            "updateDescription": {"updatedFields": fields, "removedFields": list(removed)}}


def test_the_reference_map_is_saved_only_after_the_events_it_reflects(db):
    from cdc_migrator.capture.dependencies import DependencyFollower, seed

    db.chunks.insert_many([{"_id": 10, "embeddingId": "e1", "text": "a"},
                           {"_id": 11, "embeddingId": ["e5", "e6"]}])
    migration = get_migration(ROOT / "transforms", "delete_orphaned_embeddings")
    assert seed(db, migration) == 2
    follower = DependencyFollower(db, migration)
    re_point = _update("chunks", 10, {"embeddingId": "e2"}, full={"_id": 10, "embeddingId": "e3"})
    assert follower.affected(re_point) == ["e1", "e2", "e3"]  # before, as of the event, now
    follower.forget_pending()  # the broker did not acknowledge: the event comes again
    assert follower.affected(re_point) == ["e1", "e2", "e3"]
    follower.save()
    assert follower.affected(_update("chunks", 10, {"text": "b"})) == ["e2"], "untouched field"
    assert follower.affected(_update("chunks", 10, {}, removed=["embeddingId"])) == ["e2"]
    follower.save()
    # MongoDB describes an append as "embeddingId.2", a path the stream leaves out: the
    # looked-up image brings the new element, and the map keeps it.
    appended = _update("chunks", 11, {}, full={"_id": 11, "embeddingId": ["e5", "e6", "e7"]})
    assert follower.affected(appended) == ["e5", "e6", "e7"]
    follower.save()
    assert follower.affected({"operationType": "delete", "ns": {"coll": "chunks"},
                              "documentKey": {"_id": 11}}) == ["e5", "e6", "e7"]
    follower.save()
    mapped = {d["_id"]["d"]: d.get("refs") for d in db[REFERENCES].find({"_id.d": {"$exists": 1}})}
    assert mapped == {10: []}


# -------------------------------------------------------------- events larger than 16 MiB

AUTHORS = textwrap.dedent('''
    from cdc_migrator import migration

    def posts_of(user, ctx):
        return user.get("posts", [])

    @migration(collection="posts", depends_on={"users": posts_of})
    def author_of(doc, ctx):
        user = ctx.db["users"].find_one({"posts": doc["_id"]}, {"name": 1})
        name = user["name"] if user else None
        if doc.get("author") != name:
            return {"author": name}
''')


def test_a_dependency_change_too_large_for_one_event_keeps_its_pre_image(private_mongo,
                                                                          tmp_path):
    # Regression (issue 25): an event with the document after and before an update can be
    # larger than MongoDB returns; it was forwarded without either, so the posts the user
    # named before the change never learnt of it. Where the server splits it
    # ($changeStreamSplitLargeEvent, 7.0 here) the fragments are put together again.
    private_mongo.admin.command({"setServerVersion": "7.0.2"})
    (tmp_path / "authors.py").write_text(AUTHORS)
    host, port = private_mongo.address
    settings = Settings(mongodb_uri=f"mongodb://{host}:{port}/big?directConnection=true",
                        kafka_bootstrap_servers=KAFKA, transforms=tmp_path,
                        topic_prefix=f"t-big-{uuid.uuid4().hex[:8]}",
                        group_prefix=f"g-big-{uuid.uuid4().hex[:8]}", partitions=2)
    db = private_mongo.big
    db.create_collection("users", changeStreamPreAndPostImages={"enabled": True})
    db.users.insert_one({"_id": 1, "name": "ann", "posts": ["a"], "blob": os.urandom(9 * MIB)})
    db.posts.insert_many([{"_id": "a"}, {"_id": "b"}])
    migration = get_migration(tmp_path, "author_of")
    try:
        assert run_pipeline(settings, migration, show_progress=False, timeout=120).drained
        assert {d["_id"]: d.get("author") for d in db.posts.find()} == {"a": "ann", "b": None}
        # the event: 9 MiB after and 9 MiB before, over MongoDB's 16 MiB
        db.users.update_one({"_id": 1}, {"$set": {"posts": ["b"], "blob": os.urandom(9 * MIB)}})
        assert run_pipeline(settings, migration, show_progress=False, timeout=120).drained
    finally:
        settings.close()
    assert {d["_id"]: d.get("author") for d in db.posts.find()} == {"a": None, "b": "ann"}


def test_a_missing_pre_image_falls_back_to_the_reference_map(db, settings):
    # Regression (issue 25): with pre-images enabled the map was not kept, so a delete whose
    # pre-image was gone (expired, turned off) named nothing: the embedding it orphaned stayed.
    db.create_collection("chunks", changeStreamPreAndPostImages={"enabled": True})
    db.embeddings.insert_many([{"_id": 1, "createdAt": OLD}, {"_id": 2, "createdAt": OLD}])
    db.chunks.insert_many([{"_id": 10, "embeddingId": 1}, {"_id": 11, "embeddingId": 2}])
    migration = get_migration(settings.transforms, "delete_orphaned_embeddings")
    assert run_pipeline(settings, migration, show_progress=False, timeout=120).drained
    stop = threading.Event()
    tailer, consumer = Tailer(settings, migration), TransformConsumer(settings, migration)
    assert tailer._dependencies is not None and tailer._dependencies.wants_pre_images
    threads = Threads(stop)
    threads.start("tail", tailer.run)
    threads.start("consume", consumer.run)
    try:
        # Pre-images turned off under the running tailer: its next events carry none.
        db.command("collMod", "chunks", changeStreamPreAndPostImages={"enabled": False})
        db.chunks.delete_one({"_id": 10})  # embedding 1 loses its only chunk
        assert drained_by_run(settings, migration, tailer, stop, None, settle=0.5)
        assert tailer._dependencies.missing_pre_images == 1
    finally:
        tailer.stop()
        consumer.stop()
        stop.set()
        threads.join(timeout=60)
    assert [d["_id"] for d in db.embeddings.find()] == [2]
