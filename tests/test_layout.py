"""The package layout stays true: imports point downward only and no module imports itself back.

Imports are read from the source with `ast` (function-level imports included), never executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What each part may import (besides itself). "registry" is methods/__init__.py (name -> class,
# no imports at import time); "methods" is every other module under methods/.
ALLOWED = {
    "core": set(),
    "registry": set(),
    "bench": {"core", "registry"},
    "train": {"core", "bench", "registry"},
    "methods": {"core", "train", "registry"},
    "analysis": {"core", "bench", "train", "methods", "registry"},
    "sweep": {"core", "bench", "registry"},
    "cli": {"core", "bench", "train", "analysis", "sweep", "methods", "registry"},
    "root": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str | None:
    """The layout part a project module belongs to; None for anything outside the project."""
    top, _, rest = module.partition(".")
    if top == "methods":
        return "registry" if not rest else "methods"
    if top == "harness":
        sub = rest.split(".")[0]
        return sub if sub in ALLOWED else "root"
    return None


def imports_of(path: Path) -> set[str]:
    """Project modules imported anywhere in the file (absolute names)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if part_of(m) is not None}


def project_modules() -> dict[str, Path]:
    files = [*ROOT.glob("harness/**/*.py"), *ROOT.glob("methods/**/*.py")]
    return {module_name(p): p for p in files}


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: {i for i in imports_of(p) if i in mods and i != m} for m, p in mods.items()}


def test_every_import_points_down():
    wrong = []
    for mod, deps in graph().items():
        mine = part_of(mod)
        for dep in deps:
            theirs = part_of(dep)
            if theirs != mine and theirs not in ALLOWED[mine] and not (mine == "root" or dep == "harness"):
                wrong.append(f"{mod} ({mine}) imports {dep} ({theirs})")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ that assembles its submodules (cli) is not a cycle with them
    for mod in list(edges):
        edges[mod] = {d for d in edges[mod] if not mod.startswith(d + ".")}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_violations():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert part_of("harness.core.engine") == "core" and part_of("methods") == "registry"
    assert part_of("methods.firp") == "methods" and part_of("torch") is None
    assert "core" not in ALLOWED["core"] and "bench" not in ALLOWED["core"]


def test_no_datasets_package_shadows_the_library():
    assert not (ROOT / "datasets" / "__init__.py").exists()
