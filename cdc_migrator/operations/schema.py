"""Contract schemas in MongoDB's ``$jsonSchema`` dialect: checked before use, and applied to
documents where the server cannot.

:func:`dialect_problems` says what MongoDB would refuse in a schema: it implements draft 4 of
JSON Schema with omissions (no ``$ref``, ``$schema``, ``default``, ``definitions``, ``format``,
``id``; no ``type: "integer"``; an unknown keyword is an error) and the extension ``bsonType``.
:func:`errors` evaluates a schema that passed that check: ``bsonType``/``type``, ``required``,
``properties``, ``additionalProperties``, ``enum``, ``minimum``/``maximum``,
``minLength``/``maxLength``, ``pattern``, ``items``, ``minItems``/``maxItems``. The other
keywords MongoDB accepts (``allOf``, ``anyOf``, ``oneOf``, ``not``, ``dependencies``,
``patternProperties``, ``multipleOf``, ``uniqueItems``, ``minProperties``/``maxProperties``,
``additionalItems``, ``exclusiveMinimum``/``exclusiveMaximum``) are not evaluated here; the
server's validator still enforces them on new writes.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from typing import Any, TypeGuard

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
               "null": "null", "number": "number"}

# MongoDB's $jsonSchema keywords (mongod's json_schema_parser), and those it names as omissions.
KEYWORDS = frozenset({
    "additionalItems", "additionalProperties", "allOf", "anyOf", "bsonType", "dependencies",
    "description", "encrypt", "encryptMetadata", "enum", "exclusiveMaximum", "exclusiveMinimum",
    "items", "maxItems", "maxLength", "maxProperties", "maximum", "minItems", "minLength",
    "minProperties", "minimum", "multipleOf", "not", "oneOf", "pattern", "patternProperties",
    "properties", "required", "title", "type", "uniqueItems",
})
OMITTED_KEYWORDS = frozenset({"$ref", "$schema", "default", "definitions", "format", "id"})
# The aliases of $type, which bsonType takes.
BSON_TYPE_ALIASES = frozenset({
    "double", "string", "object", "array", "binData", "undefined", "objectId", "bool", "date",
    "null", "regex", "dbPointer", "javascript", "symbol", "javascriptWithScope", "int",
    "timestamp", "long", "decimal", "minKey", "maxKey", "number",
})
_COUNT_KEYWORDS = ("maxItems", "maxLength", "maxProperties", "minItems", "minLength",
                   "minProperties")


def dialect_problems(schema: Any, where: str = "schema") -> list[str]:
    """What MongoDB's ``$jsonSchema`` would refuse in ``schema`` (empty when it accepts it)."""
    if not isinstance(schema, dict):
        return [f"{where} must be an object"]
    return (_keyword_problems(schema, where) + _type_problems(schema, where)
            + _number_problems(schema, where) + _value_problems(schema, where)
            + _subschema_problems(schema, where))


def _keyword_problems(schema: dict[str, Any], where: str) -> list[str]:
    problems = []
    for key in schema:
        if key in OMITTED_KEYWORDS:
            problems.append(f"{where}: keyword {key!r} is not supported by MongoDB")
        elif key not in KEYWORDS:
            problems.append(f"{where}: unknown keyword {key!r}")
    if "type" in schema and "bsonType" in schema:
        problems.append(f"{where}: 'type' and 'bsonType' cannot both be given")
    return problems


def _type_problems(schema: dict[str, Any], where: str) -> list[str]:
    problems = []
    for key, aliases in (("type", _JSON_TYPES), ("bsonType", BSON_TYPE_ALIASES)):
        if key not in schema:
            continue
        names = schema[key] if isinstance(schema[key], list) else [schema[key]]
        if not names or not all(isinstance(n, str) for n in names):
            problems.append(f"{where}: {key!r} must be a type name or a list of them")
            continue
        for name in names:
            if key == "type" and name == "integer":
                problems.append(f"{where}: type 'integer' is not supported by MongoDB (use "
                                "bsonType 'int' or 'long', or ['int', 'long'])")
            elif name not in aliases:
                problems.append(f"{where}: unknown {key} {name!r}")
    return problems


def _number_problems(schema: dict[str, Any], where: str) -> list[str]:
    problems = []
    for key in ("minimum", "maximum", "multipleOf"):
        if key in schema and not _is_number(schema[key]):
            problems.append(f"{where}: {key!r} must be a number")
    if _is_number(schema.get("multipleOf")) and schema["multipleOf"] <= 0:
        problems.append(f"{where}: 'multipleOf' must be positive")
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if key in schema:
            if not isinstance(schema[key], bool):
                problems.append(f"{where}: {key!r} must be true or false (draft 4)")
            if bound not in schema:
                problems.append(f"{where}: {key!r} needs {bound!r}")
    for key in _COUNT_KEYWORDS:
        value = schema.get(key)
        if key in schema and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and value >= 0 and value == int(value)):
            problems.append(f"{where}: {key!r} must be a non-negative integer")
    return problems


def _value_problems(schema: dict[str, Any], where: str) -> list[str]:
    problems = []
    for key in ("title", "description", "pattern"):
        if key in schema and not isinstance(schema[key], str):
            problems.append(f"{where}: {key!r} must be a string")
    if "uniqueItems" in schema and not isinstance(schema["uniqueItems"], bool):
        problems.append(f"{where}: 'uniqueItems' must be true or false")
    if "enum" in schema and not (isinstance(schema["enum"], list) and schema["enum"]):
        problems.append(f"{where}: 'enum' must be a non-empty list")
    if "required" in schema:
        required = schema["required"]
        if not (isinstance(required, list) and required
                and all(isinstance(n, str) for n in required)
                and len(set(required)) == len(required)):
            problems.append(f"{where}: 'required' must be a non-empty list of distinct names")
    return problems


def _subschema_problems(schema: dict[str, Any], where: str) -> list[str]:
    """The problems of the schemas inside ``schema`` (properties, items, combinations)."""
    problems: list[str] = []
    for key in ("properties", "patternProperties"):
        if key in schema:
            if not isinstance(schema[key], dict):
                problems.append(f"{where}: {key!r} must be an object")
                continue
            for name, sub in schema[key].items():
                problems += dialect_problems(sub, f"{where}.{key}.{name}")
    for key in ("additionalProperties", "additionalItems"):
        if key in schema and not isinstance(schema[key], bool):
            problems += dialect_problems(schema[key], f"{where}.{key}")
    if "items" in schema:
        items = schema["items"]
        if isinstance(items, list):
            for i, sub in enumerate(items):
                problems += dialect_problems(sub, f"{where}.items[{i}]")
        else:
            problems += dialect_problems(items, f"{where}.items")
    return problems + _combination_problems(schema, where)


def _combination_problems(schema: dict[str, Any], where: str) -> list[str]:
    """The problems of the schemas ``schema`` combines (allOf, not, dependencies, ...)."""
    problems: list[str] = []
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            if not (isinstance(schema[key], list) and schema[key]):
                problems.append(f"{where}: {key!r} must be a non-empty list of schemas")
                continue
            for i, sub in enumerate(schema[key]):
                problems += dialect_problems(sub, f"{where}.{key}[{i}]")
    if "not" in schema:
        problems += dialect_problems(schema["not"], f"{where}.not")
    if "dependencies" in schema:
        problems += _dependencies_problems(schema["dependencies"], where)
    return problems


def _dependencies_problems(dependencies: Any, where: str) -> list[str]:
    if not isinstance(dependencies, dict):
        return [f"{where}: 'dependencies' must be an object"]
    problems: list[str] = []
    for name, dep in dependencies.items():
        if isinstance(dep, list):
            if not (dep and all(isinstance(n, str) for n in dep)):
                problems.append(f"{where}.dependencies.{name}: must be a non-empty "
                                "list of names, or a schema")
        else:
            problems += dialect_problems(dep, f"{where}.dependencies.{name}")
    return problems


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty when it conforms)."""
    where = path or "document"
    wrong_type = _type_error(schema, value, where)
    if wrong_type is not None:
        return [wrong_type]
    problems: list[str] = []
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
        problems += _object_errors(schema, value, path)
    if isinstance(value, list):
        problems += _array_errors(schema, value, where)
    return problems


def _type_error(schema: dict[str, Any], value: Any, where: str) -> str | None:
    types = schema.get("bsonType")
    if types is None and "type" in schema:
        json_types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        types = [_JSON_TYPES.get(t, t) for t in json_types]
    if types is None:
        return None
    types = types if isinstance(types, list) else [types]
    if any(_BSON_TYPES.get(t, lambda v: False)(value) for t in types):
        return None
    return f"{where} is {type(value).__name__}, expected {'/'.join(types)}"


def _object_errors(schema: dict[str, Any], value: dict[str, Any], path: str) -> list[str]:
    problems = []
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
    return problems


def _array_errors(schema: dict[str, Any], value: list[Any], where: str) -> list[str]:
    problems = []
    if "minItems" in schema and len(value) < schema["minItems"]:
        problems.append(f"{where} has fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(f"{where} has more than {schema['maxItems']} items")
    if isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += errors(schema["items"], item, f"{where}[{i}]")
    return problems


def validator_for(schema: dict[str, Any]) -> Callable[[dict[str, Any]], str | None]:
    """A document check for :func:`~cdc_migrator.operations.verify.verify`: its first problem,
    or None."""
    def check(doc: dict[str, Any]) -> str | None:
        found = errors(schema, doc)
        return found[0] if found else None
    return check


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
