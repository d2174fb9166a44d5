"""Training-step time and peak memory on MiniLM: full fine-tuning, head only, PEFT LoRA and lorakit LoRA.

    .venv/bin/python benchmarks/step_time.py                # 4 rounds, train mode (model dropout on), lora_dropout 0
    .venv/bin/python benchmarks/step_time.py --lora-dropout 0.1
    .venv/bin/python benchmarks/step_time.py --eval-mode    # dropout off everywhere
    .venv/bin/python benchmarks/step_time.py --rounds 6 --steps 6 --configs full lorakit-qv peft-qv
    .venv/bin/python benchmarks/step_time.py --torch-dropout  # lorakit's configs with torch's dropout layers

One step = forward + backward + AdamW on a batch of 32 x 128 tokens. "backprop-floor" is a control, not a method:
the frozen model with the gradient carried down to the embeddings' output and only the head trained, i.e. the
forward and input-gradient work that every LoRA step does whatever its low-rank layers cost (slightly more: it
also computes the input gradient of layer 0's query/key/value, which a LoRA step skips). The lorakit-* configurations
run the model as `lorakit train` does: with lorakit's cheap CPU dropout (fast_dropout.py) in place of torch's
dropout layers unless --torch-dropout. "lorakit-full" is full fine-tuning so, the control that shows how much of
lorakit's gain is that dropout rather than LoRA. Every configuration runs
in its own process (several models in one process distort each other's timings), the configurations alternate
round by round (the order rotates each round), and the medians over rounds are compared, both as a ratio of
medians and as the median of the ratios within each round: single runs on this machine vary by +-30%. Peak memory
is the process's maximum resident set size (model, optimizer state and activations).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = ["full", "head", "backprop-floor", "lorakit-full", "peft-qv", "peft-all", "lorakit-qv", "lorakit-all",
           "peft-dora-all", "lorakit-dora-all"]  # DoRA rows: all-linear, r 8, PEFT's use_dora / lorakit's dora.py


def build(config: str, lora_dropout: float, torch_dropout: bool = False):
    import torch
    import transformers as tf

    from lorakit.models.loading import resolve_model_path

    model = tf.AutoModelForSequenceClassification.from_pretrained(resolve_model_path("minilm"), num_labels=2)
    targets = ["query", "value"] if config.endswith("-qv") else "all-linear"
    if config in ("head", "backprop-floor"):
        model.requires_grad_(False)
        model.classifier.requires_grad_(True)
    if config == "backprop-floor":
        # the frozen model's input gradients all the way down, and no weight gradient but the head's: the work
        # any LoRA step must do besides its own low-rank products (forward, dropout, attention, grad_x of every
        # frozen linear layer)
        model.bert.embeddings.register_forward_hook(lambda module, args, out: out.requires_grad_())
    elif config.startswith("peft"):
        import peft

        cfg = peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=lora_dropout, target_modules=targets,
                              use_dora="-dora" in config)
        model = peft.get_peft_model(model, cfg)
    elif config.startswith("lorakit"):
        from lorakit import LoraConfig, add_lora
        from lorakit.layers.dropout import fast_dropout

        if config != "lorakit-full":
            add_lora(model, LoraConfig(r=8, alpha=16, dropout=lora_dropout, target_modules=targets,
                                       use_dora="-dora" in config))
        if not torch_dropout:
            fast_dropout(model)
    torch.manual_seed(0)
    return model


def worker(config: str, steps: int, eval_mode: bool, lora_dropout: float, threads: int, torch_dropout: bool,
           forward_only: bool = False) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(config, lora_dropout, torch_dropout)
    model.eval() if eval_mode else model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (32, 128), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (32,), generator=g)}
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        if forward_only:  # inference: model.eval() and no autograd (DoRA's norm is cached here)
            with torch.no_grad():
                model(**batch)
        else:
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": config, "median_s": statistics.median(times), "peak_mb": peak_mb, "trainable": sum(p.numel() for p in params)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--eval-mode", action="store_true", help="dropout off (model.eval()) instead of train mode")
    ap.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout for PEFT and lorakit (default 0: both libraries' default)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = torch's default)")
    ap.add_argument("--torch-dropout", action="store_true", help="lorakit-* with torch's dropout layers (as --torch-dropout)")
    ap.add_argument("--forward-only", action="store_true", help="time eval-mode forward passes without grad")
    ap.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.eval_mode or args.forward_only, args.lora_dropout,
                                args.threads, args.torch_dropout, args.forward_only)))
        return
    results: dict[str, list[dict]] = {c: [] for c in args.configs}
    for r in range(args.rounds):
        # rotate the order each round so that no configuration always runs first or right after the same one
        for config in args.configs[r % len(args.configs):] + args.configs[: r % len(args.configs)]:
            cmd = [sys.executable, __file__, "--worker", config, "--steps", str(args.steps), "--lora-dropout", str(args.lora_dropout),
                   "--threads", str(args.threads)]
            cmd += ["--eval-mode"] if args.eval_mode else []
            cmd += ["--forward-only"] if args.forward_only else []
            cmd += ["--torch-dropout"] if args.torch_dropout else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[config].append(res)
            print(f"round {r + 1}: {config:12s} {res['median_s']:.3f} s/step  peak {res['peak_mb']:.0f} MB", file=sys.stderr)
    med = {c: statistics.median(x["median_s"] for x in v) for c, v in results.items()}
    mem = {c: statistics.median(x["peak_mb"] for x in v) for c, v in results.items()}
    mode = "eval mode (dropout off)" if args.eval_mode else f"train mode (dropout on, lora_dropout={args.lora_dropout})"
    mode = "eval-mode forward passes without grad" if args.forward_only else mode
    threads = args.threads or "default"
    dropout = "torch's" if args.torch_dropout else "lorakit's"
    print(f"\nMiniLM-L6, batch 32 x 128, r=8, {mode}, {args.rounds} rounds x {args.steps} steps, threads {threads}, "
          f"{dropout} dropout in lorakit-*, medians\n")
    print("| configuration | trainable | s/step | vs full | vs lorakit-full | vs PEFT (same targets) | vs PEFT, paired | peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in args.configs:
        full = f"{med[c] / med['full']:.2f}x" if "full" in med else "-"
        own = f"{med[c] / med['lorakit-full']:.2f}x" if c.startswith("lorakit") and "lorakit-full" in med else "-"
        peer = c.replace("lorakit", "peft")
        vs_peft = paired = "-"
        if c.startswith("lorakit") and peer in med:
            vs_peft = f"{med[c] / med[peer]:.2f}x"
            paired = f"{statistics.median(a['median_s'] / b['median_s'] for a, b in zip(results[c], results[peer])):.2f}x"
        print(f"| {c} | {results[c][0]['trainable']:,} | {med[c]:.3f} | {full} | {own} | {vs_peft} | {paired} | {mem[c]:.0f} |")
    if "lorakit-dora-all" in results and "lorakit-all" in results:
        pairs = [a["median_s"] / b["median_s"] for a, b in zip(results["lorakit-dora-all"], results["lorakit-all"])]
        print(f"\nlorakit DoRA / lorakit LoRA (all-linear), paired: {statistics.median(pairs):.2f}x "
              f"(rounds: {', '.join(f'{p:.2f}' for p in pairs)})")
    print("\nvs full, vs PEFT: ratio of the medians over rounds. paired: the median over rounds of the ratio measured"
          " within each round (two processes run minutes apart, so slow drifts of the machine cancel).")


if __name__ == "__main__":
    main()
