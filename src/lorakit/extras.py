"""What each `lorakit` command needs beyond the library core, and the pip extra that installs it.

    pip install lorakit               # the library: torch, transformers, safetensors (layers, injection, adapters,
                                      # quantization; `lorakit params`)
    pip install 'lorakit[train]'      # + train / eval / merge / predict: datasets, scipy, tqdm, pyyaml, numpy
    pip install 'lorakit[plots]'      # + matplotlib (the charts of compare and search)
    pip install 'lorakit[search]'     # train + plots + optuna, sqlalchemy
    pip install 'lorakit[serve]'      # + lorakit serve: fastapi, uvicorn (with train)
    pip install 'lorakit[all]'        # all of the above

    message = missing_extra("search")  # None, or "lorakit search needs optuna: pip install 'lorakit[search]'"

pyproject.toml declares the extras; tests/test_packaging.py checks that it declares every module listed here.
"""
from __future__ import annotations

import importlib.util

TRAIN = ("datasets", "numpy", "scipy", "tqdm", "yaml")
PLOTS = ("matplotlib",)
# extra -> the modules (import names) it brings, as pyproject.toml declares it ("search" includes train and plots)
SERVE = ("fastapi", "uvicorn")
EXTRA_MODULES = {"train": TRAIN, "plots": PLOTS, "search": (*TRAIN, *PLOTS, "optuna", "sqlalchemy"), "serve": SERVE}
# command -> the extras it needs; commands not listed (params, and --help of every command) need only the core
COMMAND_EXTRAS = {
    "train": ("train",),
    "eval": ("train",),
    "merge": ("train",),
    "predict": ("train",),
    "compare": ("train", "plots"),
    "demo": ("train", "plots"),
    "search": ("search",),
    "serve": ("train", "serve"),
}
DISTRIBUTIONS = {"yaml": "pyyaml"}  # import name -> the name pip installs, where they differ


def missing_extra(command: str) -> str | None:
    """One line naming the first module `command` needs that is not installed and the extra(s) to install; None if
    nothing is missing."""
    extras = COMMAND_EXTRAS.get(command, ())
    for module in dict.fromkeys(m for extra in extras for m in EXTRA_MODULES[extra]):
        if importlib.util.find_spec(module) is None:
            wanted = ",".join(extras)
            return f"lorakit {command} needs {DISTRIBUTIONS.get(module, module)}: pip install 'lorakit[{wanted}]'"
    return None
