"""The rooms and what each may import, read from the source (ast), not from a document that can drift.

- The two deployables (edge_container/, cloud_functions/) never import each other, nor model_build/
  (TensorFlow), infra/ (the local stack) or bench/.
- modelpack/ is the contract both deployables import: it imports none of the rooms above.
- No import loop between modules, through any import: top-level, inside a function or under TYPE_CHECKING
  (a loop a function-local import hides is still a loop: the two modules cannot be understood apart).
- model_build/'s own rooms import along the pipeline only (MODEL_BUILD_ORDER).
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
# model_build's rooms (sub-packages, or top-level modules) in pipeline order: a module imports from its own
# room or from rooms before it, never from one after it (model_build/README.md).
MODEL_BUILD_ORDER = (
    "errors", "cache", "progress", "jsonable", "config",  # the ground every room stands on
    "data", "tflite", "artifact",
    "teacher", "student", "calibrate", "evaluate", "report",
    "stages", "pipeline", "publish", "cli", "__main__",
)


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


def import_graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the known modules it imports, by any import. Importing `pkg.mod` runs `pkg/__init__.py`
    first: a package outside the importer's own is an edge too."""
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for target in imports(name, path):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in known and prefix != name and not name.startswith(prefix + "."):
                    targets.add(prefix)
        graph[name] = targets
    return graph


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def test_no_import_loop_through_any_import() -> None:
    known = {name: path for room in ROOMS for name, path in modules(room)}
    found = loops(import_graph(known))
    assert not found, "\n".join(" -> ".join(loop) for loop in found)


def model_build_room(name: str) -> str:
    return name.split(".")[1] if name.count(".") else name


def test_model_build_rooms_import_along_the_pipeline() -> None:
    known = dict(modules("model_build"))
    rank = {room: i for i, room in enumerate(MODEL_BUILD_ORDER)}
    rooms = {model_build_room(name) for name in known} - {"model_build"}
    assert rooms <= set(rank), f"rooms missing from MODEL_BUILD_ORDER: {sorted(rooms - set(rank))}"
    backwards = sorted(
        f"{name} imports {target}" for name, targets in import_graph(known).items() if name != "model_build"
        for target in targets if target != "model_build"
        and rank[model_build_room(target)] > rank[model_build_room(name)])
    assert not backwards, "\n".join(backwards)


def test_the_checker_sees_a_forbidden_import_and_a_loop(tmp_path: Path) -> None:
    """The checks above would pass on an empty tree: they must also fail on a bad one."""
    bad = tmp_path / "edge_container.py"
    bad.write_text("import os\nfrom cloud_functions.handler import handler\n")
    assert "cloud_functions.handler" in imports("edge_container", bad)
    rel = tmp_path / "pkg" / "mod.py"
    rel.parent.mkdir()
    rel.write_text("from . import other\nfrom .sub import thing\ndef f():\n    import json\n")
    assert {"pkg", "pkg.other", "pkg.sub", "pkg.sub.thing", "json"} <= imports("pkg.mod", rel)
    assert "json" not in imports("pkg.mod", rel, top_level_only=True)
    # A loop hidden by a function-local import, and one through TYPE_CHECKING, are loops all the same.
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from d import Y\n")
    (tmp_path / "d.py").write_text("import c\n")
    known = {name: tmp_path / f"{name}.py" for name in "abcd"}
    assert loops(import_graph(known)) == [["a", "b", "a"], ["c", "d", "c"]]
    # Importing a package's module runs its __init__: a loop through it counts.
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "__init__.py").write_text("import e\n")
    (tmp_path / "p" / "m.py").write_text("")
    (tmp_path / "e.py").write_text("from p.m import thing\n")
    known = {"p": tmp_path / "p" / "__init__.py", "p.m": tmp_path / "p" / "m.py", "e": tmp_path / "e.py"}
    assert loops(import_graph(known)) == [["e", "p", "e"]]


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
