"""BSON types as MongoDB names and orders them: the ``$type`` alias of a decoded value, and
the order of values across types.

MongoDB compares values of different types by a fixed order of type *brackets* (MinKey, null,
numbers, strings, objects, arrays, binary, ObjectId, bool, dates, timestamps, regexes, MaxKey);
all numeric types are one bracket, compared by value. ``$gt``/``$lt`` in a query compare within
one bracket only, so a query for "after X in BSON order" names the later brackets with
``$type`` (:func:`after_filter`, :func:`at_or_after`, :func:`before`): the scanner resumes with
one, a shared backfill's ranges are made of them. ``census`` and ``verify --reversible`` name
a value's type by its alias (:func:`type_name`), and ``_id`` identity
(:mod:`~cdc_migrator.base.identity`) takes the numeric types as one.

The deprecated symbol type (sorted with strings) is left out: drivers no longer write it.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from bson import (
    Binary,
    DatetimeMS,
    DBRef,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
)
from bson.code import Code

#: The Python types of the numeric bracket (``bool`` is an ``int`` to Python, not to BSON).
NUMBERS = (int, float, Int64, Decimal128)

#: MongoDB's comparison order of BSON types, as ``$type`` aliases, one tuple per bracket.
TYPE_ORDER: list[tuple[str, ...]] = [
    ("minKey",), ("null",), ("int", "long", "double", "decimal"), ("string",),
    ("object",), ("array",), ("binData",), ("objectId",), ("bool",), ("date",), ("timestamp",),
    ("regex",), ("maxKey",),
]


def rank(value: Any) -> int:
    """The index in :data:`TYPE_ORDER` of the bracket of a decoded value."""
    if isinstance(value, MinKey):
        return 0
    if value is None:
        return 1
    if isinstance(value, bool):
        return 8
    if isinstance(value, NUMBERS):
        return 2
    if isinstance(value, str):
        return 3
    return _rank_of_others(value)


def _rank_of_others(value: Any) -> int:
    for kinds, index in _BRACKETS:
        if isinstance(value, kinds):
            return index
    raise TypeError(f"unsupported _id type {type(value).__name__}")


# After MinKey, null, bool, numbers and strings (tried first, in that order, by rank()).
_BRACKETS: tuple[tuple[type | tuple[type, ...], int], ...] = (
    ((Mapping, DBRef), 4),
    ((list, tuple), 5),
    ((bytes, Binary, uuid.UUID), 6),
    (ObjectId, 7),
    ((dt.datetime, DatetimeMS), 9),
    (Timestamp, 10),
    ((Regex, re.Pattern), 11),
    (MaxKey, 12),
)


def compare(a: Any, b: Any) -> int | None:
    """-1, 0 or 1 as MongoDB orders ``a`` and ``b`` (simple collation); None where this does not
    know the order within a bracket (documents, arrays, binaries, regexes, NaN): callers that
    only refine a plan with it leave such values out."""
    try:
        ra, rb = rank(a), rank(b)
    except TypeError:
        return None
    if ra != rb:
        return -1 if ra < rb else 1
    key_a, key_b = _order_key(a), _order_key(b)
    if key_a is None or key_b is None:
        return None
    try:
        return (key_a > key_b) - (key_a < key_b)
    except TypeError:  # a naive and an aware date
        return None


def _order_key(value: Any) -> Any:
    """What orders ``value`` within its bracket, natively; None when not known here."""
    if value is None or isinstance(value, (MinKey, MaxKey)):
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        return None if number.is_nan() else number
    if isinstance(value, float):
        return None if value != value else Decimal(value)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")  # binary, by UTF-8 bytes
    if isinstance(value, (ObjectId, dt.datetime, Timestamp)):
        return value
    return None


def _aliases(ranks: range) -> list[str]:
    return [alias for index in ranks for alias in TYPE_ORDER[index]]


def after_filter(last_id: Any) -> dict[str, Any]:
    """A query for the documents whose ``_id`` sorts after ``last_id`` in BSON order."""
    later = _aliases(range(rank(last_id) + 1, len(TYPE_ORDER)))
    clauses: list[dict[str, Any]] = [{"_id": {"$gt": last_id}}]
    if later:
        clauses.append({"_id": {"$type": later}})
    return {"$or": clauses}


def at_or_after(value: Any) -> dict[str, Any]:
    """``_id`` >= ``value`` in BSON order (later type brackets included)."""
    later = _aliases(range(rank(value) + 1, len(TYPE_ORDER)))
    clauses: list[dict[str, Any]] = [{"_id": {"$gte": value}}]
    if later:
        clauses.append({"_id": {"$type": later}})
    return {"$or": clauses}


def before(value: Any) -> dict[str, Any]:
    """``_id`` < ``value`` in BSON order (earlier type brackets included)."""
    earlier = _aliases(range(0, rank(value)))
    clauses: list[dict[str, Any]] = [{"_id": {"$lt": value}}]
    if earlier:
        clauses.append({"_id": {"$type": earlier}})
    return {"$or": clauses}


# Python type of a decoded value (codec policy of base/codec.py) -> MongoDB's $type alias.
# bool before int and Int64 before int: they are subclasses of int.
_TYPE_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "bool"),
    (Int64, "long"),
    (int, "int"),
    (float, "double"),
    (str, "string"),
    (DBRef, "dbref"),
    (dict, "object"),
    (list, "array"),
    (ObjectId, "objectId"),
    ((dt.datetime, DatetimeMS), "date"),
    (uuid.UUID, "binData(4)"),
    (Decimal128, "decimal"),
    (Timestamp, "timestamp"),
    ((Regex, re.Pattern), "regex"),
    (Code, "javascript"),
    (MinKey, "minKey"),
    (MaxKey, "maxKey"),
)


def type_name(value: Any) -> str:
    """The BSON type of a decoded value, by MongoDB's ``$type`` alias (binary with its
    subtype, since subtypes 3 and 4 hold UUIDs a transform treats apart)."""
    if value is None:
        return "null"
    if isinstance(value, Binary):
        return f"binData({value.subtype})"
    if isinstance(value, bytes):
        return "binData(0)"
    for kinds, name in _TYPE_NAMES:
        if isinstance(value, kinds):
            return name
    return type(value).__name__
