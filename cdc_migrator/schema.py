"""Checking documents against a MongoDB ``$jsonSchema`` where the server cannot.

Covers the keywords contract schemas use: ``bsonType``/``type``, ``required``, ``properties``,
``additionalProperties``, ``enum``, ``minimum``/``maximum``, ``minLength``/``maxLength``,
``pattern``, ``items``, ``minItems``/``maxItems``. Unknown keywords are ignored.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from typing import Any

from bson import Binary, Decimal128, Int64, ObjectId, Regex, Timestamp

_BSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "double": lambda v: isinstance(v, float),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "binData": lambda v: isinstance(v, (bytes, Binary, uuid.UUID)),
    "objectId": lambda v: isinstance(v, ObjectId),
    "bool": lambda v: isinstance(v, bool),
    "date": lambda v: isinstance(v, dt.datetime),
    "null": lambda v: v is None,
    "regex": lambda v: isinstance(v, (Regex, re.Pattern)),
    "int": lambda v: isinstance(v, int) and not isinstance(v, (bool, Int64))
    and -(2**31) <= v < 2**31,
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "timestamp": lambda v: isinstance(v, Timestamp),
    "decimal": lambda v: isinstance(v, Decimal128),
    "number": lambda v: isinstance(v, (int, float, Decimal128)) and not isinstance(v, bool),
}
_JSON_TYPES = {"string": "string", "object": "object", "array": "array", "boolean": "bool",
               "null": "null", "number": "number", "integer": "long"}


def errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty when it conforms)."""
    problems: list[str] = []
    where = path or "document"
    types = schema.get("bsonType")
    if types is None and "type" in schema:
        json_types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        types = [_JSON_TYPES.get(t, t) for t in json_types]
    if types is not None:
        types = types if isinstance(types, list) else [types]
        if not any(_BSON_TYPES.get(t, lambda v: False)(value) for t in types):
            return [f"{where} is {type(value).__name__}, expected {'/'.join(types)}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where} = {value!r} is not one of {schema['enum']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where} = {value!r} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where} = {value!r} is above {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{where} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{where} is longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where} does not match {schema['pattern']!r}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{_join(path, name)} is required")
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name in value:
                problems += errors(sub, value[name], _join(path, name))
        extra = schema.get("additionalProperties", True)
        for name in value:
            if name in props:
                continue
            if extra is False:
                problems.append(f"{_join(path, name)} is not allowed")
            elif isinstance(extra, dict):
                problems += errors(extra, value[name], _join(path, name))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(f"{where} has fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{where} has more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                problems += errors(schema["items"], item, f"{where}[{i}]")
    return problems


def validator_for(schema: dict[str, Any]) -> Callable[[dict[str, Any]], str | None]:
    """A document check for :func:`cdc_migrator.verify.verify`: first problem, or None."""
    def check(doc: dict[str, Any]) -> str | None:
        found = errors(schema, doc)
        return found[0] if found else None
    return check


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
