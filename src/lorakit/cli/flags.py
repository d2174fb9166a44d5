"""The flags of the `lorakit` commands, generated from TrainConfig's fields, and how given flags become settings.

    parser = train_flags_parser()          # `lorakit train`'s flags, which search and compare take over
    cfg = train_config_from_args(args)     # the --config file, then the flags given, as a TrainConfig

Each TrainConfig field is one flag (`max_length` -> --max-length): its --help section, help text and metavar are
in the field's metadata (training/config.py `setting`), its default is the field's and is quoted in --help, never
repeated here. Every generated flag defaults to None, so the flags given on the command line are told apart from
the defaults and override the --config file. A bool field is `--name` when its default is False and `--no-name`
when it is True. Not fields: the LoRA toggles and --target-regex (folded into target_modules), --config,
--threads and the adapter / model to load. LORA_ONLY_FLAGS, TrainConfig's LoRA-only settings (LORA_SETTINGS, from the
fields' metadata) with the toggles and --target-regex, are refused with a method that trains no LoRA.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lorakit.config import FAMILY_INITS, INITS, TOGGLE_NAMES, is_family_init
from lorakit.errors import UserError
from lorakit.io.atomic import read_user_text
from lorakit.training.config import LORA_SETTINGS, TrainConfig

RAW = argparse.RawDescriptionHelpFormatter
FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TRAIN_FIELDS = tuple(FIELDS)
TARGET_KEYS = ("target_modules", "target_regex", *(f"lora_{t}" for t in TOGGLE_NAMES))
# the flags only a LoRA method uses: TrainConfig's LoRA-only settings and the other ways to say target_modules
LORA_ONLY_FLAGS = tuple(dict.fromkeys((*LORA_SETTINGS, *TARGET_KEYS)))
# `lorakit train --help`'s sections, in order ("model" is the top level)
TRAIN_GROUPS = ("model", "data", "method", "LoRA", "QLoRA (--method qlora)", "optimisation",
                "evaluation, checkpoints, output", "runtime")

TRAIN_DESCRIPTION = """\
Fine-tune a model on a task and write an output directory with the trained adapter (or weights), metrics.json,
config.yaml, log.jsonl (one JSON line per step) and versions.json.

examples:
  lorakit train --model minilm --task sst2 --data-dir ../shared/data/sst2 --epochs 1
  lorakit train --task csv --train-file train.csv --text-column review --label-column stars
  lorakit train --config run.yaml --lr 5e-4          # flags override the file
  lorakit train --output runs/x --resume auto         # continue an interrupted run"""



def lora_init_choice(text: str) -> str:
    if text in INITS or is_family_init(text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}; accepted: {', '.join(INITS + FAMILY_INITS)}, pissa_niter_<N>")


def count_or_all(text) -> int:
    """--max-eval-samples: a count, or 'all' (0: every example)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    if str(text).strip().lower() == "all":
        return 0
    try:
        value = int(str(text))
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of examples or 'all', got {text!r}")
    return value


PARSERS = {"max_eval_samples": count_or_all, "lora_init": lora_init_choice}  # fields whose values need more than int()


# --- the flags, from the fields ---------------------------------------------------------------------------------

def help_text(f: dataclasses.Field, recorded: bool = False) -> str:
    """The field's help, with its default (or the recorded run's, for eval) in parentheses."""
    meta = f.metadata
    if recorded and meta.get("recorded"):
        default = "the recorded run's"
    elif "default_text" in meta:
        default = meta["default_text"]
    elif f.default is None or isinstance(f.default, bool) or f.default == ():
        default = None
    else:
        default = f"{f.default:g}" if isinstance(f.default, float) else f.default
    text = meta["help"]
    if default is not None:
        text = f"{text} (default: {default})" if text else f"(default: {default})"
    return f"{text}. {meta['after']}" if "after" in meta else text


def add_field_flag(group, f: dataclasses.Field, recorded: bool = False) -> None:
    """One TrainConfig field as a flag whose default is None (not given)."""
    meta, kind = f.metadata, str(f.type)
    if kind == "bool":
        on = f.default is False  # --name switches a False default on; --no-name a True one off
        group.add_argument(f"--{'' if on else 'no-'}{f.name.replace('_', '-')}", dest=f.name, default=None,
                           action="store_true" if on else "store_false", help=help_text(f, recorded))
        return
    extra = {"metavar": meta["metavar"]} if "metavar" in meta else {}
    if "choices" in meta:
        extra["choices"] = meta["choices"]
    if "tuple" in kind:
        extra.update(action="append") if "flags" in meta else extra.update(nargs="+")
    parse = PARSERS.get(f.name) or (int if kind.startswith("int") else float if kind.startswith("float") else None)
    if parse is not None:
        extra["type"] = parse
    flags = meta.get("flags", (f"--{f.name.replace('_', '-')}",))
    group.add_argument(*flags, dest=f.name, help=help_text(f, recorded), **extra)


def add_setting_flags(parser: argparse.ArgumentParser, groups: tuple[str, ...], recorded: bool = False) -> None:
    """The flags of the TrainConfig fields in `groups` (sections of --help, in this order)."""
    for name in groups:
        group = parser if name == "model" else parser.add_argument_group(name)
        for f in FIELDS.values():
            if f.metadata["group"] == name:
                add_field_flag(group, f, recorded)
        if name == "LoRA":
            add_target_flags(group)
        if name == "runtime":
            group.add_argument("--threads", type=int, metavar="N", help="CPU threads of torch's intra-op pool "
                               "(default: torch's choice, usually the number of physical cores); not part of the "
                               "run's recorded settings")


def add_target_flags(group) -> None:
    """The LoRA toggles and --target-regex: other ways to say target_modules (lora_targets folds them in)."""
    for t in TOGGLE_NAMES:
        group.add_argument(f"--lora-{t}", action="store_true", default=None,
                           help=f"adapt the {t} layers (resolved per architecture)")
    group.add_argument("--target-regex", metavar="REGEX", help="one regex that must match the whole module path")


def add_lora_flags(parser: argparse.ArgumentParser) -> None:
    """The LoRA flags of train / search / compare / params (TrainConfig's defaults: one set for every command)."""
    add_setting_flags(parser, ("LoRA",))


def config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML of settings (long flag names as keys); flags override it")


def trained_model_flags(p: argparse.ArgumentParser, several: bool = False) -> None:
    """--config, and the adapter or model that eval / merge / predict load; several: --adapter repeats."""
    config_flag(p)
    if several:
        p.add_argument("--adapter", action="append", metavar="[NAME=]DIR",
                       help="a `lorakit train` output directory, or its adapter/ directory; repeat it for one result "
                            "per adapter from one model load (same base model), labelled NAME or by the directory")
    else:
        p.add_argument("--adapter", metavar="DIR", help="a `lorakit train` output directory, or its adapter/ (or "
                                                        "weights/, model/) directory")
    p.add_argument("--model", help="the base model for --adapter (default: the one it was trained on), or, "
                                   "without --adapter, a merged model directory / hub id")


def command_parser(sub, name: str, help: str, description: str = "",
                   train_flags: bool = False) -> argparse.ArgumentParser:
    """A subcommand's parser, its description printed as written; train_flags: it takes every `lorakit train` flag
    first (search, compare), its own flags may then replace some."""
    return sub.add_parser(name, help=help, description=description or None, formatter_class=RAW,
                          parents=[train_flags_parser()] if train_flags else [],
                          conflict_handler="resolve" if train_flags else "error")


def add_train_parser(sub) -> argparse.ArgumentParser:
    """Add `lorakit train`'s parser to the subparsers `sub` and return it (cli.main sets the command it runs)."""
    p = command_parser(sub, "train", "fine-tune a model on a task", TRAIN_DESCRIPTION)
    config_flag(p)
    add_setting_flags(p, TRAIN_GROUPS)
    return p


def train_flags_parser() -> argparse.ArgumentParser:
    """`lorakit train`'s parser, whose flags search and compare take over."""
    holder = argparse.ArgumentParser(add_help=False).add_subparsers()
    add_train_parser(holder)
    return holder.choices["train"]


# --- settings: recorded config < --config file < flags -------------------------------------------------------

def given_flags(args: argparse.Namespace) -> dict:
    """The flags given on the command line (every option of train/eval/merge/predict defaults to None)."""
    return {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "func", "config")}


def read_config_file(args: argparse.Namespace) -> dict:
    """--config YAML as {setting: value}; keys are long flag names ('-' or '_'), checked against known ones."""
    if args.config is None:
        return {}
    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    import yaml

    try:
        data = yaml.safe_load(read_user_text(path, "--config")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must be a mapping of settings (lr: 1.0e-3, ...), got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = set(TRAIN_FIELDS) | set(TARGET_KEYS) | set(vars(args))
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown setting(s) {unknown}; settings are the long flag names of "
                         f"`lorakit {args.command} --help` (e.g. lr, batch_size, lora_r)")
    return data


def lora_targets(values: dict) -> tuple[str, ...] | str | None:
    """target_modules from --target-regex, --target-modules or the toggles, in that order; None if none given."""
    if values.get("target_regex"):
        return values["target_regex"]
    modules = values.get("target_modules")
    if modules:
        if not isinstance(modules, (list, tuple)):
            return modules  # "all-linear" or a regex (a run's config.yaml); another type: TrainConfig says so
        return "all-linear" if list(modules) == ["all-linear"] else tuple(modules)
    return tuple(t for t in TOGGLE_NAMES if values.get(f"lora_{t}")) or None


def train_values(values: dict) -> dict:
    """The TrainConfig fields among `values`, with the LoRA target flags folded into target_modules."""
    out = {k: v for k, v in values.items() if k in TRAIN_FIELDS and k != "target_modules"}
    if out.get("max_eval_samples") is not None:  # a --config file's "all"
        try:
            out["max_eval_samples"] = count_or_all(out["max_eval_samples"])
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"max_eval_samples: {err}") from None
    targets = lora_targets(values)
    if targets is not None:
        out["target_modules"] = targets
    return out


def given_train_values(args: argparse.Namespace) -> dict:
    """The TrainConfig values the user gave: the --config file, then the train flags (flags win)."""
    return {**train_values(read_config_file(args)), **train_values(given_flags(args))}


def recorded_run_values(given: dict) -> dict:
    """Resuming (--resume auto or a checkpoint): the settings of the run it continues, from the run's config.yaml
    (else the checkpoint's state.json); {} when not resuming or nothing is recorded. `resume` itself is left out."""
    resume = given.get("resume")
    if resume is None:
        return {}
    if resume == "auto":
        run, checkpoint = Path(given.get("output") or TrainConfig.from_dict(given).output), None
    else:
        checkpoint = Path(resume)
        run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if run is not None and (run / "config.yaml").is_file():
        import yaml

        recorded = yaml.safe_load((run / "config.yaml").read_text()) or {}
    elif checkpoint is not None and (checkpoint / "state.json").is_file():
        recorded = json.loads((checkpoint / "state.json").read_text()).get("config", {})
    else:
        return {}
    return {k: v for k, v in recorded.items() if k in TRAIN_FIELDS and k != "resume"}


def check_flag_contradictions(flags: dict, cfg: TrainConfig) -> None:
    """Flags given together on one command line that cannot both apply (each would silently lose)."""
    if flags.get("target_modules") and flags.get("target_regex"):
        raise UserError(f"--target-modules {' '.join(flags['target_modules'])} and --target-regex "
                        f"{flags['target_regex']} both choose the adapted modules; give one of them")
    if not cfg.uses_lora and not flags.get("init_adapter"):
        given = [f"--{k.replace('_', '-')}" + ("" if isinstance(flags[k], bool) else f" {flags[k]}")
                 for k in LORA_ONLY_FLAGS if flags.get(k) is not None]
        if given:
            raise UserError(f"--method {cfg.method} trains no LoRA, so {' '.join(given)} would be ignored; drop "
                            f"{'it' if len(given) == 1 else 'them'}, or use --method lora")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The --config file, then the flags given; resuming starts from the resumed run's recorded settings."""
    given = given_train_values(args)
    cfg = TrainConfig.from_dict({**recorded_run_values(given), **given})
    check_flag_contradictions(given_flags(args), cfg)
    return cfg
