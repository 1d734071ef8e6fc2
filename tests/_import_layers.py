"""A package's import graph checked against declared layers (used by tests/test_layers.py).

Pure Python: the modules are parsed with `ast`, never imported, so the check is fast and sees
what a module *could* import, not only what one code path happened to load. Every import counts:
module level, inside functions (a lazy import is still a dependency) and
``importlib.import_module("<literal>")``; only the body of ``if TYPE_CHECKING:`` is skipped (it
never runs). Importing ``a.b.c`` is an edge to ``a.b.c`` alone: the implicit imports of the
parents ``a`` and ``a.b`` are not edges (every submodule would otherwise depend on its package's
``__init__``).

Layers are an ordered list, bottom first, of *units*: dotted names relative to the package (a
subpackage such as ``"rollout"``, a module such as ``"errors"`` or ``"evaluation.commands"``). A
module belongs to the unit with the longest matching name. The rules:

* an import may only point down: a unit imports units of lower layers (or its own modules);
* units of one layer are independent: they do not import each other;
* no import cycles, neither between units nor between the modules of one unit;
* every module is placed in a unit.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Layer:
    name: str
    units: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


@dataclass(frozen=True)
class Cycle:
    nodes: tuple[str, ...]
    """The units or modules in order; the last imports the first."""
    imports: tuple[Import, ...]
    """One import per step: ``imports[k]`` goes from ``nodes[k]`` to the next node."""
    others: tuple[str, ...] = ()
    """The other nodes of the same strongly connected knot (each on some cycle too)."""


@dataclass
class Report:
    root: Path
    unplaced: list[str] = field(default_factory=list)
    upward: list[tuple[Import, int, int]] = field(default_factory=list)
    sideways: list[tuple[Import, int]] = field(default_factory=list)
    unit_cycles: list[Cycle] = field(default_factory=list)
    module_cycles: list[Cycle] = field(default_factory=list)
    layers: Sequence[Layer] = ()

    def __bool__(self) -> bool:
        return bool(
            self.unplaced or self.upward or self.sideways or self.unit_cycles or self.module_cycles
        )

    def text(self) -> str:
        """The violations, one import per line with file:line and both modules."""
        out: list[str] = []

        def name(i: int) -> str:
            return f"layer {i} '{self.layers[i].name}'"

        if self.unplaced:
            out.append(f"{len(self.unplaced)} module(s) in no declared layer (add them to LAYERS):")
            out += [f"  {m}" for m in self.unplaced]
        if self.upward:
            out.append(f"{len(self.upward)} import(s) point UP the layers:")
            for imp, low, high in self.upward:
                out.append(
                    f"  {imp.where(self.root)}: {imp.importer} ({name(low)}) imports "
                    f"{imp.imported} ({name(high)})"
                )
        if self.sideways:
            out.append(f"{len(self.sideways)} import(s) between independent units of one layer:")
            for imp, layer in self.sideways:
                out.append(
                    f"  {imp.where(self.root)}: {imp.importer} imports {imp.imported} "
                    f"(both in {name(layer)})"
                )
        for title, cycles in (
            ("between units", self.unit_cycles),
            ("between modules", self.module_cycles),
        ):
            if cycles:
                out.append(f"{len(cycles)} import cycle(s) {title}:")
            for cycle in cycles:
                out.append("  " + " -> ".join((*cycle.nodes, cycle.nodes[0])))
                if cycle.others:
                    out.append(f"    (tied into the same knot: {', '.join(cycle.others)})")
                out += [
                    f"    {imp.where(self.root)}: {imp.importer} imports {imp.imported}"
                    for imp in cycle.imports
                ]
        return "\n".join(out)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(package_dir: Path) -> dict[str, Path]:
    """{dotted module name: file} of every ``.py`` file under ``package_dir``."""
    root = package_dir.parent
    return {module_name(root, p): p for p in sorted(package_dir.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a module or a name inside one) lies in."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, path: Path, modules: dict[str, Path], package: str):
        self.module, self.path, self.modules, self.package = module, path, modules, package
        self.is_package = path.name == "__init__.py"
        self.found: list[Import] = []

    def _add(self, name: str, line: int) -> None:
        if name != self.package and not name.startswith(self.package + "."):
            return
        target = _resolve(name, self.modules)
        found = Import(self.module, target or "", self.path, line)
        if target is not None and target != self.module and found not in self.found:
            self.found.append(found)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # only the `if TYPE_CHECKING:` body never runs
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            if not self.is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            # `from pkg import sub` imports the module pkg.sub; `from mod import name`, mod.
            self._add(f"{source}.{alias.name}", node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (
            called == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            self._add(node.args[0].value, node.lineno)
        self.generic_visit(node)


def collect_imports(package_dir: Path) -> tuple[dict[str, Path], list[Import]]:
    """Every module of the package and every import between two of its modules."""
    modules = find_modules(package_dir)
    imports: list[Import] = []
    for module, path in modules.items():
        collector = _Collector(module, path, modules, package_dir.name)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        imports += collector.found
    return modules, imports


def unit_of(module: str, package: str, units: Iterable[str]) -> str | None:
    """The unit (relative dotted name) ``module`` belongs to: the longest matching one."""
    relative = module.removeprefix(package).removeprefix(".")
    best = None
    for unit in units:
        if relative == unit or (unit and relative.startswith(unit + ".")):
            if best is None or len(unit) > len(best):
                best = unit
    return best


def _cycles(edges: dict[str, dict[str, Import]]) -> list[Cycle]:
    """One shortest cycle through the first node of each strongly connected component of more
    than one node (the component's every node lies on some cycle; one is enough to show)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        if len(component) < 2:
            continue
        members = set(component)
        start = min(component)
        # Breadth-first from `start` inside the component, back to `start`.
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            following = []
            for v in frontier:
                for w in sorted(edges.get(v, {})):
                    if w in members and w not in previous:
                        previous[w] = v
                        following.append(w)
            frontier = following
        path = [start]
        while True:
            path.append(previous[path[-1]])
            if path[-1] == start:
                break
        path.reverse()
        steps = tuple(edges[a][b] for a, b in zip(path, path[1:], strict=False))
        others = tuple(sorted(members - set(path)))
        cycles.append(Cycle(tuple(path[:-1]), steps, others))
    return sorted(cycles, key=lambda c: c.nodes)


def check_layers(package_dir: Path, layers: Sequence[Layer]) -> Report:
    """Check the package under ``package_dir`` against ``layers`` (bottom first)."""
    package = package_dir.name
    level = {unit: i for i, layer in enumerate(layers) for unit in layer.units}
    modules, imports = collect_imports(package_dir)
    report = Report(root=package_dir.parent, layers=layers)
    unit: dict[str, str] = {}
    for module in modules:
        found = unit_of(module, package, level)
        if found is None:
            report.unplaced.append(module)
        else:
            unit[module] = found
    unit_edges: dict[str, dict[str, Import]] = defaultdict(dict)
    module_edges: dict[str, dict[str, Import]] = defaultdict(dict)
    for imp in sorted(imports, key=lambda i: (str(i.path), i.line, i.imported)):
        a, b = unit.get(imp.importer), unit.get(imp.imported)
        if a is None or b is None:
            continue
        if a == b:  # cycles across units show as unit cycles
            module_edges[imp.importer].setdefault(imp.imported, imp)
            continue
        unit_edges[a].setdefault(b, imp)
        if level[a] < level[b]:
            report.upward.append((imp, level[a], level[b]))
        elif level[a] == level[b]:
            report.sideways.append((imp, level[a]))
    report.unit_cycles = _cycles(unit_edges)
    report.module_cycles = _cycles(module_edges)
    return report
