"""Pattern: denormalizing — each post carries its author's name (``authorName``).

The transform looks the author up in ``users``. A user renamed while the migration runs must
reach the posts migrated before the rename: ``depends_on={"users": posts_by}`` tells the tailer
which posts a changed user affects (a look-up, not a plain reference: the reference is on the
post's side), and each of them is migrated again from the name as it is then. A user deleted
during the window takes ``authorName`` off their posts.

Deploy 1: the application writes ``authorName`` when it creates a post and, when it renames a
user, on that user's posts (``update_many``); readers fall back to a look-up when it is missing.
Migration: ``authorName`` on every post; an index on ``posts.authorId`` serves ``posts_by``.
Deploy 2: readers use ``authorName``; the application's own updates keep it right from then on.
"""

from cdc_migrator import UNSET, migration

_indexed: set[tuple[str, bool]] = set()


def posts_by(user, ctx):
    """The posts a changed ``users`` document affects: those it wrote. Called with the user
    after the change, or, for a deleted one, with its ``_id`` alone (or its pre-image)."""
    key = (ctx.db.name, bool(ctx.dry_run))
    if key not in _indexed:
        ctx.db["posts"].create_index("authorId")
        _indexed.add(key)
    return [p["_id"] for p in ctx.db["posts"].find({"authorId": user["_id"]}, {"_id": 1})]


@migration(collection="posts", depends_on={"users": posts_by})
def copy_author_name(doc, ctx):
    author = ctx.db["users"].find_one({"_id": doc["authorId"]}, {"name": 1}) \
        if "authorId" in doc else None
    if author is None or "name" not in author:
        return {"authorName": UNSET}
    return {"authorName": author["name"]}
