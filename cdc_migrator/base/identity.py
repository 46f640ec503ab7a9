"""When two ``_id`` values name one document: MongoDB's equality, not Python's.

To Python ``1 == True == 1.0`` and ``{"a": 1, "b": 2} == {"b": 2, "a": 1}``; to MongoDB a
boolean and a number are different ``_id``s, while ``1``, ``1.0``, ``Int64(1)`` and
``Decimal128("1")`` are one (its unique index compares numbers by value), and embedded
documents compare field by field, in order. :func:`id_key` gives a hashable key with
MongoDB's equality, for grouping and deduplicating the ids of a batch.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Hashable, Mapping
from typing import Any

import bson
from bson import Decimal128, ObjectId

from .bsontypes import NUMBERS
from .codec import CODEC_OPTIONS

__all__ = ["id_key"]

# A double is compared with a Decimal128 by rounding it to 34 digits, as MongoDB does; the
# exponent range is wide enough for every double and every Decimal128.
_DECIMAL = decimal.Context(prec=34, rounding=decimal.ROUND_HALF_EVEN, Emax=10**9, Emin=-10**9)
_NAN = ("number", "NaN")
# bson.encode({"": oid}) up to the ObjectId's 12 bytes: its length (19), type 7, the empty name.
_OBJECT_ID_HEAD = b"\x13\x00\x00\x00\x07\x00"


def id_key(value: Any) -> Hashable:
    """A key equal for two values exactly when MongoDB's ``_id`` index takes them as equal.

    Numbers of any BSON type compare by value (all NaNs are equal, ``-0`` equals ``0``); a
    boolean is not a number; strings compare by code point (the simple collation); embedded
    documents compare field by field in order, arrays element by element, with these rules;
    every other type compares by its BSON encoding (type and bytes).
    """
    if type(value) is ObjectId:  # the common _id, without encoding it: the same bytes
        return ("bson", _OBJECT_ID_HEAD + value.binary + b"\x00")
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, NUMBERS):
        return _number_key(value)
    if type(value) is str:  # not bson.Code, a str subclass of another BSON type
        return ("string", value)
    if isinstance(value, Mapping):
        return ("object", tuple((name, id_key(v)) for name, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(id_key(v) for v in value))
    # Dates, binaries, ObjectIds, timestamps, code, DBRefs... compare by their bytes.
    return ("bson", bson.encode({"": value}, codec_options=CODEC_OPTIONS))


def _number_key(value: int | float | Decimal128) -> Hashable:
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        if number.is_nan():
            return _NAN
    elif isinstance(value, float):
        if math.isnan(value):
            return _NAN
        number = _DECIMAL.create_decimal(value) if math.isfinite(value) else decimal.Decimal(value)
    else:
        number = decimal.Decimal(int(value))
    # Decimals equal in value hash alike (1 == 1.0 == 1E+0, -0 == 0).
    return ("number", number)
