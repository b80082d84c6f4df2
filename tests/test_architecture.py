"""The rooms and what each may import, read from the source (ast), not from a document that can drift.

- The two deployables (edge_container/, cloud_functions/) never import each other, nor model_build/
  (TensorFlow), infra/ (the local stack) or bench/.
- modelpack/ is the contract both deployables import: it imports none of the rooms above.
- No import loop between modules through their top-level imports.
- No module over 400 lines and no function over 60 outside tests/ and bench/ (issue 23's limits).

Every import counts, top-level or inside a function: a function-local import still needs the package at
run time (and a deployable's package does not carry the others).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOMS = ("edge_container", "cloud_functions", "modelpack", "model_build", "infra", "bench")
FORBIDDEN = {
    "edge_container": {"cloud_functions", "model_build", "infra", "bench"},
    "cloud_functions": {"edge_container", "model_build", "infra", "bench"},
    "modelpack": {"edge_container", "cloud_functions", "model_build", "infra", "bench"},
    "model_build": {"edge_container", "cloud_functions", "infra", "bench"},
}


def modules(room: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((REPO / room).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imports(name: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """The absolute names a module imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_nothing_it_must_not(room: str) -> None:
    broken = sorted(f"{name} imports {target}" for name, path in modules(room) for target in imports(name, path)
                    if target.split(".")[0] in FORBIDDEN[room])
    assert not broken, "\n".join(broken)


def test_no_import_loop_through_top_level_imports() -> None:
    known = {name: path for room in ROOMS for name, path in modules(room)}
    graph = {name: {t for t in imports(name, path, top_level_only=True) if t in known and t != name}
             for name, path in known.items()}
    loops: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loops.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not loops, "\n".join(" -> ".join(loop) for loop in loops)


def test_the_checker_sees_a_forbidden_import_and_a_loop(tmp_path: Path) -> None:
    """The two checks above would pass on an empty tree: they must also fail on a bad one."""
    bad = tmp_path / "edge_container.py"
    bad.write_text("import os\nfrom cloud_functions.handler import handler\n")
    assert "cloud_functions.handler" in imports("edge_container", bad)
    rel = tmp_path / "pkg" / "mod.py"
    rel.parent.mkdir()
    rel.write_text("from . import other\nfrom .sub import thing\ndef f():\n    import json\n")
    assert {"pkg", "pkg.other", "pkg.sub", "pkg.sub.thing", "json"} <= imports("pkg.mod", rel)
    assert "json" not in imports("pkg.mod", rel, top_level_only=True)


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def oversized(name: str, path: Path) -> list[str]:
    """What in one module is over the limits: the module itself, or a function (its decorators aside)."""
    text = path.read_text(encoding="utf-8")
    found = [f"{name}: {n} lines"] if (n := len(text.splitlines())) > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}.{node.name} (line {node.lineno}): {length} lines")
    return found


def test_no_module_or_function_outgrows_its_limit() -> None:
    rooms = [room for room in ROOMS if room != "bench"]
    broken = [line for room in rooms for name, path in modules(room) for line in oversized(name, path)]
    assert not broken, "\n".join(broken)


def test_the_size_check_sees_a_long_function_and_a_long_module(tmp_path: Path) -> None:
    long_function = tmp_path / "long_function.py"
    long_function.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "\n\ndef g():\n    pass\n")
    assert oversized("m", long_function) == [f"m.f (line 1): {MAX_FUNCTION_LINES + 1} lines"]
    long_module = tmp_path / "long_module.py"
    long_module.write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert oversized("m", long_module) == [f"m: {MAX_MODULE_LINES + 1} lines"]
