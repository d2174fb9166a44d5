"""Training throughput on SST-2: length-grouped batches with dynamic padding vs padding every batch to 128 tokens.

    .venv/bin/python benchmarks/padding.py                 # 3 alternating rounds of 20 LoRA steps, 1 thread
    .venv/bin/python benchmarks/padding.py --rounds 5 --steps 40 --threads 2

Each run is `lorakit train` (MiniLM, LoRA all-linear r 8, batch 32, max_length 128) in its own process, reading
`train_examples_per_s` (examples over training wall time, evaluation excluded) from its metrics.json. Runs
alternate between the two settings so that both see the same machine load; medians over rounds are compared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32
SETTINGS = {"length-grouped, dynamic padding": [], "padded to 128 tokens": ["--pad-to-max-length"]}


def run(flags: list[str], steps: int, threads: int, data: Path, output: Path) -> dict:
    cmd = [sys.executable, "-m", "lorakit", "train", "--model", "minilm", "--task", "sst2", "--data-dir", str(data),
           "--method", "lora", "--max-steps", str(steps), "--max-length", "128", "--batch-size", str(BATCH),
           "--max-eval-samples", "64", "--output", str(output), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return json.loads((output / "metrics.json").read_text())


def padded_tokens_per_row(output: Path) -> float:
    """Tokens per row the model saw, padding included, from the step log (padded_tokens / BATCH)."""
    rows = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    return statistics.mean(r["padded_tokens"] / BATCH for r in rows if "padded_tokens" in r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    args = ap.parse_args()
    speed: dict[str, list[float]] = {name: [] for name in SETTINGS}
    padded: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, flags in SETTINGS.items():
                out = Path(tmp) / f"{r}-{len(flags)}"
                metrics = run(flags, args.steps, args.threads, args.data_dir, out)
                speed[name].append(metrics["train_examples_per_s"])
                padded[name] = padded_tokens_per_row(out)
                print(f"round {r + 1}: {name}: {speed[name][-1]:.1f} examples/s", file=sys.stderr)
    base = statistics.median(speed["padded to 128 tokens"])
    print(f"\nSST-2, MiniLM-L6, LoRA all-linear r 8, batch 32, {args.steps} steps x {args.rounds} alternating rounds, "
          f"{args.threads} thread(s); examples/s: median over rounds (training wall time)\n")
    print("| batching | padded tokens per row | examples/s | speed-up |")
    print("|---|---:|---:|---:|")
    for name in SETTINGS:
        med = statistics.median(speed[name])
        print(f"| {name} | {padded[name]:.1f} | {med:.1f} | {med / base:.1f}x |")


if __name__ == "__main__":
    main()
