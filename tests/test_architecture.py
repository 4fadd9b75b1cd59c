"""Imports run one way: no cycles among the project's modules, and no layer imports one above it (README, "Architecture").

Every import counts, at module top or inside a function: a cycle through a function-level import is still a cycle a
reader has to untangle. A submodule's implicit import of its own package's ``__init__`` is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("algorithms", "benchmarks", "harness", "reports", "sweeps")

#: Leaf modules every layer may use: shared types and errors, file writing, secret masking, the rollout-engine interface.
FOUNDATION = {"harness.schema", "harness.io", "harness.secrets", "harness.rollout"}
#: The command line sits on top of everything.
ENTRY = {"harness.cli"}
#: Layers from the bottom; a module may import its own layer and those below (the library packages only themselves).
LAYERS = ("foundation", "library", "runtime", "reports", "sweeps", "entry")


def layer(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module in ENTRY:
        return "entry"
    top = module.split(".")[0]
    return {
        "algorithms": "library",
        "benchmarks": "library",
        "harness": "runtime",
        "reports": "reports",
        "sweeps": "sweeps",
    }[top]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``module`` imports (``from pkg import sub`` resolves to the submodule when it is one)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            while (
                name and name not in known
            ):  # `import harness.engines.server` -> the module itself; attributes -> their module
                name = name.rpartition(".")[0]
            if name and name != module and name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    for m, deps in graph.items():  # the implicit import of a submodule's own enclosing packages is not an edge
        graph[m] = {d for d in deps if not m.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, deps in sorted(graph.items()):
        lm = layer(m)
        for d in sorted(deps):
            ld = layer(d)
            if lm == "foundation" and ld != "foundation":
                bad.append(f"{m} -> {d}: a foundation module imports only other foundation modules")
            elif lm == "library" and ld == "library" and d.split(".")[0] != m.split(".")[0]:
                bad.append(f"{m} -> {d}: algorithms/ and benchmarks/ do not import each other")
            elif LAYERS.index(ld) > LAYERS.index(lm):
                bad.append(f"{m} ({lm}) -> {d} ({ld}): an upward import")
    return bad


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (counting imports inside functions):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_upward_imports():
    bad = upward_imports(_graph())
    assert not bad, "imports against the layering (README, 'Architecture'):\n" + "\n".join(bad)


def test_library_layers_depend_only_on_the_foundation():
    """algorithms/ and benchmarks/ never import the CLI, config loading, tracking, reports or the trainer."""
    graph = _graph()
    for m, deps in graph.items():
        if layer(m) == "library":
            outside = {d for d in deps if d.split(".")[0] != m.split(".")[0]}
            assert outside <= FOUNDATION, f"{m} imports {sorted(outside - FOUNDATION)}"


@pytest.mark.parametrize(
    "edge, expected",
    [
        (("algorithms.base", "harness.config"), "upward"),
        (("harness.schema", "harness.config"), "foundation"),
        (("benchmarks.scoring", "algorithms.base"), "each other"),
        (("harness.trainer", "sweeps.trial"), "upward"),
        (("reports.builder", "harness.tracking"), None),
    ],
)
def test_the_checker_catches_what_it_should(edge, expected):
    """The rule itself, on made-up edges (so a checker that found nothing because it parsed nothing would fail here)."""
    bad = upward_imports({edge[0]: {edge[1]}, edge[1]: set()})
    assert (expected in bad[0]) if expected else not bad
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert len(_graph()) > 40 and "harness.config" in _graph()["harness.trainer"]
