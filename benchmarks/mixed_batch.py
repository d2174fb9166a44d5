"""Mixed-adapter batches at inference: a batch of 32 rows spread over 4 adapters against the same batch on one adapter,
lorakit (named.mixed_batch: one batched forward) and PEFT (`adapter_names=`: one sub-batch per adapter).

    .venv/bin/python benchmarks/mixed_batch.py                      # MiniLM and SmolLM2, 4 rounds
    .venv/bin/python benchmarks/mixed_batch.py --models minilm --rounds 6 --tokens 128

Each library runs in its own process (model load, 4 adapters r 8 on every linear layer with random B, one warm-up
pair, then `--forwards` pairs of timed forwards under torch.no_grad: the single-adapter batch and the mixed batch
alternate forward by forward, so the mixed/single ratio of a library is measured under the same load); the two
libraries alternate round by round, and medians over rounds are compared. Rows are assigned to adapters round-robin
(row i -> adapter i mod 4), the worst case for PEFT's sub-batching and the usual one for a server.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

LIBRARIES = ["lorakit", "peft"]
ADAPTERS = ["a0", "a1", "a2", "a3"]


def build(model_name: str, library: str):
    import torch
    import transformers as tf

    from lorakit.models.loading import resolve_model_path

    path = resolve_model_path(model_name)
    torch.manual_seed(0)
    if model_name == "minilm":
        model = tf.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    else:
        model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if library == "peft":
        import peft

        cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        model = peft.get_peft_model(model, cfg, adapter_name=ADAPTERS[0])
        for name in ADAPTERS[1:]:
            model.add_adapter(name, cfg)
    else:
        from lorakit import LoraConfig, add_lora

        for name in ADAPTERS:
            add_lora(model, LoraConfig(r=8, alpha=16, target_modules="all-linear"), name=name)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0, 0.02)
    return model.eval()


def measure(model_name: str, library: str, rows: int, tokens: int, forwards: int, threads: int) -> dict:
    """Seconds per forward (medians) of one library's single-adapter and mixed batches, in this process: the two
    alternate forward by forward, so a change in the machine's load hits both alike."""
    import contextlib

    import torch

    torch.set_num_threads(threads)
    model = build(model_name, library)
    ids = torch.randint(5, 1000, (rows, tokens), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    names = [ADAPTERS[i % len(ADAPTERS)] for i in range(rows)]
    if library == "peft":
        runs = {"single": lambda: model(**batch), "mixed": lambda: model(**batch, adapter_names=names)}
        scopes = {"single": contextlib.nullcontext, "mixed": contextlib.nullcontext}
    else:
        from lorakit import mixed_batch

        runs = {"single": lambda: model(**batch), "mixed": lambda: model(**batch)}
        scopes = {"single": contextlib.nullcontext, "mixed": lambda: mixed_batch(model, names)}
    times = {"single": [], "mixed": []}
    with torch.no_grad():
        for i in range(1 + forwards):
            for kind in ("single", "mixed") if i % 2 == 0 else ("mixed", "single"):
                with scopes[kind]():
                    start = time.perf_counter()
                    runs[kind]()
                    if i >= 1:  # the first pair warms up
                        times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) for kind, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--forwards", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "LIBRARY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.rows, args.tokens, args.forwards, args.threads)))
        return
    for model_name in args.models:
        results = {(lib, kind): [] for lib in LIBRARIES for kind in ("single", "mixed")}
        for r in range(args.rounds):
            for lib in LIBRARIES if r % 2 == 0 else LIBRARIES[::-1]:
                out = subprocess.run([sys.executable, __file__, "--one", model_name, lib, "--rows", str(args.rows),
                                      "--tokens", str(args.tokens), "--forwards", str(args.forwards),
                                      "--threads", str(args.threads)], capture_output=True, text=True, check=True)
                for kind, seconds in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    results[lib, kind].append(seconds)
        med = {key: statistics.median(v) for key, v in results.items()}
        print(f"\n{model_name}: {args.rows} rows x {args.tokens} tokens, 4 adapters r 8 all-linear, "
              f"{args.rounds} rounds, s/forward (median)")
        for (lib, kind), values in results.items():
            print(f"  {lib:8s} {kind:7s} {med[lib, kind]:.3f}   rounds: {' '.join(f'{t:.3f}' for t in values)}")
        for lib in LIBRARIES:
            within = [m / s for m, s in zip(results[lib, "mixed"], results[lib, "single"])]
            print(f"  {lib} mixed / {lib} single: {statistics.median(within):.2f}x (median of the rounds' ratios)")
        print(f"  lorakit mixed / peft mixed: {med['lorakit', 'mixed'] / med['peft', 'mixed']:.2f}x")
        print(f"  lorakit single / peft single: {med['lorakit', 'single'] / med['peft', 'single']:.2f}x")


if __name__ == "__main__":
    main()
