"""Defining migrations and loading them from a transforms directory.

A migration is a per-document transform registered with :func:`migration`::

    @migration(collection="users")
    def add_default_role(doc, ctx):
        if doc.get("role") is None:
            return {"role": "user"}

It returns a patch (fields to ``$set``; the value :data:`UNSET` removes a field), ``None`` when
there is nothing to do, or :data:`DELETE` to delete the document.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


UNSET = _Sentinel("UNSET")
"""Patch value that removes the field from the document."""

DELETE = _Sentinel("DELETE")
"""Return value of a transform that deletes the document."""

Transform = Callable[[Mapping[str, Any], Any], Any]
#: The function form of a dependency: given a changed document of the other collection and the
#: ``ctx``, the ``_id`` values of the migrated documents it affects.
Affected = Callable[[Mapping[str, Any], Any], Iterable[Any]]

# Collections the tool writes itself: a migration cannot depend on them.
_TOOL_COLLECTIONS = ("cdc_migrator_",)


@dataclass(frozen=True)
class Dependency:
    """A collection a migration's transform reads: a change to one of its documents makes the
    migrated documents it names due again.

    Either ``field``, a top-level field of the other collection's documents holding the
    ``_id`` (or an array of ``_id`` values) of migrated documents, or ``affected``, a function
    ``(changed_doc, ctx) -> ids``.
    """

    collection: str
    field: str | None = None
    affected: Affected | None = None

    def describe(self) -> str:
        if self.field is not None:
            return f"{self.collection}.{self.field}"
        return f"{self.collection} via {getattr(self.affected, '__name__', 'a function')}()"


def dependencies_of(collection: str, depends_on: Any) -> dict[str, Dependency]:
    """The validated ``depends_on`` of a migration of ``collection``; raises UsageError with
    one line naming what is wrong."""
    if depends_on is None:
        return {}
    if not isinstance(depends_on, Mapping):
        raise UsageError("@migration depends_on must be a dict {collection: field or "
                         f"function}}, not {type(depends_on).__name__}")
    found: dict[str, Dependency] = {}
    for name, how in depends_on.items():
        if not isinstance(name, str) or not name or "$" in name or "\0" in name \
                or name.startswith("system."):
            raise UsageError(f"@migration depends_on: {name!r} is not a collection name")
        if name == collection:
            raise UsageError(f"@migration depends_on: {name!r} is the migrated collection "
                             "itself; its changes are followed anyway")
        if name.startswith(_TOOL_COLLECTIONS):
            raise UsageError(f"@migration depends_on: {name!r} is a collection of the tool")
        if isinstance(how, str):
            if not how or how.startswith("$") or "." in how or how == "_id":
                raise UsageError(
                    f"@migration depends_on[{name!r}]: {how!r} must be a top-level field "
                    "holding the migrated document's _id (not _id, no '.', no '$'); for "
                    "anything else give a function (changed_doc, ctx) -> ids")
            found[name] = Dependency(name, field=how)
        elif callable(how):
            if not _takes_two(how):
                raise UsageError(
                    f"@migration depends_on[{name!r}]: the function "
                    f"{getattr(how, '__name__', how)!r} must take (changed_doc, ctx)")
            found[name] = Dependency(name, affected=how)
        else:
            raise UsageError(f"@migration depends_on[{name!r}] must be a field name or a "
                             f"function (changed_doc, ctx) -> ids, not {type(how).__name__}")
    return found


def _takes_two(fn: Callable[..., Any]) -> bool:
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (a builtin): trust it
        return True
    return True


@dataclass(frozen=True)
class Migration:
    """One registered migration: a transform over the documents of one collection."""

    name: str
    collection: str
    transform: Transform
    filter: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 500
    expand_schema: str | None = None
    contract_schema: str | None = None
    #: The JSON schema of the old shape (before the migration): the contract of its revert.
    old_schema: str | None = None
    source: str = ""
    depends_on: dict[str, Dependency] = field(default_factory=dict)
    #: The transform that undoes this one (declared with :meth:`down`), or None.
    inverse: Transform | None = None
    #: The name of the migration of the same collection this one follows (``after=``), or None:
    #: then it follows the one before it in file order that declares none either.
    after: str | None = None
    #: The text of the file that defined it, as the loader executed it: what its fingerprint
    #: is computed from (:mod:`cdc_migrator.core.fingerprint`), whatever the file holds since.
    source_text: str = ""

    @property
    def declared_reads(self) -> frozenset[str]:
        """The collections whose changes make documents due again: the migrated one and its
        declared dependencies. A transform reading any other is not covered during the window."""
        return frozenset({self.collection, *self.depends_on})

    def __call__(self, doc: Mapping[str, Any], ctx: Any) -> Any:
        return self.transform(doc, ctx)

    def down(self, fn: Transform) -> Transform:
        """Declare ``fn(doc, ctx)`` as the inverse of this migration::

            @split_full_name.down
            def join_full_name(doc, ctx): ...

        It takes a document in the migrated shape and returns the patch that puts it back in
        the old shape (same return values as a migration). ``verify --reversible`` checks that
        it gives every sampled document back; ``revert`` runs it after cutover. ``fn`` is
        returned as it is, so it stays a plain function a test can call.
        """
        if not callable(fn):
            raise UsageError(f"@{self.name}.down must decorate a function taking (doc, ctx)")
        if self.inverse is not None:
            raise UsageError(f"migration {self.name!r} declares its inverse twice")
        # Frozen so that nothing changes a migration while it runs; the inverse is declared
        # once, right below the migration in its file, before anything reads it.
        object.__setattr__(self, "inverse", fn)
        return fn

    def reversed_as(self, name: str) -> Migration:
        """The migration that runs the inverse under ``name`` (see ``base/naming.revert``):
        over the whole collection, since the forward filter names documents in the old
        shape. Its expand schema is the migration's (both shapes), its contract the old
        shape's schema (``old_schema``, when named): the reverse's cutover checks every
        document against it and installs it as the validator, as the forward cutover does
        with the contract. It declares no inverse itself: going forward again is migrating
        NAME again."""
        if self.inverse is None:
            raise UsageError(f"migration {self.name!r} declares no inverse (@{self.name}.down)")
        return Migration(name=name, collection=self.collection, transform=self.inverse,
                         batch_size=self.batch_size, expand_schema=self.expand_schema,
                         contract_schema=self.old_schema, source=self.source,
                         source_text=self.source_text)


# Migrations defined since the process started, in definition order. The loader reads the ones
# a file added; importing a transforms module directly (e.g. in a user's own test) also works.
_defined: list[Migration] = []


def migration(
    collection: str,
    *,
    name: str | None = None,
    filter: Mapping[str, Any] | None = None,
    batch_size: int = 500,
    expand_schema: str | None = None,
    contract_schema: str | None = None,
    old_schema: str | None = None,
    depends_on: Mapping[str, str | Affected] | None = None,
    after: str | None = None,
) -> Callable[[Transform], Migration]:
    """Register ``fn(doc, ctx)`` as a migration of ``collection``.

    ``name`` defaults to the function's name. ``filter`` limits the migration to the documents
    matching a MongoDB query (documents outside it are never passed to the transform).
    ``expand_schema`` / ``contract_schema`` name JSON-schema files (relative to the ``schemas/``
    directory) describing the collection during and after the migration; cutover applies the
    contract schema. ``old_schema`` describes it before, in the old shape: a ``revert`` (with
    an inverse declared) ends by applying it, so that the server refuses new-shape writes.

    ``depends_on`` names the other collections the transform reads, so that their changes
    during the window make the affected documents due again: ``{"chunks": "embeddingId"}``
    (a change to a chunk makes the document named by its ``embeddingId``, before and after the
    change, due again), or ``{"users": posts_of}`` with ``posts_of(user, ctx)`` returning the
    ``_id`` values of the documents a changed user affects. See docs/writing-migrations.md.

    ``after`` names the migration of the same collection this one follows (``next`` runs them
    in that order); without it, a migration follows the one before it in file order.
    """
    if not isinstance(collection, str) or not collection:
        raise UsageError("@migration needs collection='name'")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"@migration batch_size must be a positive integer, not {batch_size!r}")
    if after is not None and (not isinstance(after, str) or not after):
        raise UsageError(f"@migration after= must name a migration, not {after!r}")
    dependencies = dependencies_of(collection, depends_on)

    def register(fn: Transform) -> Migration:
        if not callable(fn):
            raise UsageError("@migration must decorate a function taking (doc, ctx)")
        code = getattr(fn, "__code__", None)
        own_name = name or fn.__name__
        if after == own_name:
            raise UsageError(f"@migration {own_name}: after= names the migration itself")
        m = Migration(
            name=own_name,
            collection=collection,
            transform=fn,
            filter=dict(filter or {}),
            batch_size=batch_size,
            expand_schema=expand_schema,
            contract_schema=contract_schema,
            old_schema=old_schema,
            source=code.co_filename if code else "",
            depends_on=dependencies,
            after=after,
        )
        _defined.append(m)
        return m

    return register


def load_migrations(directory: str | Path) -> dict[str, Migration]:
    """Import every ``*.py`` file under ``directory`` and return its migrations by name.

    Raises :class:`UsageError` with a one-line message for a missing directory, a file that does
    not import, or two migrations with one name.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"transforms directory {root} does not exist (use --transforms DIR)")
    found: dict[str, Migration] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        # Hidden files and directories are not migrations: a Kubernetes ConfigMap volume links
        # each file to a hidden, timestamped copy (..data/), which would be imported twice.
        if path.name.startswith("_") or any(p.startswith(".") or p == "__pycache__"
                                            for p in parts):
            continue
        for m in _import_file(path, root):
            if m.name in found:
                other = found[m.name].source or "?"
                raise UsageError(
                    f"two migrations are named {m.name!r}: {_short(other)} and {_short(str(path))}"
                )
            found[m.name] = m
    return found


def get_migration(directory: str | Path, name: str) -> Migration:
    """Load ``directory`` and return the migration called ``name``, or raise UsageError."""
    migrations = load_migrations(directory)
    if name not in migrations:
        known = ", ".join(sorted(migrations)) or "none"
        raise UsageError(f"no migration named {name!r} in {directory} (found: {known})")
    return migrations[name]


def _import_file(path: Path, root: Path) -> list[Migration]:
    rel = path.relative_to(root).with_suffix("")
    module_name = "cdc_migrator_transforms." + ".".join(rel.parts)
    before = len(_defined)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{_short(str(path))} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        # The text read is the text run: the fingerprint is computed from it, so an edit of
        # the file after this point cannot make a running process claim code it does not run.
        text = importlib.util.decode_source(path.read_bytes())
        exec(compile(text, str(path), "exec"), module.__dict__)
    except UsageError as exc:
        del sys.modules[module_name]
        raise UsageError(f"{_short(str(path))}: {exc}") from None
    except SyntaxError as exc:
        del sys.modules[module_name]
        raise UsageError(
            f"{_short(str(path))} does not import: SyntaxError: {exc.msg} (line {exc.lineno})"
        ) from None
    except Exception as exc:  # any import failure of user code is the user's to fix
        del sys.modules[module_name]
        raise UsageError(
            f"{_short(str(path))} does not import: {type(exc).__name__}: {exc}"
        ) from None
    added = _defined[before:]
    del _defined[before:]
    for m in added:
        # Frozen as for the inverse: set once, by the loader, before anything reads it.
        object.__setattr__(m, "source_text", text)
    return added


def _short(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def rename_filter_fields(query: Mapping[str, Any],
                         rename: Callable[[str], str]) -> dict[str, Any] | None:
    """``query`` (a migration's filter) with every field path replaced by ``rename(path)``,
    inside ``$and``/``$or``/``$nor`` too; None when the filter also uses an operator that is
    not about named fields (``$expr``, ``$where``, ``$text``, ...)."""
    out: dict[str, Any] = {}
    for key, value in query.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(value, list | tuple) or not value:
                return None
            parts = [rename_filter_fields(v, rename) if isinstance(v, Mapping) else None
                     for v in value]
            if any(p is None for p in parts):
                return None
            out[key] = parts
        elif not isinstance(key, str) or key.startswith("$"):
            return None
        else:
            out[rename(key)] = value
    return out


def filter_fields(query: Mapping[str, Any]) -> set[str] | None:
    """The top-level fields a filter's truth depends on, or None when it depends on more."""
    names: set[str] = set()

    def note(path: str) -> str:
        names.add(path.split(".", 1)[0])
        return path

    return names if rename_filter_fields(query, note) is not None else None
