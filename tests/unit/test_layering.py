"""The house rules of docs/architecture.md, checked on every import in the source tree.

1. The shared core in `fedtrace/` imports neither `node` nor `coordinator`; only the entry
   points (CLI, Python API, bench, demo, local-federation harness) see both sides.
2. `node` and `coordinator` never import each other.
3. No import cycle among the project's modules, counting imports inside functions (a
   function-level import hides a cycle from the interpreter, not from a reader).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedtrace", "node", "coordinator")
# Modules of `fedtrace/` that are entry points: they may import both sides.
ENTRY_POINTS = (
    "fedtrace",  # the package itself: `fedtrace.connect` imports the Python API lazily
    "fedtrace.api",
    "fedtrace.cli",
    "fedtrace.bench",
    "fedtrace.demo",
    "fedtrace.harness",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = _module_name(path)
            if name.startswith("fedtrace.v1"):
                continue  # generated stubs import only each other
            modules[name] = path
    return modules


def _imports(path: Path, name: str, known: set[str]) -> Iterator[tuple[str, int]]:
    """Every project module `path` imports, anywhere in the file, with its line."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                yield (candidate if candidate in known else source), node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    modules = project_modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(path, name, known):
            if target.split(".")[0] in PACKAGES and not target.startswith("fedtrace.v1"):
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _is_entry_point(module: str) -> bool:
    return any(
        module == e or module.startswith(e + ".") for e in ENTRY_POINTS if e != "fedtrace"
    ) or (module == "fedtrace")


def test_the_shared_core_imports_neither_side() -> None:
    offences = [
        f"{module} imports {target} (line {line})"
        for module, edges in import_graph().items()
        if module.split(".")[0] == "fedtrace" and not _is_entry_point(module)
        for target, line in edges.items()
        if target.split(".")[0] in ("node", "coordinator")
    ]
    assert not offences, "the shared core must not import node or coordinator:\n" + "\n".join(
        offences
    )


def test_node_and_coordinator_never_import_each_other() -> None:
    offences = [
        f"{module} imports {target} (line {line})"
        for module, edges in import_graph().items()
        for target, line in edges.items()
        if {module.split(".")[0], target.split(".")[0]} == {"node", "coordinator"}
    ]
    assert not offences, "\n".join(offences)


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(graph.get(start, {})))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, {}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_even_through_function_level_imports() -> None:
    graph = import_graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_a_function_level_import() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 9}, "d": {"a": 1}}
    assert _cycles(graph) == [["a", "b", "c"]]
    hidden = ast.parse("def f():\n    from coordinator import match\n")
    found = [n for n in ast.walk(hidden) if isinstance(n, ast.ImportFrom)]
    assert found and found[0].module == "coordinator"


def test_no_hand_written_module_over_600_lines() -> None:
    long = {
        name: n
        for name, path in project_modules().items()
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert not long, f"modules over 600 lines: {long}"
