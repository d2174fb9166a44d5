"""`lorakit merge`: fold an adapter into its base model, or combine several adapters into one (PEFT's
add_weighted_adapter, lorakit.combine.api) and write the combined adapter, or with --unload the merged plain model.

The combination flags are generated from lorakit.combine.config.CombineConfig's fields (its defaults, its help texts);
--weights, --seed, --modules-from and --unload are this command's own. A --config file may hold the combination settings
(keys: the field names, and weights); flags override it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lorakit.combine.config import CombineConfig
from lorakit.cli.adapters import load_more_adapters
from lorakit.cli.flags import command_parser, config_flag, read_config_file

MERGE_DESCRIPTION = """\
One --adapter: write a plain transformers model directory (weights, config, tokenizer) with the adapter folded in;
quantized (QLoRA) bases are dequantized.
Several --adapter (or --weights / --combination): combine them into one adapter with PEFT's add_weighted_adapter
(same types and maths) and write it as a PEFT adapter directory, or with --unload the merged plain model.
The base model and task are the first adapter's (or --model, --task).

examples:
  lorakit merge --adapter runs/sst2-lora --output runs/sst2-merged
  lorakit merge --adapter runs/sst2-lora --adapter runs/imdb-lora --weights 0.7 0.3 --combination ties \\
      --density 0.5 --output runs/sst2-imdb
  lorakit merge --adapter runs/a --adapter runs/b --combination cat --output runs/ab-merged --unload"""

COMBINED = "combined"  # the name of the new adapter inside the model


def add_merge_parser(sub) -> argparse.ArgumentParser:
    p = command_parser(sub, "merge", "fold an adapter into its base model, or combine several adapters into one",
                       MERGE_DESCRIPTION)
    config_flag(p)
    p.add_argument("--adapter", action="append", metavar="DIR", help="a `lorakit train` output directory or an "
                   "adapter directory (PEFT format); repeat it to combine several")
    p.add_argument("--model", help="the base model for --adapter (default: the one the first adapter was trained on)")
    p.add_argument("--task", help="the task (default: the recorded one)")
    p.add_argument("--output", metavar="DIR", help="directory for the merged model or the combined adapter (required)")
    g = p.add_argument_group("combining several adapters")
    g.add_argument("--weights", nargs="+", type=float, metavar="W",
                   help="one weight per --adapter, in order, negative ones allowed (default: 1 for each)")
    for f in dataclasses.fields(CombineConfig):
        add_combine_flag(g, f)
    g.add_argument("--seed", type=int, help="seed of the dare types' random draws (default: 0)")
    g.add_argument("--modules-from", metavar="N", type=int, help="when several adapters train their own task head "
                   "(or other modules_to_save), take the copies of the N-th --adapter (1 = the first)")
    g.add_argument("--unload", action="store_true", default=None,
                   help="write the merged plain transformers model instead of the combined adapter")
    return p


def add_combine_flag(group, f: dataclasses.Field) -> None:
    """One CombineConfig field as a flag defaulting to None (not given); values are checked by CombineConfig."""
    meta = f.metadata
    name = meta.get("flag", f"--{f.name.replace('_', '-')}")
    default = f" (default: {f.default})" if f.default is not None else ""
    if f.type == "bool":  # a True default: the flag turns it off
        group.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false", default=None,
                           help=meta["help"])
        return
    parse = int if f.type.startswith("int") else float if f.type.startswith("float") else str
    group.add_argument(name, dest=f.name, type=parse, metavar=meta.get("metavar"), help=meta["help"] + default)


COMBINE_KEYS = ("weights", *(f.name for f in dataclasses.fields(CombineConfig)))  # flags' dest names, --config keys


def combine_values(args: argparse.Namespace) -> dict:
    """The combination settings given: the --config file's (keys: combination_type, density, weights, ...), then
    the flags."""
    from_file = {k: v for k, v in read_config_file(args).items() if k in COMBINE_KEYS}
    return {**from_file, **{k: getattr(args, k) for k in COMBINE_KEYS if getattr(args, k) is not None}}


def combining(args: argparse.Namespace) -> bool:
    """Several adapters, weights or a combination setting: combine (else fold the one adapter in, as before)."""
    return len(args.adapter or []) > 1 or bool(combine_values(args))


def combine_settings(args: argparse.Namespace) -> tuple[CombineConfig, list[float]]:
    """The CombineConfig and weights given, checked before any model is loaded."""
    adapters = args.adapter or []
    values = combine_values(args)
    weights = values.pop("weights", None)
    how = CombineConfig(**values)
    weights = [1.0] * len(adapters) if weights is None else weights
    if not isinstance(weights, list) or not all(isinstance(w, (int, float)) for w in weights):
        raise ValueError(f"weights must be a list of numbers, one per --adapter, got {weights!r}")
    if len(weights) != len(adapters):
        raise ValueError(f"--weights gives {len(weights)} weight(s) for {len(adapters)} --adapter(s); give one "
                         "weight per adapter, in the same order")
    if not adapters:
        raise ValueError("give the adapters to combine: --adapter DIR, once for each")
    for path in adapters:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--adapter {path}: no such directory; give a `lorakit train` output directory "
                                    "or an adapter directory")
    if args.modules_from is not None and not 1 <= args.modules_from <= len(adapters):
        raise ValueError(f"--modules-from {args.modules_from}: give a position among the {len(adapters)} "
                         "--adapter(s), 1 for the first")
    return how, [float(w) for w in weights]


def check_merge_output(output: str, adapter: bool) -> None:
    """--output may replace only an empty directory or its own kind: a merged model directory, or (adapter) a
    combined adapter directory."""
    from lorakit.io.atomic import check_replaceable
    from lorakit.training.methods import read_record

    if adapter:
        check_replaceable(output, lambda path: "combined" in read_record(path), "a combined adapter directory",
                          "--output")
    else:
        check_replaceable(output, lambda path: read_record(path).get("method") == "merged",
                          "a merged model directory", "--output")


def write_combination(args: argparse.Namespace, adapters: list[str], how: CombineConfig, weights: list[float],
                      loaded) -> str:
    """Load the other adapters beside the first (in `loaded` = (cfg, spec, model, tokenizer)), combine, write
    the combined adapter (or, --unload, the merged model) to --output. Returns what was written, for the message."""
    import torch

    from lorakit.io.atomic import atomic_dir
    from lorakit.combine.api import combine
    from lorakit.io.peft_format import save_adapter
    from lorakit.adapters.api import delete_adapter, set_adapter
    from lorakit.training.methods import RECORD, find_artifact, merged_model, read_record

    cfg, spec, model, tokenizer = loaded
    load_more_adapters(model, adapters[0], [(path, path) for path in adapters[1:]])  # same base model, checked
    names = ["default", *(f"adapter-{i}" for i in range(1, len(adapters)))]  # the first loaded as "default"
    generator = torch.Generator().manual_seed(args.seed if args.seed is not None else 0)
    modules_from = names[args.modules_from - 1] if args.modules_from is not None else None
    combine(model, names, weights, COMBINED, how, generator, modules_from)
    record = {**read_record(find_artifact(adapters[0])), "base_model": cfg.model, "task": spec.name,
              "combined": {"adapters": [str(Path(a)) for a in adapters], "weights": weights,
                           **dataclasses.asdict(how)}}
    if args.unload:
        set_adapter(model, COMBINED)
        for name in names:
            delete_adapter(model, name)
        with atomic_dir(args.output) as tmp:
            merged_model(model).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / RECORD).write_text(json.dumps({**record, "method": "merged", "quantization": None}, indent=2))
        return "a plain transformers model with the combined adapter folded in"
    with atomic_dir(args.output) as tmp:
        save_adapter(model, tmp, name=COMBINED)
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
    return f"the combined adapter ({how.combination_type} of {len(names)}; PEFT format)"
