"""The `lorakit` command line.

    lorakit params --model minilm --lora-query --lora-value --lora-r 8
    lorakit demo

Run `lorakit <command> --help` for every flag.
"""
from __future__ import annotations

import argparse
import sys

from .config import LoraConfig

TOGGLES = ("query", "key", "value", "projection", "mlp", "head")


def add_lora_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=8, help="rank r of the update B·A (default: 8)")
    g.add_argument("--lora-alpha", type=float, default=16.0, help="alpha; the update is scaled by alpha/r (default: 16)")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA branch input (default: 0)")
    for t in TOGGLES:
        g.add_argument(f"--lora-{t}", action="store_true", help=f"adapt the {t} layers (resolved per architecture)")
    g.add_argument("--target-modules", nargs="+", metavar="NAME",
                   help="module names ('.name' suffix match), or 'all-linear'; overrides the toggles")
    g.add_argument("--target-regex", metavar="REGEX", help="one regex that must match the whole module path")
    g.add_argument("--use-rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    g.add_argument("--lora-init", choices=("gaussian", "kaiming"), default="gaussian", help="init of A (B = 0)")


def lora_config_from_args(args: argparse.Namespace) -> LoraConfig:
    if args.target_regex:
        targets = args.target_regex
    elif args.target_modules:
        targets = "all-linear" if args.target_modules == ["all-linear"] else tuple(args.target_modules)
    else:
        targets = tuple(t for t in TOGGLES if getattr(args, f"lora_{t}")) or ("query", "value")
    return LoraConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, target_modules=targets,
                      use_rslora=args.use_rslora, init=args.lora_init)


def cmd_params(args: argparse.Namespace) -> int:
    from .inject import add_lora
    from .models import load_classifier
    from .params import parameter_report

    model, _ = load_classifier(args.model, args.num_labels)
    add_lora(model, lora_config_from_args(args))
    report = parameter_report(model)
    print(report.table(only_trainable=not args.all))
    print(report.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakit", description="LoRA and QLoRA fine-tuning, written from scratch.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="the per-module trainable-parameter table for a model and LoRA settings")
    p.add_argument("--model", default="minilm", help="hub id, local directory, or 'minilm' (default)")
    p.add_argument("--num-labels", type=int, default=2, help="outputs of the classification head (default: 2)")
    p.add_argument("--all", action="store_true", help="list frozen parameters too")
    add_lora_flags(p)
    p.set_defaults(func=cmd_params)
    d = sub.add_parser("demo", help="the main job (see `make demo`)")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"lorakit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
