"""The package's shape: one place decides a host's backend, no import cycles, small modules,
and library modules that never import click."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "worktree_runner"
MODULES = sorted(p for p in PKG.rglob("*.py"))


def _name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Package modules this module imports (anywhere in it, lazily or not)."""
    names = {_name(p) for p in MODULES}
    here = _name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{target}.{alias.name}" in names:
                    found.add(f"{target}.{alias.name}")
                elif target in names:
                    found.add(target)
    return found


def test_no_import_cycles() -> None:
    graph = {_name(p): _imports(p) for p in MODULES}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_only_the_factory_and_config_look_at_a_host_type() -> None:
    pattern = re.compile(r"""\.type\s*(==|!=|in)\s|type\s*==\s*["'](local|ssh|slurm)""")
    offenders = [f"{p.name}:{i}" for p in MODULES if p.name not in ("config.py", "backends.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, offenders


def test_library_modules_never_import_click() -> None:
    for p in MODULES:
        if p.name == "cli.py":
            continue
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name != "click" for a in node.names), p.name
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "click", p.name


def test_modules_stay_small() -> None:
    big = {p.name: n for p in MODULES if (n := len(p.read_text().splitlines())) > 460}
    assert not big, big
