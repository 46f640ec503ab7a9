"""A migration's fingerprint: the hash of the code that decides what it does to a document.

Hashed: the transform, its inverse and the functions of ``depends_on``, each as its syntax tree
together with every definition of its file it reaches (helpers, constants, imported names,
values it closes over); the collection, the filter, the fields of ``depends_on``, and the
contract schema (its JSON, keys sorted). A comment, a docstring, formatting, a blank line, the
order of definitions in the file, the decorators' layout, ``batch_size`` and ``after`` change
nothing; any other edit of what runs changes the fingerprint.

The syntax trees come from the text the loader executed (:attr:`Migration.source_text`), so a
process names the code it runs even after its file changed on disk. Code imported from other
modules is not part of it. The canonical form leaves out empty and absent fields, so the same
source gives the same fingerprint under the Python versions whose syntax trees differ only so
(3.11, 3.12 and 3.13 were compared).

Changing the canonical form changes every fingerprint: after such an upgrade of the tool every
member would hold. It needs the recorded fingerprints carried over, and a changelog entry.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from types import CodeType
from typing import Any

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from ..migration import Migration

#: How many hex digits of a fingerprint ``status``, ``history`` and the metrics show.
SHOWN = 12

_DOCUMENTED = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_DEFINES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# Fields of a root function that are not what it does: its name, its decorators.
_ROOT_SKIPPED = frozenset({"name", "decorator_list"})
_PLAIN = (str, bytes, int, float, complex, bool, type(None))


def short(fingerprint: str | None) -> str:
    """The fingerprint as shown: its first :data:`SHOWN` hex digits ("none" for None)."""
    return fingerprint[:SHOWN] if fingerprint else "none"


def fingerprint(migration: Migration, schemas: Path | None = None) -> str:
    """The SHA-256 (hex) of what decides ``migration``'s effect on a document; ``schemas`` is
    the directory its ``contract_schema`` is read from."""
    parts = [
        ("collection", migration.collection),
        ("filter", _document(migration.filter)),
        ("transform", _function(migration.transform, migration)),
        ("inverse", _function(migration.inverse, migration) if migration.inverse else ""),
        ("depends_on", _dependencies(migration)),
        ("contract", _schema(migration.contract_schema, schemas)),
    ]
    text = "\n".join(f"{name}:{value}" for name, value in parts)
    return hashlib.sha256(text.encode()).hexdigest()


def _document(value: Any) -> str:
    """A MongoDB query as canonical extended JSON (exact about BSON types)."""
    try:
        return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)
    except (TypeError, ValueError):  # not encodable: refused later, still identified here
        return repr(value)


def _dependencies(migration: Migration) -> str:
    found = []
    for name in sorted(migration.depends_on):
        dependency = migration.depends_on[name]
        how = f"field {dependency.field}" if dependency.field is not None \
            else f"function {_function(dependency.affected, migration)}"
        found.append(f"{name}={how}")
    return ";".join(found)


def _schema(name: str | None, schemas: Path | None) -> str:
    if name is None:
        return ""
    path = Path(name)
    if not path.is_absolute() and schemas is not None:
        path = schemas / name
    try:
        text = path.read_text()
    except OSError:
        return f"missing {name}"  # cutover refuses it; its appearance changes the fingerprint
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return f"not JSON {hashlib.sha256(text.encode()).hexdigest()}"


# ------------------------------------------------------------------------------ functions


def _function(fn: Any, migration: Migration, within: frozenset[int] = frozenset()) -> str:
    """A function as its syntax tree and the definitions of its file it reaches; its
    compiled form where its source cannot be found. ``within``: the functions whose closures
    led here (a function closing over itself is named, not followed again)."""
    if id(fn) in within:
        return "itself"
    # A callable object runs its class's __call__.
    code = getattr(fn, "__code__", None) or getattr(type(fn).__call__, "__code__", None)
    if code is None:
        return f"callable {type(fn).__module__}.{type(fn).__qualname__}"
    tree = _tree_of(fn, code, migration)
    nodes = _defining_nodes(tree, code) if tree is not None else []
    if tree is None or not nodes:
        return f"compiled {_compiled(code)}"
    root = ";".join(_canonical(node, skip=_ROOT_SKIPPED) for node in nodes)
    reached = sorted(_reached(tree, nodes))
    closure = _closure(fn, migration, within | {id(fn)})
    return f"{root}|uses {';'.join(reached)}|closes over {closure}"


def _tree_of(fn: Any, code: CodeType, migration: Migration) -> ast.Module | None:
    """The syntax tree of the file defining ``fn``: the text the loader executed when ``fn``
    comes from the migration's file, else the source of its module as it is now."""
    text = migration.source_text if migration.source_text and \
        code.co_filename == migration.source else None
    if text is None:
        try:
            module = inspect.getmodule(fn)
            text = inspect.getsource(module) if module is not None else None
        except (OSError, TypeError):
            text = None
    if not text:
        return None
    try:
        return ast.parse(text)
    except SyntaxError:
        return None


def _defining_nodes(tree: ast.Module, code: CodeType) -> list[ast.AST]:
    """The node (or, for lambdas sharing a line, the nodes) that compiled into ``code``."""
    if code.co_name == "<lambda>":
        return [n for n in ast.walk(tree)
                if isinstance(n, ast.Lambda) and n.lineno == code.co_firstlineno]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) \
                and node.name == code.co_name:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if first == code.co_firstlineno:
                return [node]
    return []


def _top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """The module's statements, those inside a top-level ``if``/``try``/``with`` too."""
    pending = list(tree.body)
    while pending:
        stmt = pending.pop(0)
        if isinstance(stmt, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(stmt, block, []))
        elif isinstance(stmt, ast.ExceptHandler):
            pending.extend(stmt.body)
        else:
            yield stmt


def _definitions(tree: ast.Module) -> dict[str, list[str]]:
    """Each name the module defines at its top level -> the canonical forms of what defines
    it (an import of several names is one definition per name)."""
    found: dict[str, list[str]] = {}
    for stmt in _top_level(tree):
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            for alias in stmt.names:
                bound = alias.asname or alias.name.split(".")[0]
                origin = getattr(stmt, "module", None) or ""
                level = getattr(stmt, "level", 0) or 0
                found.setdefault(bound, []).append(
                    f"import {'.' * level}{origin}:{alias.name} as {bound}")
            continue
        for name in _bound_names(stmt):
            found.setdefault(name, []).append(_canonical(stmt))
    return found


def _bound_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, _DEFINES):
        return [stmt.name]
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
        targets = [stmt.target]
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _reached(tree: ast.Module, roots: list[ast.AST]) -> set[str]:
    """The canonical forms of every top-level definition the roots reach, transitively."""
    definitions = _definitions(tree)
    seen_names: set[str] = set()
    reached: set[str] = set()
    pending = [name for root in roots for name in _root_names(root)]
    while pending:
        name = pending.pop()
        if name in seen_names or name not in definitions:
            continue
        seen_names.add(name)
        for text in definitions[name]:
            reached.add(f"{name}={text}")
        pending.extend(_names_in(tree, name))
    return reached


def _root_names(root: ast.AST) -> list[str]:
    """The names a root function reads, its decorators left out (``@migration(...)`` says
    how it runs, and its filter and schema are hashed by value)."""
    parts: list[Any] = [root]
    if isinstance(root, ast.FunctionDef | ast.AsyncFunctionDef):
        parts = [root.args, *root.body, *([root.returns] if root.returns else [])]
    return [n.id for part in parts for n in ast.walk(part) if isinstance(n, ast.Name)]


def _names_in(tree: ast.Module, name: str) -> list[str]:
    """The names read by the top-level statements that define ``name``."""
    return [n.id for stmt in _top_level(tree) if name in _bound_names(stmt)
            for n in ast.walk(stmt) if isinstance(n, ast.Name)]


def _closure(fn: Any, migration: Migration, within: frozenset[int]) -> str:
    """The values a function closes over (a factory's arguments): plain values by their
    repr, functions by their code, anything else by its type."""
    cells = getattr(fn, "__closure__", None) or ()
    names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    found = []
    for name, cell in zip(names, cells, strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # not filled in yet
            value = None
        found.append(f"{name}={_value(value, migration, within)}")
    return ";".join(found)


def _value(value: Any, migration: Migration, within: frozenset[int]) -> str:
    if isinstance(value, _PLAIN):
        return repr(value)
    if id(value) in within:  # a container holding itself
        return "itself"
    inner = within | {id(value)}
    if isinstance(value, list | tuple | frozenset | set):
        items = [_value(v, migration, inner) for v in value]
        if isinstance(value, set | frozenset):
            items.sort()
        return f"{type(value).__name__}({','.join(items)})"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_value(k, migration, inner)}:{_value(v, migration, inner)}"
                              for k, v in value.items()) + "}"
    if callable(value) and hasattr(value, "__code__"):
        return _function(value, migration, within)
    return f"a {type(value).__module__}.{type(value).__qualname__}"


# ------------------------------------------------------------------------- canonical forms


def _canonical(node: Any, skip: frozenset[str] = frozenset()) -> str:
    """A syntax tree as text: node types and fields, no positions, no docstrings, no empty or
    absent fields (which Python versions add or drop), no string prefix kinds."""
    if isinstance(node, ast.AST):
        parts = []
        for name in node._fields:
            if name in skip or name in ("kind", "type_comment"):
                continue
            value = getattr(node, name, None)
            if name == "body" and isinstance(node, _DOCUMENTED) and value \
                    and _is_docstring(value[0]):
                value = value[1:]
            if value is None or value == []:
                continue
            parts.append(f"{name}={_canonical(value)}")
        return f"{type(node).__name__}({','.join(parts)})"
    if isinstance(node, list):
        return "[" + ",".join(_canonical(item) for item in node) + "]"
    return repr(node)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
        and isinstance(stmt.value.value, str)


def _compiled(code: CodeType) -> str:
    """The compiled form of a function whose source is unknown: its bytecode, constants and
    names (nested functions included); positions left out."""
    parts: list[str] = [code.co_code.hex(), ",".join(code.co_names),
                        ",".join(code.co_varnames)]
    for const in code.co_consts:
        parts.append(_compiled(const) if isinstance(const, CodeType) else repr(const))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
