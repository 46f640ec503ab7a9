"""The package's layout keeps its rules (docs/architecture.md), read from the imports.

The layers, lowest first: the contract (``migration``, ``errors``); ``base/``, the floor;
``core/``, the domain; the rooms (``capture/``, ``apply/``, ``operations/``); the shell
(``pipeline``, ``api``, ``cli``). A module imports its own layer and those below, never a room
beside its own, and the floor reaches up only through ``Settings.store``. Every import of every
module is read from its source (module level and inside functions), so a late import cannot
hide a dependency. Every exception class lives in ``errors.py``; docstrings and documents point
only at code that exists.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from ..harness import ROOT

PACKAGE = ROOT / "cdc_migrator"
ROOMS = ("capture", "apply", "operations")
CONTRACT = {"cdc_migrator.migration", "cdc_migrator.errors"}
#: The modules that wire the rooms together and face the user.
SHELL = {"cdc_migrator.pipeline", "cdc_migrator.api", "cdc_migrator.cli"}
#: The one import from the floor upward: ``Settings.store`` hands every actor the state store
#: (imported when first used, so the floor loads without the core).
DOORS = {("cdc_migrator.base.settings", "cdc_migrator.core.state")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    # A compiled module (core/_rawbson, built from C) is known by its stub, and counts as an
    # import of its own room.
    targets = set(modules) | {_module_name(p) for p in PACKAGE.rglob("*.pyi")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in targets else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in targets and m != name}
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "top"


def test_the_contract_imports_nothing_of_the_package_but_itself():
    for module, imported in _imports().items():
        if module in CONTRACT:
            assert imported <= CONTRACT, f"{module} imports {sorted(imported - CONTRACT)}"


def test_the_floor_imports_only_the_floor_and_the_contract():
    for module, imported in _imports().items():
        if _room(module) == "base":
            above = {m for m in imported if _room(m) != "base" and m not in CONTRACT
                     and (module, m) not in DOORS}
            assert not above, f"{module} imports {sorted(above)}"


def test_the_core_imports_only_the_floor_and_the_contract():
    for module, imported in _imports().items():
        if _room(module) == "core":
            above = {m for m in imported if _room(m) not in ("core", "base") and m not in CONTRACT}
            assert not above, f"{module} imports {sorted(above)}"


def test_a_room_imports_the_layers_below_and_the_contract_never_another_room():
    for module, imported in _imports().items():
        room = _room(module)
        if room in ROOMS:
            others = {m for m in imported
                      if _room(m) not in (room, "core", "base") and m not in CONTRACT}
            assert not others, f"{module} imports {sorted(others)}"


def test_only_the_shell_sees_the_rooms_and_only_the_command_line_the_configuration_file():
    for module, imported in _imports().items():
        if _room(module) == "top" and module not in SHELL:
            rooms = {m for m in imported if _room(m) in ROOMS}
            assert not rooms, f"{module} imports {sorted(rooms)}"
        if "cdc_migrator.configfile" in imported:
            assert module == "cdc_migrator.cli", f"{module} reads the configuration file"


def test_every_exception_class_lives_in_errors_py():
    elsewhere = []
    for module in sorted(m for m in _imports() if not m.endswith("__main__")):  # main() runs
        for name, value in vars(importlib.import_module(module)).items():
            if isinstance(value, type) and issubclass(value, BaseException) \
                    and value.__module__ == module and module != "cdc_migrator.errors":
                elsewhere.append(f"{module}.{name}")
    assert not elsewhere, elsewhere


def test_the_package_has_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):  # a compiled module imports nothing
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_layers_and_the_rooms_exist_as_documented():
    documented = (ROOT / "docs" / "architecture.md").read_text()
    for folder in ("base", "core", *ROOMS):
        assert (PACKAGE / folder / "__init__.py").is_file()
        assert f"{folder}/" in documented


_ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|exc):`~?([\w.]+)`")
_PATH = re.compile(r"`((?:cdc_migrator/|base/|core/|capture/|apply/|operations/|tests/)[\w/]+\.py)")
_IN_ROOM = re.compile(r"`((?:base|core|capture|apply|operations)/\w+)\.(?!py\b)([A-Za-z_][\w.]*)`")


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attribute in parts[i:]:
                found = getattr(found, attribute)
        except AttributeError:
            return False
        return True
    return False


def test_every_pointer_in_a_docstring_or_a_document_names_code_that_exists():
    """A module moved or renamed leaves no pointer behind: the Sphinx roles of the docstrings
    (``:mod:`cdc_migrator...```, relative ``:func:`.module.name```) import, and the paths
    (``base/x.py``) and names in a module (``base/x.name``) the documents quote exist."""
    stale = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for target in _ROLE.findall(path.read_text()):
            if target.startswith("."):
                target = package + target
            elif not target.startswith("cdc_migrator."):
                continue  # a name of the module itself (a class, a method)
            if not _resolves(target):
                stale.append(f"{path.relative_to(ROOT)}: {target}")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in _PATH.findall(path.read_text()):
            if not any((where / target).exists() for where in (ROOT, PACKAGE)):
                stale.append(f"{path.relative_to(ROOT)}: {target}")
        for module, name in _IN_ROOM.findall(path.read_text()):
            if not _resolves(f"cdc_migrator.{module.replace('/', '.')}.{name}"):
                stale.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    assert not stale, "\n".join(stale)
