"""Mixed-adapter batches at inference: a batch of 32 rows spread over 4 adapters against the same batch on one adapter,
lorakit (named.mixed_batch: one batched forward) and PEFT (`adapter_names=`: one sub-batch per adapter).

    .venv/bin/python benchmarks/mixed_batch.py                      # MiniLM and SmolLM2, 4 rounds
    .venv/bin/python benchmarks/mixed_batch.py --models minilm --rounds 6 --tokens 128

Each configuration runs in its own process (model load, 4 adapters r 8 on every linear layer with random B, 2
warm-up forwards, then `--forwards` timed forwards under torch.no_grad), the configurations alternate round by round
(the order rotates), and the medians over rounds are compared. Rows are assigned to adapters round-robin
(row i -> adapter i mod 4), the worst case for PEFT's sub-batching and the usual one for a server.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CONFIGS = ["lorakit-single", "lorakit-mixed", "peft-single", "peft-mixed"]
ADAPTERS = ["a0", "a1", "a2", "a3"]


def build(model_name: str, config: str):
    import torch
    import transformers as tf

    from lorakit.training.models import resolve_model_path

    path = resolve_model_path(model_name)
    torch.manual_seed(0)
    if model_name == "minilm":
        model = tf.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    else:
        model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if config.startswith("peft"):
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


def measure(model_name: str, config: str, rows: int, tokens: int, forwards: int, threads: int) -> float:
    """Seconds per forward (median of `forwards`) of one configuration, in this process."""
    import contextlib

    import torch

    torch.set_num_threads(threads)
    model = build(model_name, config)
    ids = torch.randint(5, 1000, (rows, tokens), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    names = [ADAPTERS[i % len(ADAPTERS)] for i in range(rows)]
    if config == "peft-mixed":
        def run():
            return model(**batch, adapter_names=names)
        scope = contextlib.nullcontext()
    elif config == "lorakit-mixed":
        from lorakit import mixed_batch

        def run():
            return model(**batch)
        scope = mixed_batch(model, names)
    else:
        def run():
            return model(**batch)
        scope = contextlib.nullcontext()
    times = []
    with torch.no_grad(), scope:
        for i in range(2 + forwards):
            start = time.perf_counter()
            run()
            if i >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--forwards", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps({"s": measure(*args.one, args.rows, args.tokens, args.forwards, args.threads)}))
        return
    for model_name in args.models:
        results = {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[: r % len(CONFIGS)]
            for config in order:
                out = subprocess.run([sys.executable, __file__, "--one", model_name, config, "--rows", str(args.rows),
                                      "--tokens", str(args.tokens), "--forwards", str(args.forwards),
                                      "--threads", str(args.threads)], capture_output=True, text=True, check=True)
                results[config].append(json.loads(out.stdout.strip().splitlines()[-1])["s"])
        med = {c: statistics.median(v) for c, v in results.items()}
        print(f"\n{model_name}: {args.rows} rows x {args.tokens} tokens, 4 adapters r 8 all-linear, "
              f"{args.rounds} rounds, s/forward (median)")
        for c in CONFIGS:
            print(f"  {c:15s} {med[c]:.3f}   rounds: {' '.join(f'{t:.3f}' for t in results[c])}")
        print(f"  lorakit mixed / lorakit single: {med['lorakit-mixed'] / med['lorakit-single']:.2f}x")
        print(f"  peft mixed / peft single:       {med['peft-mixed'] / med['peft-single']:.2f}x")
        print(f"  lorakit mixed / peft mixed:     {med['lorakit-mixed'] / med['peft-mixed']:.2f}x")


if __name__ == "__main__":
    main()
