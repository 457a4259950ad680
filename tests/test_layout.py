"""The shape of the package, read from the modules' own imports and definitions.

The layers run from the bottom (storage, errors, the cluster seam) to the top (the CLI): a module imports
only from its own layer or lower ones, lazy imports inside functions included, and no two files import each
other, directly or round a loop. Only the glue (``cluster``, ``train``, ``search``, ``segment``) imports Ray.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segray"

LAYERS: list[set[str]] = [
    {
        "version",
        "errors",
        "secrets",
        "structure",
        "storage",
        "cluster",
        "metrics",
        "overlay",
        "timeline",
    },
    {"models"},
    {"config"},
    {"data", "losses", "precision"},
    {"engine", "checkpoint", "tracking", "inference"},
    {"train", "evaluate", "export"},
    {"search", "segment"},
    {"report", "auto", "demo"},
    {"commands", "cli", "__main__"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}
GLUE = {"cluster", "train", "search", "segment"}
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _module(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(PACKAGE.parent).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {m: ast.parse(p.read_text(), filename=str(p)) for m, p in MODULES.items()}


def _imported(tree: ast.Module) -> set[str]:
    """Every module named by an import anywhere in the file (``from a import b`` names a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _room(module: str) -> str | None:
    """The top-level room of a module (``segray.data.io`` -> ``data``); None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


GRAPH = {m: {d for d in _imported(t) if d in MODULES and d != m} for m, t in TREES.items()}


def test_every_room_has_a_layer() -> None:
    rooms = {_room(m) for m in MODULES} - {None}
    assert rooms - LEVEL.keys() == set(), "a new top-level module or package needs a layer here"


def test_no_import_runs_back_up_a_layer() -> None:
    upward = [
        f"{m} (layer {LEVEL[_room(m)]}) imports {d} (layer {LEVEL[_room(d)]})"
        for m, deps in GRAPH.items()
        for d in deps
        if _room(m) and _room(d) and LEVEL[_room(d)] > LEVEL[_room(m)]
    ]
    assert upward == []


def test_only_the_package_root_imports_the_package_root() -> None:
    """``from segray import x`` inside the package is an arrow back up to the top."""
    back = [m for m, t in TREES.items() if m != "segray" and "segray" in _imported(t)]
    assert back == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), a package's ``__init__``
    importing its own children not counted: that is how a package re-exports them."""
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                found.append(sorted([v, *comp]))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.q"}, "p.q": {"p"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_only_the_glue_imports_ray() -> None:
    users = sorted(
        m
        for m, names in ((m, _imported(t)) for m, t in TREES.items())
        if any(n == "ray" or n.startswith("ray.") for n in names)
    )
    assert users, "the glue imports ray: the check reads imports"
    assert [m for m in users if _room(m) not in GLUE] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_stay_short(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{MODULES[module]}: {lines} lines; split it by responsibility"


def test_functions_stay_short() -> None:
    long = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1})"
        for m, t in TREES.items()
        for n in ast.walk(t)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_config_trail_counts_moves_and_returns() -> None:
    """``scripts/config_trail.py``'s arithmetic: a return is a move back to a file already left."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "config_trail", PACKAGE.parent / "scripts" / "config_trail.py"
    )
    trail = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trail)
    assert trail.summary(["a", "b", "a", "c", "b"]) == {
        "stays": 5,
        "files": 3,
        "moves": 4,
        "returns": 2,
    }
    assert trail.summary(["a"]) == {"stays": 1, "files": 1, "moves": 0, "returns": 0}
