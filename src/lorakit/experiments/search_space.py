"""The space of `lorakit search`: the searched options and their values, grid points, and each trial's TrainConfig.

    space = parse_space(["lora_r=1,2,4,8", "lora_key=on,off"], "space.yaml")  # {name: values, or Range}
    for params in grid_points(space):                                          # every combination
        cfg = trial_config(base, params, "runs/search/trials/0")               # base values, then the params

The space: `--space NAME=V1,V2,...` (repeatable) or `--space-file FILE` with a `space:` mapping (NAME: [values], or
NAME: {low: ..., high: ..., log: true}). NAME is any TrainConfig field (the long train flags with "_": lora_r,
lora_alpha, lr, lora_dropout, method, batch_size, ...) or a target toggle lora_query / lora_key / lora_value /
lora_projection / lora_mlp / lora_head (on / off: adds or removes that toggle from the base targets, which are the
base --lora-* toggles, or all-linear's query+key+value+projection+mlp). target_modules values join names with "+"
(target_modules=all-linear,query+value). LOW..HIGH and LOW..HIGH:log are ranges, for random and tpe only.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from lorakit.config import TOGGLE_NAMES
from lorakit.io.atomic import read_user_text
from lorakit.training.config import TrainConfig

if TYPE_CHECKING:
    import optuna

TOGGLE_PARAMS = tuple(f"lora_{t}" for t in TOGGLE_NAMES)
ALL_LINEAR_TOGGLES = tuple(t for t in TOGGLE_NAMES if t != "head")  # what "all-linear" adapts, as toggles
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))
NOT_SEARCHABLE = ("output", "resume")  # set by the search for every trial
SAMPLERS = ("grid", "random", "tpe")
DEFAULT_STUDY = "lorakit-search"  # here, not in search.py, so `lorakit search --help` needs no optuna


@dataclass(frozen=True)
class Range:
    """An interval for the random and tpe samplers: integers when both bounds are integers, else floats."""

    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str):
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(name, self.low, self.high, log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)


def parse_value(text: str):
    """A command-line value: 8 -> int, 1e-3 -> float, on/off/true/false -> bool, none -> None, else the text."""
    lowered = text.strip().lower()
    words = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False,
             "none": None, "null": None}
    if lowered in words:
        return words[lowered]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _range(text: str) -> Range | None:
    """'1e-4..1e-2:log' -> Range(0.0001, 0.01, log=True); None if the text is no numeric range."""
    body, _, suffix = text.partition(":")
    low, sep, high = body.partition("..")
    low, high = parse_value(low), parse_value(high)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not (sep and numeric) or suffix not in ("", "log"):
        return None
    if not low < high:
        raise ValueError(f"--space range {text!r}: LOW must be below HIGH")
    return Range(low, high, suffix == "log")


def _entry(name: str, spec) -> tuple | Range:
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(spec):
            raise ValueError(f"space {name}: a range is {{low: ..., high: ..., log: true|false}}, got {spec}")
        low, high = (parse_value(v) if isinstance(v, str) else v for v in (spec["low"], spec["high"]))
        return Range(low, high, bool(spec.get("log", False)))
    if isinstance(spec, str):
        as_range = _range(spec)
        return as_range if as_range is not None else tuple(parse_value(v) for v in spec.split(","))
    values = spec if isinstance(spec, list) else [spec]
    return tuple(parse_value(v) if isinstance(v, str) else v for v in values)


def parse_space(flags: list[str] | None = None, file: str | Path | None = None) -> dict[str, tuple | Range]:
    """{name: values or Range} from a YAML file's `space:` mapping, then --space NAME=VALUES flags (they win)."""
    space: dict[str, tuple | Range] = {}
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"--space-file {path}: no such file")
        data = yaml.safe_load(read_user_text(path, "--space-file")) or {}
        if not isinstance(data, dict) or not isinstance(data.get("space"), dict):
            raise ValueError(f"--space-file {path} must hold a mapping `space:` of NAME: [values]")
        for name, spec in data["space"].items():
            space[str(name).replace("-", "_")] = _entry(name, spec)
    for flag in flags or []:
        name, sep, text = flag.partition("=")
        if not (sep and name.strip() and text.strip()):
            raise ValueError(f"--space {flag!r}: expected NAME=V1,V2,... or NAME=LOW..HIGH[:log] (e.g. lora_r=4,8)")
        space[name.strip().replace("-", "_")] = _entry(name, text)
    if not space:
        raise ValueError("the search space is empty: give --space NAME=V1,V2,... or --space-file FILE")
    for name, values in space.items():
        if name not in TRAIN_FIELDS + TOGGLE_PARAMS or name in NOT_SEARCHABLE:
            raise ValueError(f"--space {name}: not a training option; use the long train flag names with '_' "
                             f"(lora_r, lora_alpha, lr, lora_dropout, method, ...) or {', '.join(TOGGLE_PARAMS)}")
        if isinstance(values, tuple) and not values:
            raise ValueError(f"--space {name}: no values")
    return space


def grid_points(space: dict[str, tuple | Range]) -> list[dict]:
    """Every combination, the first name varying slowest."""
    ranges = [name for name, values in space.items() if isinstance(values, Range)]
    if ranges:
        raise ValueError(f"the grid sampler needs lists of values, not ranges ({', '.join(ranges)}); "
                         "use --sampler random or tpe for ranges")
    return [dict(zip(space, combo)) for combo in itertools.product(*space.values())]


def toggled_targets(targets, toggles: dict[str, bool]) -> tuple[str, ...]:
    """The base targets (toggle names, or all-linear / None = all-linear's toggles) with toggles turned on / off."""
    if targets in (None, "all-linear", ["all-linear"], ("all-linear",)):
        start = ALL_LINEAR_TOGGLES
    elif isinstance(targets, (list, tuple)) and set(targets) <= set(TOGGLE_NAMES):
        start = tuple(targets)
    else:
        raise ValueError(f"space toggles {sorted(toggles)} need base targets given as toggles (--lora-query ...) "
                         f"or all-linear, not {targets!r}")
    chosen = tuple(t for t in TOGGLE_NAMES if toggles.get(t, t in start))
    if not chosen:
        raise ValueError("these toggles turn every target module off")
    return chosen


def trial_config(base: dict, params: dict, output: str | Path) -> TrainConfig:
    """One trial's TrainConfig: the base values as the user gave them (so lr still defaults per method), then the
    trial's params, run in `output`. ValueError for an invalid combination."""
    values = {**base, **{k: v for k, v in params.items() if k not in TOGGLE_PARAMS}}
    if isinstance(params.get("target_modules"), str) and "+" in params["target_modules"]:
        values["target_modules"] = tuple(params["target_modules"].split("+"))
    toggles = {k.removeprefix("lora_"): bool(v) for k, v in params.items() if k in TOGGLE_PARAMS}
    if toggles:
        values["target_modules"] = toggled_targets(values.get("target_modules"), toggles)
    values.update(output=str(output), resume=None)
    return TrainConfig.from_dict(values)


def check_space(base: dict, space: dict[str, tuple | Range], sampler: str) -> None:
    """Every value of the space makes a valid trial config with the base (for a grid, every combination too), or
    a ValueError naming the value: checked before the study is written, not found in the trials."""
    for name, values in space.items():
        for value in (values.low, values.high) if isinstance(values, Range) else values:
            try:
                trial_config(base, {name: value}, "check")
            except ValueError as err:
                raise ValueError(f"--space {name}={value}: {err}") from None
    if sampler != "grid":
        return
    for point in grid_points(space):
        try:
            trial_config(base, point, "check")
        except ValueError as err:
            raise ValueError(f"--space: the combination {point} is invalid: {err}") from None
