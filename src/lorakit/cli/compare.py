"""`lorakit compare`'s command line: its parser (the train flags, then the compare group) and the command, which
trains each method in its own process and writes the comparison (lorakit.experiments.compare)."""
from __future__ import annotations

import argparse
from pathlib import Path

from lorakit.experiments.compare import (BEST, CHOICES, DEFAULT_METHODS, describe, method_configs, run_compare,
                                   write_comparison)
from lorakit.cli.flags import given_train_values, command_parser

COMPARE_DESCRIPTION = """\
Train several methods with the same model, data, epochs and seed, one after the other, and write the comparison
table (comparison.md, comparison.csv) and chart (comparison.png): metrics, trainable parameters (count and % of
total), training time, peak memory, adapter size. The train flags below are shared by every method; each method's
learning rate is its default unless --lr is given.

examples:
  lorakit compare --model minilm --task sst2 --data-dir ../shared/data/sst2 --max-train-samples 2000 \\
      --max-length 64 --epochs 1 --output runs/compare
  lorakit compare --config base.yaml --methods head lora full
  lorakit compare --config base.yaml --search-dir runs/search   # adds lora-best from best.yaml"""


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(subparsers, "compare",
                       "train head / last-layers / lora / qlora / full on the same data and compare them",
                       COMPARE_DESCRIPTION, train_flags=True)
    g = p.add_argument_group("compare")
    g.add_argument("--methods", nargs="+", choices=CHOICES, metavar="METHOD",
                   help=f"methods to run, in order: {', '.join(CHOICES)} (default: {', '.join(DEFAULT_METHODS)}; "
                        f"{BEST} only with --search-dir)")
    g.add_argument("--search-dir", metavar="DIR",
                   help=f"a `lorakit search` output: its best.yaml is the method {BEST} (its LoRA settings and lr; "
                        "data, epochs and seed are the comparison's)")
    g.add_argument("--output", default="runs/compare", metavar="DIR",
                   help="one sub-directory per method, and the comparison files (default: runs/compare)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch threads of each training process (default: every core)")
    p.add_argument("--method", help=argparse.SUPPRESS)  # --methods replaces it
    p.add_argument("--resume", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    base = {k: v for k, v in given_train_values(args).items() if k not in ("method", "output", "resume")}
    methods = args.methods or [m for m in DEFAULT_METHODS if m != BEST or args.search_dir]
    output = Path(args.output)
    configs = method_configs(base, methods, output, args.search_dir)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    rows = run_compare(configs, args.threads)
    paths = write_comparison(rows, output, title=f"lorakit compare: {describe(configs)}")
    print()
    print(paths["table"].read_text())
    for key, path in paths.items():
        print(f"  {key:6s} {path}")
    return 0 if all(r["status"] == "complete" for r in rows) else 1
