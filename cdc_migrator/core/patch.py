"""Patches and guards: the pure logic of migrating one document.

A transform sees the document through a :class:`RecordingDocument`, which notes every top-level
field it reads. The patch it returns is reduced to its *effective* part (fields whose value
would change), turned into an update, and written with a *guard*: a filter that pins the
values, or the absence, of every field the transform read or wrote. If the application changed
one of them in between, the guard matches nothing and the caller re-reads and tries again.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bson
import bson.errors
from bson import ObjectId

from ..base.codec import CODEC_OPTIONS
from ..base.messages import shorten
from ..errors import PatchError
from ..migration import DELETE, UNSET, Migration
from . import rawdoc
from .rawdoc import RawView, document, plain_elements, raw_bytes, raw_guard


class RecordingDocument(Mapping[str, Any]):
    """A read-only view of a document that records which top-level fields were read.

    Iterating over the document (``keys()``, ``items()``, ``dict(doc)``...) reads every field.
    """

    __slots__ = ("_doc", "_detach", "read", "read_all")

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self._doc = doc
        # A raw document decodes each read afresh: nothing to detach.
        self._detach = not isinstance(doc, RawView)
        self.read: set[str] = set()
        self.read_all = False

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        value = self._doc[key]
        return _detached(value) if self._detach else value

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._doc

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        if not self._detach:
            return self._doc.get(key, default)
        return _detached(self._doc[key]) if key in self._doc else default

    def __iter__(self) -> Iterator[str]:
        self.read_all = True
        return iter(self._doc)

    def __len__(self) -> int:
        self.read_all = True
        return len(self._doc)

    def __repr__(self) -> str:
        return f"RecordingDocument({self._doc!r})"

    def fields_read(self) -> set[str]:
        """The top-level fields the transform depended on (all of them after an iteration)."""
        return set(self._doc) | self.read if self.read_all else set(self.read)


@dataclass(slots=True)
class Outcome:
    """What the transform decided for one document (read-only by convention: one is made per
    document on the hot path, and a frozen dataclass takes three times as long to make).

    ``kind`` is ``"noop"`` (nothing would change), ``"update"`` (``set``/``unset`` hold the
    effective change), ``"delete"``, or ``"error"`` (the transform raised; ``error`` says what).
    ``guard`` is the write filter that pins every field read or written.
    """

    kind: str
    id: Any
    guard: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    error: str = ""
    traceback: str = ""
    #: The shard key's values (by path) the guard pins, for a write and a re-read that a
    #: sharded cluster sends to one shard; empty elsewhere.
    shard_key: dict[str, Any] = field(default_factory=dict)
    #: Decided on a raw document (see :func:`decide`): ``guard`` is left empty, and the guard
    #: and the update are these BSON bytes instead (the guard's top-level names beside).
    raw_guard: bytes = b""
    raw_update: bytes = b""
    guard_names: frozenset[str] = frozenset()

    @property
    def update(self) -> dict[str, Any]:
        """The MongoDB update document for an ``update`` outcome."""
        op: dict[str, Any] = {}
        if self.set:
            op["$set"] = self.set
        if self.unset:
            op["$unset"] = {name: "" for name in self.unset}
        return op


def _detached(value: Any) -> Any:
    """A copy of a mutable value, so a transform editing it in place cannot change the
    document its patch is compared with."""
    return copy.deepcopy(value) if isinstance(value, (dict, list)) else value


_EXACT_TYPES = (str, bool, ObjectId, dt.datetime)


def same_value(a: Any, b: Any) -> bool:
    """True when two BSON values are identical in type and value (``1 != 1.0 != True``)."""
    if type(a) is type(b) and isinstance(a, _EXACT_TYPES) and a == b:
        return True
    return (bson.encode({"v": a}, codec_options=CODEC_OPTIONS)
            == bson.encode({"v": b}, codec_options=CODEC_OPTIONS))


def validate_patch(result: Any, migration: Migration) -> dict[str, Any] | None:
    """Check a transform's return value; return the patch, None, or raise PatchError."""
    patch = _named_patch(result, migration)
    if not patch:
        return patch
    for value in patch.values():
        if not _plainly_storable(value):
            break
    else:
        return patch  # the common case, decided without encoding the patch
    _encoded_patch({k: v for k, v in patch.items() if v is not UNSET}, migration)
    return patch


#: Names already checked as patch keys (bounded: a transform may make names up).
_PATCH_NAMES: set[str] = set()
_PATCH_NAMES_KEPT = 4096


def _named_patch(result: Any, migration: Migration) -> dict[str, Any] | None:
    """:func:`validate_patch` without the check of its values: the patch (a dict of it) or
    None; PatchError for a result that is no patch or a key that is no top-level name."""
    if result is None or result is DELETE:
        return None
    if type(result) is not dict and not isinstance(result, Mapping):
        raise PatchError(
            f"migration {migration.name!r} returned {type(result).__name__} "
            f"({shorten(repr(result), 60)}); return a dict patch, None or DELETE"
        )
    names = _PATCH_NAMES
    for key in result:
        if type(key) is str and key in names:
            continue
        if not isinstance(key, str) or not key or key[0] == "$" or "." in key:
            raise PatchError(
                f"migration {migration.name!r} returned a patch with field {key!r}; "
                "patch keys must be top-level field names (no '$', no '.')"
            )
        if key == "_id":
            raise PatchError(f"migration {migration.name!r} tried to change _id; _id is immutable")
        if type(key) is str and len(names) < _PATCH_NAMES_KEPT:
            names.add(key)
    # The transform's own dict is returned as it is: nothing here or after changes it.
    return result if type(result) is dict else dict(result)


def _encoded_patch(values: dict[str, Any], migration: Migration) -> bytes:
    """The BSON of a patch's ``values``; PatchError for one MongoDB cannot store."""
    try:
        return bson.encode(values, codec_options=CODEC_OPTIONS)
    except (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError) as exc:
        raise PatchError(f"migration {migration.name!r} returned a patch MongoDB cannot "
                         f"store: {exc}") from None


_INT64 = range(-(1 << 63), 1 << 63)


def _plainly_storable(value: Any) -> bool:
    """True for values BSON certainly stores as they are (a shortcut past encoding them)."""
    kind = type(value)
    if kind is str:
        # BSON strings are UTF-8: only a lone surrogate cannot be stored.
        return value.isascii() or _utf8(value)
    if kind is int:
        return value in _INT64
    if kind is dt.datetime:
        return value.tzinfo is None or value.tzinfo is dt.UTC
    return kind in _PLAIN_KINDS or value is UNSET


_PLAIN_KINDS = frozenset({bool, float, type(None), ObjectId})


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Values a plain query equality pins exactly as ``$expr``'s ``$eq`` does, once arrays are
#: excluded: ``{f: v}`` also matches an array holding ``v``, ``$expr`` never does. Left to
#: ``$expr``: numbers (both compare across numeric types, but that NaN and -0 are pinned alike
#: by both is not proven here), null (``{f: null}`` also matches a missing field), regexes (a
#: query regex *matches* strings), sub-documents, arrays and every other type. Exact types:
#: ``bool`` is an ``int`` to Python, ``DatetimeMS`` is no ``datetime``.
_PLAIN_EQUALITY = frozenset({str, bool, ObjectId, dt.datetime})


def guard_filter(doc: Mapping[str, Any], fields: set[str]) -> dict[str, Any]:
    """A filter matching ``doc`` only while every field in ``fields`` is as it is now.

    A present string, boolean, ObjectId or date is pinned by plain equality with arrays
    excluded (``{f: {$eq: v, $not: {$type: "array"}}}``), which means what ``$expr``'s
    equality means for these values and costs the server and the client less. Other present
    values are pinned by exact value with ``$expr`` (no array traversal, field order of
    sub-documents significant); absent fields are pinned by ``$exists: false``. A name that a
    query would read as a path or an operator (with a ``.``, starting with ``$``, or empty:
    legal top-level names since MongoDB 5.0) is pinned inside ``$expr`` through ``$getField``,
    for its existence (``$type`` is ``"missing"`` or not) as for its value. Strings compare
    binary only under the simple collation, which every guarded write states.
    """
    query: dict[str, Any] = {"_id": doc["_id"]}
    equal: list[dict[str, Any]] = []
    for name in sorted(fields - {"_id"}):
        present = name in doc
        if not name or name[0] == "$" or "." in name:  # a path or an operator to a query
            value = {"$getField": {"field": {"$literal": name}}}
            equal.append({"$ne" if present else "$eq": [{"$type": value}, "missing"]})
            if present:
                equal.append({"$eq": [value, {"$literal": doc[name]}]})
        elif not present:
            query[name] = {"$exists": False}
        elif type(pinned := doc[name]) in _PLAIN_EQUALITY:
            query[name] = {"$eq": pinned, "$not": {"$type": "array"}}
        else:
            query[name] = {"$exists": True}
            equal.append({"$eq": [f"${name}", {"$literal": pinned}]})
    if equal:
        query["$expr"] = equal[0] if len(equal) == 1 else {"$and": equal}
    return query


def shard_key_values(doc: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """The values of a shard key's ``paths`` in ``doc`` (a missing one is null, as a sharded
    cluster places it), ``_id`` left out (every guard pins it)."""
    values: dict[str, Any] = {}
    for path in paths:
        if path == "_id":
            continue
        value: Any = doc
        for name in path.split("."):
            value = value.get(name) if isinstance(value, Mapping) else None
        values[path] = value
    return values


def pin_shard_key(query: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``query`` pinning each shard key path to its value by equality, as mongos needs to send
    a single-document write to one shard (a condition ``$expr`` holds is not targeted). A path
    the guard pins already gets the equality beside its condition."""
    for path, value in values.items():
        condition = query.get(path)
        if isinstance(condition, dict) and all(k.startswith("$") for k in condition):
            query[path] = {**condition, "$eq": value}
        else:
            query[path] = {"$eq": value}
    return query


def decide(migration: Migration, doc: Mapping[str, Any] | bytes, ctx: Any,
           shard_key: Sequence[str] = ()) -> Outcome:
    """Run the transform on ``doc`` and reduce its result to an :class:`Outcome`.

    A transform that raises gives an ``error`` outcome; one that returns something that is not
    a patch raises :class:`PatchError` (a bug in the migration, which stops the run). With the
    ``shard_key`` of a sharded collection, the guard pins its values too.

    A raw document (``bytes`` or a ``RawBSONDocument``) is decoded one field at a time, as the
    transform reads it; without a shard key, its outcome holds the guard and the update as BSON
    bytes (``raw_guard``, ``raw_update``), the pinned values copied from the document's bytes.
    """
    data = raw_bytes(doc)
    source: Mapping[str, Any] = RawView(data) if data is not None else doc  # type: ignore[assignment]
    view = RecordingDocument(source)
    try:
        result = migration.transform(view, ctx)
    except Exception as exc:  # the user's transform failing on one document is reported
        import traceback

        return Outcome(
            "error", source["_id"], error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )
    if isinstance(source, RawView) and not shard_key:
        return _raw_outcome(migration, source, view, result)
    key = shard_key_values(source, shard_key)
    if result is DELETE:
        return Outcome("delete", source["_id"], shard_key=key,
                       guard=pin_shard_key(guard_filter(source, view.fields_read()), key))
    patch = _checked(result, migration, source["_id"])
    if not patch:
        return Outcome("noop", source["_id"])
    to_set = {k: v for k, v in patch.items()
              if v is not UNSET and not (k in source and same_value(source[k], v))}
    to_unset = tuple(k for k, v in patch.items() if v is UNSET and k in source)
    if not to_set and not to_unset:
        return Outcome("noop", source["_id"])
    guard = pin_shard_key(guard_filter(source, view.fields_read() | set(patch)), key)
    return Outcome("update", source["_id"], guard=guard, set=to_set, unset=to_unset,
                   shard_key=key)


def _checked(result: Any, migration: Migration, doc_id: Any,
             check: Any = validate_patch) -> Any:
    """``check(result, migration)`` (:func:`validate_patch`), its error naming the document
    (the migration stops on it)."""
    try:
        return check(result, migration)
    except PatchError as exc:
        named = PatchError(f"{exc} (document _id {doc_id!r})")
        named.document_id = doc_id
        raise named from None


def _raw_outcome(migration: Migration, doc: RawView, view: RecordingDocument,
                 result: Any) -> Outcome:
    """The outcome of a transform's ``result`` on a raw document, guard and update as bytes.

    A value is unchanged when its encoding is the stored element's (as :func:`same_value`);
    the patch is encoded once, and its changed elements are copied into ``$set``. Its values
    are checked by that encoding (as :func:`validate_patch` checks them, with its error).
    """
    doc_id = doc.document_id()
    if result is DELETE:
        guard, names = raw_guard(doc, view.fields_read())
        return Outcome("delete", doc_id, raw_guard=guard, guard_names=names)
    patch = _checked(result, migration, doc_id, _named_patch)
    if not patch:
        return Outcome("noop", doc_id)
    to_set, to_unset, update = _update_of(migration, doc, patch, doc_id)
    if not update:
        return Outcome("noop", doc_id)
    fields = view.fields_read()
    fields.update(patch)
    guard, names = raw_guard(doc, fields)
    return Outcome("update", doc_id, set=to_set, unset=to_unset, raw_guard=guard,
                   raw_update=update, guard_names=names)


def _update_of(migration: Migration, doc: RawView, patch: dict[str, Any], doc_id: Any
               ) -> tuple[dict[str, Any], tuple[str, ...], bytes]:
    """What ``patch`` changes in ``doc``: the values set, the names unset, and the update
    document as bytes (empty when nothing would change). Compiled where it can be
    (``rawdoc.compiled``), else here; both the same, byte for byte."""
    if rawdoc.compiled is not None and doc._complete:
        made = rawdoc.compiled.update(doc.data, doc._index, patch, UNSET)
        if made is not None:
            return made
    find = doc._find
    new: dict[str, Any] = {}
    unset: list[str] = []
    stored = False  # whether a value set replaces a stored one (compared below)
    for name, value in patch.items():
        if value is not UNSET:
            new[name] = value
            stored = stored or find(name) is not None
        elif find(name) is not None:
            unset.append(name)
    to_set, set_document = new, b""
    if new:
        plain = plain_elements(new)
        set_document = (_checked(new, migration, doc_id, _encoded_patch) if plain is None
                        else document(plain))
        if stored:
            to_set, set_document = _changed(doc, new, set_document)
    to_unset = tuple(unset)
    if not to_set and not to_unset:
        return to_set, to_unset, b""
    elements = b"\x03$set\x00" + set_document if to_set else b""
    if to_unset:
        elements += _unset_element(to_unset)
    return to_set, to_unset, document(elements)


#: ``$unset`` elements by the names they unset (bounded: a transform may make names up).
_UNSETS: dict[tuple[str, ...], bytes] = {}


def _unset_element(names: tuple[str, ...]) -> bytes:
    """The element ``$unset: {name: "", ...}``."""
    element = _UNSETS.get(names)
    if element is None:
        element = b"\x03$unset\x00" + document(b"".join(
            b"\x02" + k.encode() + b"\x00\x01\x00\x00\x00\x00" for k in names))
        if len(_UNSETS) < _PATCH_NAMES_KEPT:
            _UNSETS[names] = element
    return element


def _changed(doc: RawView, new: dict[str, Any], encoded: bytes) -> tuple[dict[str, Any], bytes]:
    """The values of ``new`` (``encoded`` as BSON) that would change ``doc``, and the ``$set``
    document of them: a value is unchanged when its element is the stored one."""
    patched = RawView(encoded)
    to_set = {k: v for k, v in new.items()
              if k not in doc or doc.element(k) != patched.element(k)}
    return to_set, document(b"".join(patched.element(k) for k in to_set))
