"""The LoRA family on SST-2: LoRA, DoRA, PiSSA, OLoRA, QLoRA, QLoRA + LoftQ, MiniLM, 4,000 sentences, 1 epoch.

    python benchmarks/lora_family.py run --seed 0      # one `lorakit compare` per seed (6 rows) into runs/bench/lora-family
    python benchmarks/lora_family.py run --seed 0 --methods dora   # one row (parallel processes: one output each)
    python benchmarks/lora_family.py report            # mean and spread over the seeds found, and the loss-curve plot

Every row is `lorakit compare` with its method's default learning rate, r 8, alpha 8, all-linear (the TrainConfig
defaults), --loftq-iter 5 for the LoftQ row, --threads 1 (a shared 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench" / "lora-family"
METHODS = ("lora", "dora", "pissa", "olora", "qlora", "qlora-loftq")
PLOT = ROOT / "benchmarks" / "lora_family_sst2.png"


def run(seed: int, data: str, methods: list[str]) -> None:
    name = f"seed{seed}" if list(methods) == list(METHODS) else f"seed{seed}-{'-'.join(methods)}"
    cmd = [sys.executable, "-m", "lorakit", "compare", "--threads", "1", "--model", "minilm", "--task", "sst2",
           "--data-dir", data, "--epochs", "1", "--max-length", "64", "--max-train-samples", "4000",
           "--loftq-iter", "5", "--seed", str(seed), "--methods", *methods, "--output", str(OUT / name)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env)


def _losses(path: Path, steps: int) -> list[float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if "loss" in r and "eval" not in r][:steps]


def report(steps: int = 100) -> None:
    runs_by_method: dict[str, list[Path]] = {}
    for metrics in sorted(OUT.glob("*/*/metrics.json")):
        runs_by_method.setdefault(metrics.parent.name, []).append(metrics.parent)
    seeds = {d.parent.name.split("-")[0] for dirs in runs_by_method.values() for d in dirs}
    print(f"| method | accuracy (mean ± sd over {len(seeds)} seeds) | per seed | train time (s, mean) | "
          f"mean loss, steps 1-20 | 21-50 | 51-100 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    curves = {}
    for method in METHODS:
        accs, times, runs = [], [], []
        for run_dir in runs_by_method.get(method, []):
            metrics = json.loads((run_dir / "metrics.json").read_text())
            accs.append(metrics["eval"]["validation"]["accuracy"])
            times.append(metrics["train_seconds"])
            runs.append(_losses(run_dir / "log.jsonl", steps))
        if not accs:
            continue
        n = min(len(r) for r in runs)
        curve = [statistics.mean(r[i] for r in runs) for i in range(n)]
        curves[method] = curve
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {method} | {100 * statistics.mean(accs):.2f} ± {100 * sd:.2f} | "
              f"{', '.join(f'{100 * a:.2f}' for a in accs)} | {statistics.mean(times):.0f} | "
              f"{statistics.mean(curve[:20]):.4f} | {statistics.mean(curve[20:50]):.4f} | "
              f"{statistics.mean(curve[50:100]):.4f} |")
    _plot(curves, len(seeds))


def _smooth(curve: list[float], window: int = 9) -> list[float]:
    """Centred moving average (shorter windows at the ends)."""
    half = window // 2
    return [statistics.mean(curve[max(0, i - half):i + half + 1]) for i in range(len(curve))]


def _plot(curves: dict[str, list[float]], seeds: int) -> None:
    """Top: each method's mean loss per step (faint) and its moving average. Bottom: the loss minus LoRA's at the
    same step; every method of a seed sees the same batches in the same order, so this cancels the batch noise
    that dominates the top panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for i, (method, curve) in enumerate(curves.items()):
        steps = range(1, len(curve) + 1)
        top.plot(steps, curve, color=f"C{i}", linewidth=0.6, alpha=0.3)
        top.plot(steps, _smooth(curve), color=f"C{i}", label=method, linewidth=1.4)
        if "lora" in curves and method != "lora":
            diff = [a - b for a, b in zip(curve, curves["lora"])]
            bottom.plot(steps, _smooth(diff), color=f"C{i}", label=method, linewidth=1.4)
    bottom.axhline(0, color="C0", linewidth=1.0, label="lora")
    top.set_ylabel(f"training loss (mean of {seeds} seeds)")
    bottom.set_ylabel("loss minus LoRA's, same step")
    bottom.set_xlabel("optimizer step (batch 32); solid: moving average over 9 steps")
    top.set_title("MiniLM on SST-2 (4,000 sentences): the first 100 steps")
    top.legend()
    bottom.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)
    print(f"\nplot: {PLOT.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    r.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    sub.add_parser("report")
    args = parser.parse_args()
    if args.command == "run":
        run(args.seed, args.data_dir, args.methods)
    else:
        report()


if __name__ == "__main__":
    main()
