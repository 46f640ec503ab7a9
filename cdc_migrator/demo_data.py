"""A realistic demo dataset for the migrations shipped under ``transforms/``.

``seed(db)`` fills, in one database:

- ``users``: some without ``role``, some with ``role: None``, users and admins; about a third
  with nested ``preferences``, a few of them already copied to ``userPreferences`` by
  dual-writing application code, and a few new users that only have ``userPreferences``;
- ``teams``: ``isPro`` true/false, some teams already given a ``plan`` by dual-read code (with
  or without a stale ``isPro`` beside it);
- ``legacy_teams``: archived teams, most still carrying ``isPro``;
- ``embeddings`` and ``chunks``: most embeddings referenced by one or more chunks, some
  orphaned; a few chunks not embedded yet (``embeddingId: None``);
- ``smallConfig``: a few dozen settings, some already with ``newField``.

Each ``seed_*`` function inserts one part and returns what it created, so tests can check the
migrated state against it. The random generator is seeded: one seed, one dataset (ObjectIds
aside).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo.database import Database

SEEDED_COLLECTIONS = (
    "users", "userPreferences", "teams", "legacy_teams", "embeddings", "chunks", "smallConfig",
)

FIRST_NAMES = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret",
          "Dennis", "Radia", "Tim", "Leslie", "Sophie", "John", "Katherine", "Niklaus", "Hedy"]
LAST_NAMES = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
         "Hamilton", "Ritchie", "Perlman", "Berners-Lee", "Lamport", "Wilson", "Backus"]
WORDS = ["orbit", "lumen", "quartz", "delta", "harbor", "maple", "cobalt", "ember", "atlas",
          "nimbus", "vertex", "pioneer", "summit", "willow", "zenith", "coral"]
_MODEL = "text-embedding-3-small"
_BASE_TIME = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@dataclass
class Users:
    """What :func:`seed_users` created, by state before any migration."""

    ids: list[Any] = field(default_factory=list)
    role_missing: list[Any] = field(default_factory=list)
    role_none: list[Any] = field(default_factory=list)
    role_user: list[Any] = field(default_factory=list)
    admins: list[Any] = field(default_factory=list)
    preferences: dict[Any, dict[str, Any]] = field(default_factory=dict)
    """Users with a ``preferences`` field, and its content."""
    already_extracted: list[Any] = field(default_factory=list)
    """Users with ``preferences`` whose ``userPreferences`` document the application wrote."""
    only_new_format: list[Any] = field(default_factory=list)
    """Users created by new code: ``userPreferences`` only, no ``preferences`` field."""


@dataclass
class Teams:
    ids: list[Any] = field(default_factory=list)
    is_pro: dict[Any, bool] = field(default_factory=dict)
    """Teams created with ``isPro`` (still there unless ``plan`` replaced it), and its value."""
    plan: dict[Any, str] = field(default_factory=dict)
    """Teams that already have ``plan``, and its value."""


@dataclass
class LegacyTeams:
    ids: list[Any] = field(default_factory=list)
    with_is_pro: list[Any] = field(default_factory=list)


@dataclass
class Embeddings:
    ids: list[Any] = field(default_factory=list)
    orphaned: list[Any] = field(default_factory=list)
    referenced: list[Any] = field(default_factory=list)
    chunk_ids: list[Any] = field(default_factory=list)


@dataclass
class SmallConfig:
    ids: list[Any] = field(default_factory=list)
    missing_new_field: list[Any] = field(default_factory=list)
    preset: dict[Any, Any] = field(default_factory=dict)
    """Documents that already had ``newField``, and its value (None included)."""


@dataclass
class DemoData:
    users: Users
    teams: Teams
    legacy_teams: LegacyTeams
    embeddings: Embeddings
    small_config: SmallConfig

    def summary(self) -> str:
        without_role = len(self.users.role_missing) + len(self.users.role_none)
        return (f"{len(self.users.ids):,} users ({without_role:,} without role, "
                f"{len(self.users.preferences):,} with preferences), "
                f"{len(self.teams.ids):,} teams, {len(self.legacy_teams.ids):,} legacy teams, "
                f"{len(self.embeddings.ids):,} embeddings ({len(self.embeddings.orphaned):,} "
                f"orphaned) with {len(self.embeddings.chunk_ids):,} chunks, "
                f"{len(self.small_config.ids):,} smallConfig documents")


def seed(
    db: Database,
    n_users: int = 1_000,
    *,
    n_teams: int | None = None,
    n_legacy_teams: int | None = None,
    n_embeddings: int | None = None,
    n_small_config: int = 40,
    seed: int = 0,
    drop: bool = False,
) -> DemoData:
    """Insert the whole demo dataset into ``db`` and return what was created.

    Collection sizes default to proportions of ``n_users``. ``drop`` first drops the seeded
    collections (never the database, never other collections).
    """
    rng = random.Random(seed)
    if drop:
        for name in SEEDED_COLLECTIONS:
            db.drop_collection(name)
    return DemoData(
        users=seed_users(db, n_users, rng=rng),
        teams=seed_teams(db, n_teams if n_teams is not None else max(n_users // 5, 10), rng=rng),
        legacy_teams=seed_legacy_teams(
            db, n_legacy_teams if n_legacy_teams is not None else max(n_users // 10, 10), rng=rng),
        embeddings=seed_embeddings(
            db, n_embeddings if n_embeddings is not None else max(n_users // 2, 20), rng=rng),
        small_config=seed_small_config(db, n_small_config, rng=rng),
    )


def seed_users(db: Database, n: int, *, rng: random.Random | None = None) -> Users:
    """``n`` users: 40% without role, 10% role None, 35% "user", 15% "admin"; a third with
    ``preferences``; 5% of those already dual-written to ``userPreferences``."""
    rng = rng or random.Random(0)
    out = Users()
    users, prefs_docs = [], []
    for i in range(n):
        _id = ObjectId()
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        user: dict[str, Any] = {
            "_id": _id,
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}.{i}@example.com",
            "createdAt": _BASE_TIME + dt.timedelta(minutes=rng.randrange(500_000)),
        }
        r = rng.random()
        if r < 0.40:
            out.role_missing.append(_id)
        elif r < 0.50:
            user["role"] = None
            out.role_none.append(_id)
        elif r < 0.85:
            user["role"] = "user"
            out.role_user.append(_id)
        else:
            user["role"] = "admin"
            out.admins.append(_id)
        r = rng.random()
        if r < 0.33:
            preferences = _preferences(rng)
            user["preferences"] = preferences
            out.preferences[_id] = preferences
            if rng.random() < 0.05:
                prefs_docs.append({"userId": _id, **preferences})
                out.already_extracted.append(_id)
        elif r < 0.36:
            prefs_docs.append({"userId": _id, **_preferences(rng)})
            out.only_new_format.append(_id)
        users.append(user)
        out.ids.append(_id)
    _insert(db["users"], users)
    _insert(db["userPreferences"], prefs_docs)
    return out


def seed_teams(db: Database, n: int, *, rng: random.Random | None = None) -> Teams:
    """``n`` teams: most with ``isPro`` only; 10% with ``plan`` only (created by dual-read
    code); 5% with ``plan`` and a stale ``isPro`` (edited by dual-read code)."""
    rng = rng or random.Random(0)
    out = Teams()
    teams = []
    for i in range(n):
        _id = ObjectId()
        team: dict[str, Any] = {"_id": _id, "name": f"{rng.choice(WORDS)}-{i}",
                                "seats": rng.randrange(1, 200)}
        r = rng.random()
        if r < 0.10:
            team["plan"] = rng.choice(["basic", "pro"])
        else:
            team["isPro"] = rng.random() < 0.3
            out.is_pro[_id] = team["isPro"]
            if r < 0.15:
                # Edited since Deploy 1: the new field is the truth, isPro may disagree.
                team["plan"] = rng.choice(["basic", "pro"])
        if "plan" in team:
            out.plan[_id] = team["plan"]
        teams.append(team)
        out.ids.append(_id)
    _insert(db["teams"], teams)
    return out


def seed_legacy_teams(db: Database, n: int, *, rng: random.Random | None = None) -> LegacyTeams:
    """``n`` archived teams; 90% still carry ``isPro`` (one in ten of those as None)."""
    rng = rng or random.Random(0)
    out = LegacyTeams()
    docs = []
    for i in range(n):
        _id = ObjectId()
        doc: dict[str, Any] = {
            "_id": _id, "name": f"{rng.choice(WORDS)}-legacy-{i}",
            "archivedAt": _BASE_TIME - dt.timedelta(days=rng.randrange(1, 900)),
        }
        if rng.random() < 0.9:
            doc["isPro"] = None if rng.random() < 0.1 else rng.random() < 0.3
            out.with_is_pro.append(_id)
        docs.append(doc)
        out.ids.append(_id)
    _insert(db["legacy_teams"], docs)
    return out


def seed_embeddings(db: Database, n: int, *, rng: random.Random | None = None,
                    orphaned: float = 0.25) -> Embeddings:
    """``n`` embeddings, created days ago; a fraction ``orphaned`` have no chunk, the others
    one to three chunks each. A few chunks are not embedded yet."""
    rng = rng or random.Random(0)
    out = Embeddings()
    embeddings, chunks = [], []
    for _ in range(n):
        _id = ObjectId()
        embeddings.append({
            "_id": _id, "model": _MODEL, "dims": 8,
            "vector": [round(rng.uniform(-1, 1), 6) for _ in range(8)],
            "createdAt": _BASE_TIME + dt.timedelta(hours=rng.randrange(10_000)),
        })
        out.ids.append(_id)
        if rng.random() < orphaned:
            out.orphaned.append(_id)
            continue
        out.referenced.append(_id)
        document_id = ObjectId()
        for position in range(rng.randint(1, 3)):
            chunks.append({"_id": ObjectId(), "documentId": document_id, "position": position,
                           "text": " ".join(rng.choices(WORDS, k=12)), "embeddingId": _id})
    for _ in range(max(n // 50, 1)):
        chunks.append({"_id": ObjectId(), "documentId": ObjectId(), "position": 0,
                       "text": " ".join(rng.choices(WORDS, k=12)), "embeddingId": None})
    rng.shuffle(chunks)
    out.chunk_ids = [c["_id"] for c in chunks]
    _insert(db["embeddings"], embeddings)
    _insert(db["chunks"], chunks)
    return out


def seed_small_config(db: Database, n: int = 40, *, rng: random.Random | None = None
                      ) -> SmallConfig:
    """``n`` settings keyed by name; a quarter already have ``newField`` (a few as None)."""
    rng = rng or random.Random(0)
    out = SmallConfig()
    docs = []
    for i in range(n):
        _id = f"{rng.choice(WORDS)}.{rng.choice(WORDS)}.{i}"
        doc: dict[str, Any] = {"_id": _id, "value": rng.choice([True, False, 10, 0.5, "on"])}
        r = rng.random()
        if r < 0.05:
            doc["newField"] = None
        elif r < 0.25:
            doc["newField"] = rng.choice(["custom", "legacy"])
        if "newField" in doc:
            out.preset[_id] = doc["newField"]
        else:
            out.missing_new_field.append(_id)
        docs.append(doc)
        out.ids.append(_id)
    _insert(db["smallConfig"], docs)
    return out


def _preferences(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.03:
        return {}
    prefs: dict[str, Any] = {
        "theme": rng.choice(["light", "dark", "system"]),
        "language": rng.choice(["en", "fr", "de", "ja", "pt-BR"]),
        "notifications": {"email": rng.random() < 0.7, "push": rng.random() < 0.4,
                          "digest": rng.choice(["daily", "weekly", None])},
    }
    if rng.random() < 0.3:
        prefs["shortcuts"] = rng.sample(["g i", "g t", "c", "/", "?"], k=rng.randint(1, 3))
    if rng.random() < 0.2:
        prefs["fontScale"] = rng.choice([0.9, 1.0, 1.25])
    return prefs


def _insert(collection: Any, docs: Iterable[dict[str, Any]], chunk: int = 1_000) -> None:
    docs = list(docs)
    for start in range(0, len(docs), chunk):
        collection.insert_many(docs[start:start + chunk], ordered=False)
