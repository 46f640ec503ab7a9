"""The shape of a document: which top-level fields it has, of which BSON types, one level down.

A shape is what ``census`` and ``verify --reversible`` group documents by. It is the set of
top-level fields with the BSON type of each; for an embedded document also the set of its own
fields and their types, and for an array the set of its elements' types. Field order does not
make a different shape (a set), nor do values. Deeper levels are not looked at: a shape stays
short, and a transform's behaviour rarely depends on the third level without the second.

The shape is a canonical string, so it is its own key (``{_id: int, name: string}``) and
:func:`shape_id` a short stable name for it (the same shape has the same id in every run).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from bson.binary import Binary

from ..base.bsontypes import type_name

_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _field(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else json.dumps(name)


def _level(doc: Mapping[str, Any]) -> str:
    """One level of fields: ``{a: int, b: string}``, names sorted."""
    return "{" + ", ".join(f"{_field(k)}: {type_name(doc[k])}" for k in sorted(doc)) + "}"


def _leaf(value: Any) -> Any:
    kind = type(value)
    return (kind, value.subtype) if kind is Binary else kind


def _signature(value: Any) -> Any:
    """What the shape of a ``dict``, ``list`` or ``Binary`` value depends on (cheap to build:
    built-in ``map`` over ``type``; the subtype of a binary only where there is one)."""
    kind = type(value)
    if kind is dict:
        kinds: Any = tuple(map(type, value.values()))
        if Binary in kinds:
            kinds = tuple(map(_leaf, value.values()))
        return tuple(value), kinds
    if kind is list:
        kinds = frozenset(map(type, value))
        if Binary in kinds:
            kinds = frozenset(map(_leaf, value))
        return kind, kinds
    return _leaf(value)


#: Shapes by the Python types of a document's values, in field order: census computes each
#: shape's string once, not once per document (the string costs some 40 µs a document, the
#: key a few). Bounded: emptied when full.
_KNOWN: dict[tuple[Any, ...], str] = {}
# The types whose value a shape looks into (one level down, or a binary subtype).
_LOOK_INTO = frozenset({dict, list, Binary})
_KNOWN_MAX = 10_000


def shape_of(doc: Mapping[str, Any]) -> str:
    """The shape of ``doc`` as a canonical string: equal for documents of one shape."""
    values = doc.values()
    kinds = tuple(map(type, values))
    deeper = tuple(_signature(v) for v in values if type(v) in _LOOK_INTO) \
        if _LOOK_INTO.intersection(kinds) else ()
    key = (tuple(doc), kinds, deeper)
    found = _KNOWN.get(key)
    if found is None:
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.clear()
        found = _KNOWN[key] = _describe(doc)
    return found


def _describe(doc: Mapping[str, Any]) -> str:
    parts = []
    for name in sorted(doc):
        value = doc[name]
        if isinstance(value, dict):
            described = _level(value)
        elif isinstance(value, list):
            described = "[" + ", ".join(sorted({type_name(v) for v in value})) + "]"
        else:
            described = type_name(value)
        parts.append(f"{_field(name)}: {described}")
    return "{" + ", ".join(parts) + "}"


def shape_id(shape: str) -> str:
    """A short name of a shape, the same in every run (8 hex digits of its SHA-1)."""
    return hashlib.sha1(shape.encode()).hexdigest()[:8]
