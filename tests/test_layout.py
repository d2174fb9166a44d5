"""The package's layers, read from the source: what may import what, no cycles, no private names used across
modules, short functions and modules, a docstring atop each module, and docs/architecture.md's tree equal to src/.

    cli  ->  experiments, export, serve  ->  training  ->  models, core        tasks/: data only, no LoRA
    peft  ->  models, core                                                   (PEFT's names on lorakit)

Inside the core, each subsystem imports only those before it in CORE_ORDER.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "lorakit"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# layer -> the layers it may import (the package's __init__, the public facade, is open to all)
ALLOWED = {
    "core": {"core"},
    "tasks": {"tasks"},
    "models": {"core", "models"},
    "training": {"core", "tasks", "models", "training"},
    "experiments": {"core", "tasks", "models", "training", "experiments"},
    "export": {"core", "tasks", "models", "training", "export"},
    "serve": {"core", "tasks", "models", "training", "serve"},
    "peft": {"core", "models", "peft"},
    "cli": {"core", "tasks", "models", "training", "experiments", "export", "serve", "cli"},
}
# the core's subsystems (a subpackage or a top-level module), lowest first
CORE_ORDER = ["errors", "validation", "config", "state", "extras", "low_rank", "quant", "layers", "init", "inject", "adapters",
              "combine", "io", "params"]
FACADES = {"lorakit", "lorakit.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] not in ALLOWED:
        return "core"
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "core"


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every lorakit import in `module`, at any depth (inside
    functions and under TYPE_CHECKING too)."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "lorakit"]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            if target.split(".")[0] != "lorakit":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, None, node.lineno) if sub in MODULES else (target, alias.name, node.lineno))
    return found


def edges() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}


def test_layers_import_only_downwards():
    wrong = [f"{m}:{line} imports {t} ({layer(m)} -> {layer(t)})"
             for m in MODULES if m not in FACADES for t, _, line in imports(m)
             if t not in FACADES and layer(t) not in ALLOWED[layer(m)]]
    assert not wrong, "\n".join(wrong)


def subsystem(module: str) -> str:
    return module.split(".")[1]


def test_core_subsystems_import_only_those_below():
    assert {subsystem(m) for m in MODULES if m not in FACADES and layer(m) == "core"} == set(CORE_ORDER)
    rank = {name: i for i, name in enumerate(CORE_ORDER)}
    wrong = [f"{m}:{line} imports {t} ({subsystem(m)} -> {subsystem(t)})"
             for m in MODULES if m not in FACADES and layer(m) == "core" for t, _, line in imports(m)
             if t not in FACADES and layer(t) == "core" and rank[subsystem(t)] > rank[subsystem(m)]]
    assert not wrong, "\n".join(wrong)


def test_modules_are_short_and_say_what_they_hold():
    long = [f"{m}: {len(p.read_text().splitlines())} lines" for m, p in MODULES.items()
            if len(p.read_text().splitlines()) > MAX_MODULE_LINES]
    assert not long, "\n".join(long)
    bare = [m for m, p in MODULES.items() if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()]
    assert not bare, f"modules without a docstring: {bare}"


def test_no_import_cycles():
    graph, state, cycles = edges(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)


def test_no_private_names_across_modules():
    wrong = [f"{m}:{line} imports {name} from {t}" for m in MODULES for t, name, line in imports(m)
             if name and name.startswith("_") and not name.startswith("__")]
    assert not wrong, "\n".join(wrong)


def function_lengths():
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                if body:
                    yield module, node.name, node.lineno, node.end_lineno - body[0].lineno + 1


def test_functions_are_short():
    long = [f"{m}.{name} (line {line}): {n} lines" for m, name, line, n in function_lengths()
            if n > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def documented_tree() -> set[str]:
    """The paths docs/architecture.md's "## The tree" names under src/lorakit/: `name.py` and `pkg/` entries,
    nested by indentation."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## The tree", 1)[1].split("```", 2)[1]
    paths, stack = set(), []
    for line in block.splitlines()[1:]:
        m = re.match(r"^( *)(\S+)", line)
        if not m or not re.fullmatch(r"[\w.]+(\.py|/)", m.group(2)):
            continue
        depth = len(m.group(1)) // 2
        stack = stack[:depth - 1] if depth else []
        name = m.group(2)
        if stack or depth == 1:
            path = "/".join([*stack, name.rstrip("/")])
            paths.add(path)
        if name.endswith("/"):
            stack = [*stack, name.rstrip("/")]
    return paths


def test_the_documented_tree_is_src():
    on_disk = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.parent == PACKAGE or p.name != "__init__.py"}
    on_disk |= {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    named = documented_tree()
    assert named == on_disk, (f"in src/ but not in docs/architecture.md: {sorted(on_disk - named)}; "
                              f"in docs/architecture.md but not in src/: {sorted(named - on_disk)}")


def test_the_demo_finds_the_data_beside_the_repository_from_any_directory(monkeypatch, tmp_path):
    """A path built from a module's own file (demo.py: ../shared/data/sst2 beside the repository) moved with it."""
    data = ROOT.parent / "shared" / "data" / "sst2"
    if not data.is_dir():
        pytest.skip("no ../shared/data/sst2 beside this repository")
    monkeypatch.chdir(tmp_path)
    from lorakit.experiments.demo import sst2_dir

    assert Path(sst2_dir()).resolve() == data.resolve()


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py, shared functions in helpers.py; a test module imports neither
    conftest nor another test module."""
    wrong = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            wrong += [f"{path.name}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] == "conftest" or n.split(".")[0].startswith("test_")]
    assert not wrong, "\n".join(wrong)
