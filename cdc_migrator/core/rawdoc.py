"""Raw BSON documents, read one top-level element at a time, and guarded statements as bytes.

A document handed over as bytes (or a ``RawBSONDocument``) stays bytes: :class:`RawView`
indexes its top-level element headers once and decodes a value only when it is read, with
:data:`~cdc_migrator.base.codec.CODEC_OPTIONS`, so the transform sees the same Python values a
decoded ``dict`` holds. The guard of a write then pins a field by copying its element's value
bytes (see :func:`raw_guard`): a pinned value is never decoded and encoded again.

The element index and the guard have a compiled counterpart (``_rawbson.c``, built with the
package where a C compiler is at hand). It takes the common cases and hands anything else back
to the Python code here, which stays the reference: the tests compare the two on documents of
every BSON type. Setting ``CDC_MIGRATOR_PURE_PYTHON=1`` leaves it out.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import bson
from bson import ObjectId
from bson.errors import InvalidBSON
from bson.raw_bson import RawBSONDocument

from ..base.codec import CODEC_OPTIONS

try:
    from . import _rawbson as compiled
except ImportError:  # built without a C compiler: the Python code below does it all
    compiled = None  # type: ignore[assignment]
if os.environ.get("CDC_MIGRATOR_PURE_PYTHON"):
    compiled = None  # type: ignore[assignment]


def implementation() -> str:
    """Which raw-BSON hot path runs: ``"compiled"`` or ``"python"``."""
    return "python" if compiled is None else "compiled"

# Value sizes of the fixed-size BSON types: double, undefined, ObjectId, bool, date, null,
# int32, Timestamp, int64, Decimal128, MinKey, MaxKey.
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8,
          0x13: 16, 0xFF: 0, 0x7F: 0}
_DOUBLE, _STRING, _DOCUMENT, _ARRAY, _BINARY = 0x01, 0x02, 0x03, 0x04, 0x05
_NULL, _INT32 = 0x0A, 0x10
_unpack_double = struct.Struct("<d").unpack_from
_unpack_int32 = struct.Struct("<i").unpack_from
_unpack_int64 = struct.Struct("<q").unpack_from
_OBJECT_ID, _BOOL, _DATE, _REGEX, _DB_POINTER = 0x07, 0x08, 0x09, 0x0B, 0x0C
_STRING_LIKE = frozenset({_STRING, 0x0D, 0x0E})  # string, JavaScript code, symbol
_DOCUMENT_LIKE = frozenset({_DOCUMENT, _ARRAY, 0x0F})  # document, array, code with scope
# The dates CODEC_OPTIONS decodes to a ``datetime`` (others are ``DatetimeMS``).
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_DATE_RANGE = range((dt.datetime.min.replace(tzinfo=dt.UTC) - _EPOCH) // _MS,
                    (dt.datetime.max.replace(tzinfo=dt.UTC) - _EPOCH) // _MS + 1)


def _int32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "little", signed=True)


def _value_size(data: bytes, kind: int, start: int) -> int:
    """The size of the value of type ``kind`` at ``start`` in ``data``."""
    size = _FIXED.get(kind)
    if size is not None:
        return size
    if kind in _STRING_LIKE:
        return 4 + _int32(data, start)
    if kind in _DOCUMENT_LIKE:
        return _int32(data, start)
    if kind == _BINARY:
        return 5 + _int32(data, start)
    if kind == _REGEX:
        return data.index(b"\x00", data.index(b"\x00", start) + 1) + 1 - start
    if kind == _DB_POINTER:
        return 16 + _int32(data, start)
    raise InvalidBSON(f"unknown BSON type {kind:#04x}")


def element_index(data: bytes) -> dict[str, tuple[int, int, int]]:
    """Each top-level name of the BSON document ``data`` -> (element start, value start,
    element end)."""
    view = RawView(data)
    view._scan(None)
    return view._index


def raw_bytes(doc: Any) -> bytes | None:
    """The BSON bytes of a raw document (``bytes`` or ``RawBSONDocument``), None for others."""
    if isinstance(doc, RawBSONDocument):
        return bytes(doc.raw)
    if isinstance(doc, (bytes, bytearray, memoryview)):
        return bytes(doc)
    return None


class RawView(Mapping[str, Any]):
    """A read-only mapping over BSON bytes that decodes one top-level value per read.

    Every read decodes afresh: a caller may change what it got without changing the document.
    Element headers are scanned only as far as a lookup needs; a name whose bytes appear
    nowhere after the scanned part is absent without a scan. A repeated name (which MongoDB
    does not support) has its first value.
    """

    __slots__ = ("data", "_index", "_absent", "_scanned", "_complete")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._absent: set[str] = set()  # names looked up and not found
        # Compiled, the whole index costs less than Python's first look-up.
        index = None if compiled is None else compiled.scan(data)
        if index is not None:
            self._index, self._scanned, self._complete = index, len(data) - 1, True
            return
        self._index = {}
        self._scanned = 4  # the element headers before this offset are in _index
        self._complete = False

    def _scan(self, until: str | None) -> tuple[int, int, int] | None:
        """Index element headers from where the last scan stopped, up to ``until`` (None:
        all); its entry, or None once every header is indexed."""
        data, index = self.data, self._index
        pos, last = self._scanned, len(data) - 1
        while pos < last:
            kind = data[pos]
            nul = data.index(b"\x00", pos + 1)
            start = nul + 1
            # The common kinds' sizes here, the others by _value_size (one call less).
            size = _FIXED.get(kind)
            if size is None:
                size = (_unpack_int32(data, start)[0] + 4 if kind == _STRING
                        else _value_size(data, kind, start))
            entry = (pos, start, start + size)
            name = data[pos + 1:nul].decode()
            index.setdefault(name, entry)
            pos = entry[2]
            if name == until:
                self._scanned = pos
                return entry
        self._scanned, self._complete = pos, True
        return None

    def _find(self, key: str) -> tuple[int, int, int] | None:
        found = self._index.get(key)
        if found is not None or self._complete or key in self._absent:
            return found
        if self.data.find(key.encode() + b"\x00", self._scanned) == -1:
            found = None  # not even the bytes of its name: not a name of the rest
        else:
            found = self._scan(key)
        if found is None:
            self._absent.add(key)
        return found

    def _entry(self, key: str) -> tuple[int, int, int]:
        found = self._find(key)
        if found is None:
            raise KeyError(key)
        return found

    def __getitem__(self, key: str) -> Any:
        return self._decoded(self._entry(key))

    def get(self, key: str, default: Any = None) -> Any:
        found = self._find(key)
        return default if found is None else self._decoded(found)

    def _decoded(self, entry: tuple[int, int, int]) -> Any:
        begin, start, end = entry
        data = self.data
        kind = data[begin]
        # The common scalars decoded here as the codec decodes them; the rest by bson.
        if kind == _STRING:
            return data[start + 4:end - 1].decode()
        if kind == _INT32:
            return int.from_bytes(data[start:end], "little", signed=True)
        if kind == _DOUBLE:
            return _unpack_double(data, start)[0]
        if kind == _BOOL:
            return data[start] == 1
        if kind == _NULL:
            return None
        if kind == _OBJECT_ID:
            return ObjectId(data[start:end])
        element = data[begin:end]
        one = bson.decode((len(element) + 5).to_bytes(4, "little") + element + b"\x00",
                          CODEC_OPTIONS)
        return one.popitem()[1]

    def __contains__(self, key: object) -> bool:
        return type(key) is str and self._find(key) is not None

    def __iter__(self) -> Iterator[str]:
        if not self._complete:
            self._scan(None)
        return iter(self._index)

    def __len__(self) -> int:
        if not self._complete:
            self._scan(None)
        return len(self._index)

    def __repr__(self) -> str:
        return f"RawView({bson.decode(self.data, CODEC_OPTIONS)!r})"

    def value(self, key: str) -> tuple[int, bytes] | None:
        """``key``'s BSON type byte and value bytes, or None when it is absent."""
        found = self._find(key)
        if found is None:
            return None
        begin, start, end = found
        return self.data[begin], self.data[start:end]

    def document_id(self) -> Any:
        """The document's ``_id`` (see :func:`document_id`)."""
        found = _first_id(self.data)
        return self["_id"] if found is None else found

    def element(self, key: str) -> bytes:
        """``key``'s whole element: type byte, name and value."""
        begin, _, end = self._entry(key)
        return self.data[begin:end]


# --- building BSON by hand: elements of a known type around bytes already encoded ---------

def _cstring(name: str) -> bytes:
    return name.encode() + b"\x00"


def _string(text: str) -> bytes:
    encoded = text.encode()
    return (len(encoded) + 1).to_bytes(4, "little") + encoded + b"\x00"


def document(elements: bytes) -> bytes:
    """A BSON document of the concatenated ``elements``."""
    return (len(elements) + 5).to_bytes(4, "little") + elements + b"\x00"


def _array(*values: tuple[int, bytes]) -> bytes:
    return document(b"".join(bytes((kind,)) + str(i).encode() + b"\x00" + value
                             for i, (kind, value) in enumerate(values)))


def _sub(name: str, value: bytes) -> bytes:
    return b"\x03" + _cstring(name) + value


_NOT_ARRAY = b"\x03$not\x00" + bson.encode({"$type": "array"})
_EXISTS_FALSE = bson.encode({"$exists": False})
_EXISTS_TRUE = bson.encode({"$exists": True})
_MISSING = (_STRING, _string("missing"))


def _literal(kind: int, value: bytes) -> tuple[int, bytes]:
    return _DOCUMENT, document(bytes((kind,)) + b"$literal\x00" + value)


def _odd_name_pins(name: str, pinned: tuple[int, bytes] | None) -> list[tuple[int, bytes]]:
    """The ``$expr`` conditions pinning a name a query would read as a path or an operator."""
    got = document(_sub("$getField", document(_sub("field", document(
        b"\x02$literal\x00" + _string(name))))))
    of_type = (_DOCUMENT, document(_sub("$type", got)))
    pins = [(_DOCUMENT, document(b"\x04" + (b"$eq\x00" if pinned is None else b"$ne\x00")
                                 + _array(of_type, _MISSING)))]
    if pinned is not None:
        pins.append((_DOCUMENT, document(
            b"\x04$eq\x00" + _array((_DOCUMENT, got), _literal(*pinned)))))
    return pins


#: The header of a pinned name's element, by name, for the names a query reads as names
#: (bounded: a transform may make names up).
_HEADERS: dict[str, bytes] = {}
_HEADERS_KEPT = 4096
# Around a value pinned by plain equality: its ``$eq`` element's header per BSON type, and the
# rest of the condition; the condition's length is the value's plus the fixed parts'.
_EQ = {kind: bytes((kind,)) + b"$eq\x00" for kind in (_STRING, _BOOL, _OBJECT_ID, _DATE)}
_PLAIN_END = _NOT_ARRAY + b"\x00"
_PLAIN_FIXED = 4 + len(b"\x02$eq\x00") + len(_PLAIN_END)


def _header(name: str) -> bytes | None:
    """``name``'s sub-document element header, or None for a name a query would read as a
    path or an operator (with a ``.``, starting with ``$``, or empty)."""
    header = _HEADERS.get(name)
    if header is None:
        if not name or name[0] == "$" or "." in name:
            return None
        header = b"\x03" + name.encode() + b"\x00"
        if len(_HEADERS) < _HEADERS_KEPT:
            _HEADERS[name] = header
    return header


def raw_guard(view: RawView, fields: set[str]) -> tuple[bytes, frozenset[str]]:
    """The BSON bytes of ``guard_filter(view, fields)`` and its top-level names, each pinned
    value copied from ``view``'s bytes. The same forms, in the same order, as
    :func:`~cdc_migrator.core.patch.guard_filter` (which documents them)."""
    if compiled is not None and view._complete:
        made = compiled.guard(view.data, view._index, fields)
        if made is not None:
            return made
    data, index, absent, headers = view.data, view._index, view._absent, _HEADERS
    begin, _, end = view._entry("_id")
    parts = [b"", data[begin:end]]  # the first part becomes the document's length
    names = ["_id"]
    equal: list[tuple[int, bytes]] = []
    for name in sorted(fields):
        if name == "_id":
            continue
        # What the view knows and the headers' cache first: most names were looked up.
        found = index.get(name)
        if found is None and name not in absent:
            found = view._find(name)
        header = headers.get(name) or _header(name)
        if header is None:
            equal += _odd_name_pins(name, None if found is None else _value_of(data, found))
            continue
        names.append(name)
        if found is None:
            parts.append(header + _EXISTS_FALSE)
            continue
        begin, start, end = found
        kind = data[begin]
        if kind in _EQ and (kind != _DATE or _unpack_int64(data, start)[0] in _DATE_RANGE):
            # {name: {$eq: value, $not: {$type: "array"}}}, in one join
            parts += (header, (end - start + _PLAIN_FIXED).to_bytes(4, "little"), _EQ[kind],
                      data[start:end], _PLAIN_END)
        else:
            parts.append(header + _EXISTS_TRUE)
            equal.append((_DOCUMENT, document(
                b"\x04$eq\x00" + _array((_STRING, _string("$" + name)),
                                         _literal(kind, data[start:end])))))
    if equal:
        names.append("$expr")
        kind, value = equal[0] if len(equal) == 1 else (
            _DOCUMENT, document(b"\x04$and\x00" + _array(*equal)))
        parts.append(bytes((kind,)) + b"$expr\x00" + value)
    parts[0] = (sum(map(len, parts)) + 5).to_bytes(4, "little")
    parts.append(b"\x00")
    return b"".join(parts), frozenset(names)


def _value_of(data: bytes, entry: tuple[int, int, int]) -> tuple[int, bytes]:
    begin, start, end = entry
    return data[begin], data[start:end]


def _first_id(data: bytes) -> Any:
    """An ObjectId or 32-bit integer ``_id`` stored first, read straight from its bytes; None
    for another."""
    if data[5:9] == b"_id\x00":
        kind = data[4]
        if kind == _OBJECT_ID and len(data) >= 22:
            return ObjectId(data[9:21])
        if kind == _INT32 and len(data) >= 14:
            return int.from_bytes(data[9:13], "little", signed=True)
    return None


#: A string element's header (type byte and name), by name (bounded, as _HEADERS).
_STRING_HEADERS: dict[str, bytes] = {}
_INT32_RANGE = range(-(1 << 31), 1 << 31)
_pack_double = struct.Struct("<d").pack


def plain_elements(values: Mapping[str, Any]) -> bytes | None:
    """The BSON elements of ``values`` (as ``bson.encode`` with CODEC_OPTIONS makes them, less
    the document's length and end) when every value is a string, a 32-bit integer, a
    boolean, a double or None; None for any other value, or a name or string BSON cannot hold
    (``bson.encode`` then makes the elements, or says why it cannot), and for an ``_id``
    (which ``bson.encode`` moves first)."""
    if "_id" in values:
        return None
    parts: list[bytes] = []
    try:
        for name, value in values.items():
            header = _STRING_HEADERS.get(name)
            if header is None:
                if "\x00" in name:
                    return None
                header = b"\x02" + name.encode() + b"\x00"
                if len(_STRING_HEADERS) < _HEADERS_KEPT:
                    _STRING_HEADERS[name] = header
            kind = type(value)
            if kind is str:
                text = value.encode()
                parts += (header, (len(text) + 1).to_bytes(4, "little"), text, b"\x00")
            elif kind is int and value in _INT32_RANGE:
                parts += (b"\x10", header[1:], value.to_bytes(4, "little", signed=True))
            elif kind is bool:
                parts += (b"\x08", header[1:], b"\x01" if value else b"\x00")
            elif kind is float:
                parts += (b"\x01", header[1:], _pack_double(value))
            elif value is None:
                parts += (b"\x0a", header[1:])
            else:
                return None
    except UnicodeEncodeError:  # a lone surrogate, in a name or a string
        return None
    return b"".join(parts)


def document_id(doc: Mapping[str, Any] | bytes) -> Any:
    """The ``_id`` of a raw or decoded document, decoded as CODEC_OPTIONS decodes it (a raw
    document's other fields left as bytes). MongoDB stores ``_id`` first: an ObjectId or
    32-bit integer one there is read straight from its bytes (the consumer's and ``apply``'s
    common case)."""
    data = raw_bytes(doc)
    if data is None:
        assert isinstance(doc, Mapping)
        return doc["_id"]
    found = _first_id(data)
    return RawView(data)["_id"] if found is None else found
