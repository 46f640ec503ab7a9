"""Pattern: splitting nested data into a separate collection — ``users.preferences`` moves
to ``userPreferences`` (one document per user: ``{userId: <user _id>, ...preferences}``).

Deploy 1 (dual write): the application writes preferences to ``userPreferences`` (an upsert
keyed by ``userId`` with the whole content) *and* still to ``users.preferences``, and keeps
reading ``users.preferences``. New users get their ``userPreferences`` document from the start,
so nothing created during the window is missed.
Migration: for a user with ``preferences``, insert ``{userId, ...preferences}`` into
``userPreferences`` unless one exists for that ``userId`` (the application's copy wins), then
remove ``preferences`` from the user.
Deploy 2 (cutover): the application reads and writes only ``userPreferences``.

Idempotent and crash-safe: a re-run after a crash between the insert and the user's patch
finds the inserted document and only removes ``preferences``. A unique index on
``userPreferences.userId``, created once per process, makes two concurrent runs on one user
(a retry, ``apply`` racing the consumer) insert one document, not two. A ``preferences`` of
None moves as an empty document; one that is not a document, or carries its own ``_id`` or
``userId``, makes the transform raise: that user is reported and left as it is.
"""

from collections.abc import Mapping

from pymongo.errors import DuplicateKeyError, OperationFailure

from cdc_migrator import UNSET, migration

TARGET = "userPreferences"
# MongoDB codes for "an index on these keys already exists with other options or name".
_INDEX_EXISTS = (85, 86)

# Databases (and dry-run flag) whose index this process already ensured.
_indexed: set[tuple[str, bool]] = set()


def _ensure_user_id_index(ctx) -> None:
    key = (ctx.db.name, bool(ctx.dry_run))
    if key in _indexed:
        return
    try:
        ctx.db[TARGET].create_index("userId", unique=True)
    except DuplicateKeyError as exc:
        raise RuntimeError(
            f"{TARGET} holds several documents for one userId; merge them, then run again"
        ) from exc
    except OperationFailure as exc:
        if exc.code not in _INDEX_EXISTS:  # an index on userId exists already: use it
            raise
    _indexed.add(key)


@migration(collection="users")
def extract_preferences(doc, ctx):
    if "preferences" not in doc:
        return None
    preferences = doc["preferences"]
    if preferences is None:
        preferences = {}
    if not isinstance(preferences, Mapping):
        raise TypeError(f"preferences is a {type(preferences).__name__}, not a document")
    if "_id" in preferences or "userId" in preferences:
        raise ValueError("preferences has its own _id or userId field; move this user by hand")
    _ensure_user_id_index(ctx)
    target = ctx.db[TARGET]
    if target.find_one({"userId": doc["_id"]}, {"_id": 1}) is None:
        try:
            target.insert_one({"userId": doc["_id"], **preferences})
        except DuplicateKeyError:
            pass  # inserted meanwhile by the application or a concurrent run: theirs stands
    return {"preferences": UNSET}
