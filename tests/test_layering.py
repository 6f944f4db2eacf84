"""The package's import graph: no module imports from a layer above its own, and there are no import circles.

Every ``import``/``from ... import`` in every module counts, function-local ones included (a lazy import still
couples the two modules). Layers, bottom to top::

    errors, files, interrupts, config, parallel → data → nn, analysis → models → training → search, serving → api → bench → cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import rankcraft

ROOT = Path(rankcraft.__file__).parent

LAYERS = {
    "errors": 0, "files": 0, "interrupts": 0, "config": 0, "parallel": 0, "__init__": 0,
    "data": 1,
    "nn": 2, "analysis": 2,
    "models": 3,
    "training": 4,
    "search": 5, "serving": 5,
    "api": 6,
    "bench": 7,
    "cli": 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(mod: str) -> int:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LAYERS, f"{mod}: no layer assigned to '{top}' (add it to LAYERS)"
    return LAYERS[top]


def imports_of(mod: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported rankcraft module, line) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "rankcraft"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                base = base if is_pkg else base[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "rankcraft":
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                out.append((sub if sub in known else target, node.lineno))
    return out


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = modules()
    known = set(mods)
    return {m: [(t, ln) for t, ln in imports_of(m, p, known) if t in known and t != m] for m, p in mods.items()}


def test_every_module_has_a_layer():
    for m in modules():
        layer(m)


def test_no_import_runs_back_up_a_layer():
    up = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)}) at line {ln}"
          for m, edges in graph().items() for t, ln in edges if layer(t) > layer(m)]
    assert not up, "imports that run back up:\n" + "\n".join(up)


def find_cycles(g: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, []):
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    g = {m: sorted({t for t, _ in edges}) for m, edges in graph().items()}
    cycles = find_cycles(g)
    assert not cycles, "import circles:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


def test_the_checker_finds_an_upward_import_and_a_circle():
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert layer("rankcraft.models.dnn") > layer("rankcraft.data.schema")
    known = {"rankcraft.search.context", "rankcraft.search"}
    src = ROOT / "search" / "strategies.py"
    assert ("rankcraft.search.context", ) in [(t,) for t, _ in imports_of("rankcraft.search.strategies", src, known)]
