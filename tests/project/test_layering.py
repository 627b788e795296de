"""The import structure of dtb_ext (docs/design.md §3.1): every import runs from a higher layer to a lower one
(or within a layer), and no modules or layer units import each other in a cycle.

Imports are read from the source with `ast`, not by importing: top-level imports, imports inside functions, and
module names written as strings (the lazy `_EXPORTS` maps of the package `__init__`s, the command list of cli.py),
since each of those loads the named module when it runs.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT

PACKAGE = "dtb_ext"
PACKAGE_DIR = Path(REPO_ROOT).resolve() / PACKAGE

# The layer order, lowest first: the one place it is written. A unit is a top-level module or a subpackage of
# dtb_ext ("" is the package itself, whose __init__ re-exports the public API from every layer). A module may
# import from its own layer or any layer below it, never from one above.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation: ops, reference kernels, configuration objects, small helpers", frozenset({
        "_C", "_lazy", "config", "data_paths", "help_format", "jsonfile", "macs", "onednn_cache", "ops",
        "reference", "timing",
    })),
    ("precision", frozenset({"precision"})),
    ("models", frozenset({"models"})),
    ("qa", frozenset({"qa"})),
    ("search", frozenset({"search"})),
    ("serving facade and export", frozenset({"answering", "graph_export"})),
    ("applications and the public API", frozenset({"", "cli", "demo", "serve", "train"})),
    # Research scripts: they may use anything, and nothing in the library imports them.
    ("experiments", frozenset({"experiments"})),
)
LAYER_OF: dict[str, int] = {unit: index for index, (_, units) in enumerate(LAYERS) for unit in units}
# Extension modules: no Python source to read, but importable by name.
COMPILED_MODULES = frozenset({f"{PACKAGE}._C"})

_MODULE_NAME = re.compile(rf"{PACKAGE}(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class Import:
    """One import of a dtb_ext module: by `source`, of `target`, at `line` of the source's file."""

    source: str
    target: str
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _source_files() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


MODULES = _source_files()
KNOWN = set(MODULES) | COMPILED_MODULES


def _resolve(name: str) -> str:
    """The module `name` loads: itself when it is a module, else (an attribute such as a lazily exported name,
    `from dtb_ext import patch`) the longest module prefix of it."""
    while name not in KNOWN and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports_of(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield Import(module, _resolve(alias.name), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin != PACKAGE and not origin.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                # `from dtb_ext.models import patching` loads the submodule; `from dtb_ext import patch` the package
                yield Import(module, _resolve(f"{origin}.{alias.name}"), node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
            if node.value in KNOWN:
                yield Import(module, node.value, node.lineno)


def all_imports() -> list[Import]:
    """Every import between dtb_ext modules, a module's imports of itself left out."""
    found = []
    for module, path in MODULES.items():
        found += [item for item in _imports_of(module, path) if item.target != module]
    return found


def unit_of(module: str) -> str:
    """The layer unit of a module: "" for the package itself, else the first name below dtb_ext."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


IMPORTS = all_imports()


def test_the_imports_are_found():
    # a reader that silently found nothing would pass every check below
    assert len(MODULES) > 50 and len(IMPORTS) > 150
    sources = {item.source for item in IMPORTS}
    assert {f"{PACKAGE}.cli", f"{PACKAGE}.answering", f"{PACKAGE}.search.qa_search"} <= sources


def test_every_unit_has_a_layer():
    units = {unit_of(module) for module in KNOWN}
    missing = sorted(units - set(LAYER_OF))
    assert not missing, f"no layer for {missing}: add each to LAYERS in {Path(__file__).name} (docs/design.md §3.1)"


def test_imports_run_from_higher_layers_to_lower_ones():
    upward = [
        f"{item.source} (line {item.line}, layer {LAYERS[LAYER_OF[unit_of(item.source)]][0]!r}) imports "
        f"{item.target} (layer {LAYERS[LAYER_OF[unit_of(item.target)]][0]!r})"
        for item in IMPORTS
        if LAYER_OF.get(unit_of(item.target), -1) > LAYER_OF.get(unit_of(item.source), -1)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_module_imports_itself_through_a_cycle():
    edges: dict[str, set[str]] = {}
    for item in IMPORTS:
        edges.setdefault(item.source, set()).add(item.target)
    cycles = _cycles(edges)
    assert not cycles, "modules that import each other in a cycle:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_units_import_each_other_in_a_cycle():
    edges: dict[str, set[str]] = {}
    for item in IMPORTS:
        source, target = unit_of(item.source), unit_of(item.target)
        # the package's __init__ re-exports every layer's public names: it is the top, never a dependency
        if source != target and target != "":
            edges.setdefault(source, set()).add(target)
    cycles = _cycles(edges)
    assert not cycles, "units of dtb_ext in an import cycle:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_nothing_in_the_library_imports_the_experiments():
    into = [f"{item.source} (line {item.line}) imports {item.target}" for item in IMPORTS
            if unit_of(item.target) == "experiments" and unit_of(item.source) != "experiments"]
    assert not into, "\n".join(into)


@pytest.mark.parametrize("source, expected", [
    ("from dtb_ext import ops", "dtb_ext.ops"),
    ("from dtb_ext import patch", "dtb_ext"),
    ("import dtb_ext.models.patching", "dtb_ext.models.patching"),
    ("from dtb_ext.models.patching import patch", "dtb_ext.models.patching"),
    ("from . import budget", "dtb_ext.answering.budget"),
    ("from .budget import Budget", "dtb_ext.answering.budget"),
    ("from .. import config", "dtb_ext.config"),
    ("def f():\n    from dtb_ext.search.pick import pick", "dtb_ext.search.pick"),
    ("EXPORTS = {'pick': 'dtb_ext.search.pick'}", "dtb_ext.search.pick"),
])
def test_the_reader_resolves_each_form_of_import(tmp_path, source, expected):
    path = tmp_path / "answerer.py"
    path.write_text(source + "\n")
    found = {item.target for item in _imports_of("dtb_ext.answering.answerer", path)}
    assert found == {expected}
