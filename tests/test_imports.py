"""The package's imports run one way: no import circle, and the layers of DESIGN.md.

Every module of ``vdb`` is read with ``ast`` (nothing is imported): module-level,
function-level and ``TYPE_CHECKING`` imports all count, relative imports are
resolved. An import of a package submodule counts as an edge to that
submodule only (the parent ``__init__`` Python runs first is not an edge of
its own, or every module would form a circle with ``vdb/__init__``).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "vdb"


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a vdb module, or the top-level name of any other)
    line: int
    top_level: bool  # at module level (also inside if/try there), not in a function


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """The imports in one module's source, each resolved to the module it loads."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.stmt, top_level: bool) -> None:
        if target.split(".")[0] == "vdb":
            while target not in known and "." in target:  # an attribute, not a module
                target = target.rpartition(".")[0]
        else:
            target = target.split(".")[0]
        if target != name:
            found.append(Import(name, target, node.lineno, top_level))

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, top_level)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    origin = ".".join(base + ([child.module] if child.module else []))
                else:
                    origin = child.module or ""
                for alias in child.names:
                    full = f"{origin}.{alias.name}"
                    add(full if full in known else origin, child, top_level)
            else:
                nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(child, top_level and not nested)

    visit(tree, True)
    return found


def all_imports() -> list[Import]:
    mods = modules()
    known = set(mods)
    return [imp for name, path in mods.items() for imp in imports_of(name, path, known)]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
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
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    circles: list[list[str]] = []
    for component in components:  # a shortest circle through each module, each circle once
        seen: set[frozenset[tuple[str, str]]] = set()
        for start in component:
            circle = circle_in(edges, set(component), start)
            key = frozenset(zip(circle, circle[1:], strict=False))
            if key not in seen:
                seen.add(key)
                circles.append(circle)
    return circles


def circle_in(edges: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A shortest path from ``start`` back to itself within its component (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, ()) & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError("a strongly connected component always has a circle")


def test_import_scan_sees_every_kind_of_import(tmp_path):
    """The scanner itself: it must see the imports that make the circles it guards against."""
    pkg = tmp_path / "vdb"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from vdb.core import Thing\n"
        "def f():\n    from . import b\n    import numpy.linalg\n"
    )
    (pkg / "sub" / "b.py").write_text("from ..core import x\nfrom .a import f\n")
    (pkg / "core.py").write_text("from vdb.sub import a\n")
    known = {"vdb", "vdb.sub", "vdb.sub.a", "vdb.sub.b", "vdb.core"}
    got = {
        (i.target, i.top_level)
        for i in imports_of("vdb.sub.a", pkg / "sub" / "a.py", known)
        + imports_of("vdb.sub.b", pkg / "sub" / "b.py", known)
    }
    assert got == {
        ("vdb.core", True),
        ("vdb.sub.b", False),
        ("numpy", False),
        ("typing", True),
        ("vdb.sub.a", True),
    }
    edges = {"vdb.sub.a": {"vdb.core", "vdb.sub.b"}, "vdb.sub.b": {"vdb.core"}}
    edges["vdb.core"] = {"vdb.sub.a"}
    assert find_cycles(edges) == [
        ["vdb.core", "vdb.sub.a", "vdb.core"],
        ["vdb.sub.b", "vdb.core", "vdb.sub.a", "vdb.sub.b"],
    ]


def test_no_import_circle():
    edges: dict[str, set[str]] = {}
    for imp in all_imports():
        if imp.target.startswith("vdb"):
            edges.setdefault(imp.source, set()).add(imp.target)
    assert len(edges) > 20, "the scan found almost no imports: is the package where it was?"
    cycles = find_cycles(edges)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# The layers (DESIGN.md: http and ingest -> core -> index, wal; errors and types are the
# leaves everyone may use). cli, __main__ and admin are the commands on top of everything.
# telemetry (spans, a no-op unless configured) is used by every layer, like the errors.
LEAVES = {"vdb.errors", "vdb.types", "vdb.version", "vdb.telemetry"}
CORE = {
    "vdb",
    "vdb.db",
    "vdb.collection",
    "vdb.filters",
    "vdb.ids",
    "vdb.config",
    "vdb.writer",
    "vdb.progress",
    "vdb.segments",
    "vdb.graphs",
    "vdb.fusion",
    "vdb.vectors",
    "vdb.state",
    "vdb.commit",
    "vdb.recovery",
    "vdb.checkpointer",
}
COMMANDS = {"vdb.cli", "vdb.__main__", "vdb.admin"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# Function-level imports that cross a layer upwards, each with the reason it is allowed.
ALLOWED_UPWARDS = {
    # Database.ingest(source, collection) is the embedded entry to ingest (README): the
    # pipeline is loaded only when it is called, and the pipeline never imports the core.
    ("vdb.db", "vdb.ingest.pipeline"),
    # `serve --cluster` starts the node's heartbeats; loaded only when that flag is given.
    ("vdb.http.server", "vdb.cluster.node"),
}


def layer(module: str) -> str:
    if module in LEAVES:
        return "leaf"
    if module in CORE:
        return "core"
    if module in COMMANDS:
        return "commands"
    for part in ("index", "wal", "embed", "ingest", "http", "cluster"):
        if module == f"vdb.{part}" or module.startswith(f"vdb.{part}."):
            return part
    return "unknown"


def test_every_module_has_a_layer():
    unknown = sorted(m for m in modules() if layer(m) == "unknown")
    assert not unknown, f"modules in no layer of DESIGN.md: {unknown} (add them to a layer here)"


def test_layers_import_one_way():
    may_import = {
        "leaf": {"leaf"},
        "index": {"index"},
        "wal": {"wal", "leaf"},
        # embedders: texts in, vectors out; they know nothing of collections
        "embed": {"embed", "leaf"},
        "core": {"core", "leaf", "index", "wal", "embed"},
        "ingest": {"ingest", "core", "leaf", "wal", "embed"},
        "http": {"http", "ingest", "core", "leaf", "wal", "embed"},
        # scale-out sits on top: nodes and the router use the server, ingest and the core
        "cluster": {"cluster", "http", "ingest", "core", "leaf", "wal", "embed"},
        "commands": {
            "commands",
            "cluster",
            "http",
            "ingest",
            "core",
            "leaf",
            "wal",
            "index",
            "embed",
        },
    }
    wrong = []
    for imp in all_imports():
        src = layer(imp.source)
        if src == "index" and not imp.target.startswith("vdb"):
            # the kernels are numpy + numba (llvmlite is numba's own code generator)
            if imp.target not in STDLIB | {"numpy", "numba", "llvmlite"}:
                wrong.append(imp)
            continue
        if not imp.target.startswith("vdb"):
            continue
        dst = layer(imp.target)
        if dst in may_import[src]:
            continue
        if not imp.top_level and (imp.source, imp.target) in ALLOWED_UPWARDS:
            continue
        wrong.append(imp)
    assert not wrong, "imports against the layers:\n" + "\n".join(
        f"{i.source} ({layer(i.source)}) line {i.line} imports {i.target} ({layer(i.target)})"
        + ("" if i.top_level else " in a function")
        for i in wrong
    )


def test_only_the_progress_module_draws_bars():
    """tqdm stays out of the index and storage: they take a ``progress(done, total)`` callback."""
    users = sorted({i.source for i in all_imports() if i.target == "tqdm"})
    assert users == ["vdb.progress"], users


def test_nothing_in_the_package_imports_bench_or_tests():
    outside = [i for i in all_imports() if i.target in {"bench", "tests"}]
    assert not outside, outside


def test_the_rooms_of_the_database_do_not_import_it():
    """The writer, recovery and the checkpointer get what they need handed in (``State``)."""
    rooms = {"vdb.state", "vdb.commit", "vdb.recovery", "vdb.checkpointer"}
    back = [i for i in all_imports() if i.source in rooms and i.target == "vdb.db"]
    assert not back, back
    used = {i.target for i in all_imports() if i.source == "vdb.db"}
    assert rooms <= used, rooms - used
