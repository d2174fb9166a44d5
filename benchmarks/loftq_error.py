"""LoftQ (Li et al. 2023, alg. 1) against plain QLoRA quantization on MiniLM: ||W0 - (Q + s·B·A)||_F per layer type.

    python benchmarks/loftq_error.py                          # NF4 + double quant, r 16, T = 1 and 5, all-linear
    python benchmarks/loftq_error.py --kind int8 --iters 1 5  # other kinds and iteration counts

For every linear layer below the head of all-MiniLM-L6-v2 (6 x 6 and the pooler: 37 layers), lorakit.apply_loftq
computes Q_T and (A_T, B_T) with lorakit's own quantizer (no bitsandbytes); "plain" is ||W0 - dq(q(W0))||_F, the
error QLoRA starts from (B = 0). Figures are sqrt(sum of squares) over the layers of each type; "relative" divides
by ||W0||_F.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict

import torch
from transformers import AutoModel

from lorakit import LoraConfig, QuantConfig, add_lora, apply_loftq
from lorakit.models.loading import resolve_model_path

TYPES = (("query", r"\.query$"), ("key", r"\.key$"), ("value", r"\.value$"),
         ("attention.output", r"attention\.output\.dense$"), ("intermediate", r"intermediate\.dense$"),
         ("output (FFN down)", r"\d\.output\.dense$"), ("pooler", r"pooler\.dense$"))


def layer_type(path: str) -> str:
    return next(name for name, pattern in TYPES if re.search(pattern, path))


def errors(model_path: str, kind: str, r: int, iters: int) -> tuple[dict, dict]:
    model = AutoModel.from_pretrained(model_path).eval()
    norms = {p: m.weight.detach().norm().item() for p, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    add_lora(model, LoraConfig(r=r, alpha=r, target_modules="all-linear", init="loftq", loftq_iter=iters))
    return apply_loftq(model, QuantConfig(kind=kind, double_quant=True)), norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--kind", default="nf4", choices=("nf4", "fp4", "int8"))
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--iters", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = resolve_model_path(args.model)
    sums = defaultdict(lambda: defaultdict(float))  # type -> column -> sum of squares
    for t in args.iters:
        errs, norms = errors(path, args.kind, args.r, t)
        for p, e in errs.items():
            for key in (layer_type(p), "total"):
                sums[key][f"T={t}"] += e["loftq"] ** 2
                if t == args.iters[0]:  # the same for every T
                    sums[key]["plain"] += e["plain"] ** 2
                    sums[key]["w"] += norms[p] ** 2
    cols = ["plain"] + [f"T={t}" for t in args.iters]
    print(f"{args.kind} (double quant, block 64), LoftQ r {args.r}: ||W0 - (Q + s·B·A)||_F (relative to ||W0||_F)\n")
    print("| layer type | " + " | ".join(("plain " + args.kind if c == "plain" else f"LoftQ {c}") for c in cols)
          + " | LoftQ / plain |")
    print("|" + " --- |" * (len(cols) + 2))
    for key in [name for name, _ in TYPES] + ["total"]:
        s = sums[key]
        cells = [f"{s[c] ** 0.5:.4f} ({(s[c] / s['w']) ** 0.5:.4f})" for c in cols]
        print(f"| {key} | " + " | ".join(cells) + f" | {(s[cols[-1]] / s['plain']) ** 0.5:.3f} |")


if __name__ == "__main__":
    main()
