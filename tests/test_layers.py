"""The package's layers: imports only point down.

apps -> recipes -> fl, report, bundle -> workflows -> components, runtime, data -> config, resources.

Every import counts, including those inside functions (heavy imports are deferred, not exempt).
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clara_fl"
# Users' scripts shipped as data (python job.py), not modules of the package.
DATA_SCRIPTS = PACKAGE / "resources" / "examples"
LAYERS = {
    "config": 0,
    "resources": 0,  # package data: the shipped MMARs, templates and jobs, found through importlib.resources
    "runtime": 1,
    "data": 1,
    "components": 1,
    "workflows": 2,
    "fl": 3,
    "recipes": 4,
    "report": 3,
    "bundle": 3,
    "apps": 5,
    "cli": 6,
    "__main__": 7,
}


def part_of(module: str) -> str | None:
    """``clara_fl.config.resolver`` -> ``config``; None for the package root (``clara_fl``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def parse(path: Path) -> ast.Module:
    """``ast.parse`` with the garbage collector off. On Python 3.11 (up to 3.11.7 at least) a collection during the
    tree's construction that reports an exception raised in a finalizer (an earlier test's unfinished ignite run,
    for one) draws its traceback with ``ast.parse`` inside ours, and ours fails with "SystemError: AST constructor
    recursion depth mismatch" (CPython gh-106905)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        if enabled:
            gc.enable()


def imports_of(path: Path) -> set[str]:
    """Every clara_fl module that ``path`` imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("clara_fl")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("clara_fl"):
                found.add(target)
    return found


def modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if DATA_SCRIPTS not in p.parents]


def edges() -> list[tuple[str, str]]:
    return [(module_name(path), target) for path in modules() for target in sorted(imports_of(path))]


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {part_of(module_name(p)) for p in modules()} - {None}

    assert parts <= set(LAYERS), f"give these a layer in LAYERS: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize(("source", "target"), edges(), ids=lambda v: v)
def test_no_import_points_up(source: str, target: str) -> None:
    from_part, to_part = part_of(source), part_of(target)
    if from_part is None or to_part is None or from_part == to_part:
        return

    assert LAYERS[to_part] < LAYERS[from_part] or LAYERS[to_part] == LAYERS[from_part], (
        f"{source} imports {target}: {from_part} (layer {LAYERS[from_part]}) may not depend on {to_part} "
        f"(layer {LAYERS[to_part]})"
    )


def test_the_parts_of_the_package_form_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for source, target in edges():
        a, b = part_of(source), part_of(target)
        if a and b and a != b:
            graph.setdefault(a, set()).add(b)

    def cycle_from(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return trail[trail.index(node) :] + [node]
        for nxt in sorted(graph.get(node, ())):
            found = cycle_from(nxt, trail + [node])
            if found:
                return found
        return None

    cycles = [c for c in (cycle_from(n, []) for n in sorted(graph)) if c]
    assert not cycles, "import cycle between parts of the package: " + " -> ".join(cycles[0])
