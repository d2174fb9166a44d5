"""The markdown tables of benchmarks/results/accuracy.md from the run directories that benchmarks/tasks.sh fills.

    .venv/bin/python benchmarks/collect.py                 # reads runs/bench/
    .venv/bin/python benchmarks/collect.py --runs DIR

Every number comes from a run's metrics.json (and, for instruction tuning, reloaded_eval.json and the generation
files); a run that is missing is left out with a note on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorakit.experiments.report import human_bytes

WEIGHTS = (".safetensors", ".bin", ".pt")
GLUE = [("cola", "CoLA", "matthews_correlation"), ("cola-4ep", "CoLA", "matthews_correlation"),
        ("cola-lr5e-4", "CoLA, lr 5e-4", "matthews_correlation"),
        ("cola-lr3e-4", "CoLA, lr 3e-4", "matthews_correlation"),
        ("cola-kaiming", "CoLA, kaiming init, lr 1e-3", "matthews_correlation"),
        ("cola-lora-head-lr3e-4", "CoLA, lr 3e-4", "matthews_correlation"),
        ("stsb", "STS-B", "pearson"), ("mrpc", "MRPC", "accuracy"),
        ("rte", "RTE", "accuracy"), ("imdb", "IMDB (reduced)", "accuracy")]


def load(run: Path) -> dict | None:
    path = run / "metrics.json"
    if not path.is_file():
        print(f"missing: {path}", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def artifact_size(metrics: dict) -> str:
    """The saved adapter / weights: bytes of their tensor files, human readable."""
    files = Path(metrics["artifact"]).rglob("*")
    return human_bytes(sum(f.stat().st_size for f in files if f.is_file() and f.suffix in WEIGHTS))


def split_metrics(metrics: dict, skip=("loss",)) -> dict:
    values = next(iter(metrics["eval"].values()))
    return {k: v for k, v in values.items() if k not in skip}


def sst2_table(root: Path) -> str:
    rows = [("head", root / "sst2/head"), ("last-layers", root / "sst2/last-layers"),
            ("lora, query + value", root / "sst2-qv/lora"), ("lora, all-linear", root / "sst2/lora"),
            ("lora, all-linear, alpha 16", root / "sst2-alpha16/lora"),
            ("lora, all-linear, lr 5e-4", root / "sst2-lr5e-4/lora"),
            ("lora, all-linear, lr 3e-4", root / "sst2-lr3e-4/lora"),
            ("lora, all-linear, lr 2e-4", root / "sst2-lr2e-4/lora"),
            ("lora+head (all-linear; pooler and classifier in full)", root / "sst2-lora-head/lora+head"),
            ("full", root / "sst2/full"),
            ("lora, all-linear, lr 3e-4, seed 1", root / "sst2-lr3e-4-seed1/lora"),
            ("lora, all-linear, lr 3e-4, seed 2", root / "sst2-lr3e-4-seed2/lora"),
            ("lora, all-linear, r 16, alpha 16, lr 3e-4", root / "sst2-r16-lr3e-4/lora"),
            ("lora, all-linear, kaiming init of A (PEFT's), lr 1e-3", root / "sst2-kaiming/lora"),
            ("lora, all-linear, kaiming init of A (PEFT's), lr 1e-3, seed 1", root / "sst2-kaiming-seed1/lora"),
            ("lora, all-linear, kaiming init of A (PEFT's), lr 1e-3, seed 2", root / "sst2-kaiming-seed2/lora"),
            ("lora+head, lr 3e-4", root / "sst2-lora-head-lr3e-4/lora+head"),
            ("full, seed 1", root / "sst2-full-seed1/full"),
            ("full, seed 2 (2 threads)", root / "sst2-full-seed2/full"),
            ("lora, all-linear, LoRA+ (lr 2e-4, B at 8x), seed 0", root / "sst2-loraplus-seed0/lora"),
            ("lora, all-linear, LoRA+ (lr 2e-4, B at 8x), seed 1", root / "sst2-loraplus-seed1/lora")]
    out = ["| method | dev accuracy | trainable params | % of model | train time (min) | examples/s | "
           "peak memory (MB) | saved weights |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, run in rows:
        m = load(run)
        if m is None:
            continue
        out.append(f"| {label} | {split_metrics(m)['accuracy']:.4f} | {m['trainable_params']:,} | "
                   f"{m['trainable_percent']:.3f} | {m['train_seconds'] / 60:.1f} | {m['train_examples_per_s']:.0f} | "
                   f"{m['peak_memory_mb']:,.0f} | {artifact_size(m)} |")
    return "\n".join(out)


def glue_table(root: Path) -> str:
    out = ["| task | method | official metrics per evaluation split | training examples x epochs | train time (min) |",
           "|---|---|---|---|---:|"]
    for name, label, _ in GLUE:
        for method in ("lora", "lora+head", "full"):
            m = load(root / name / method) if (root / name / method).is_dir() else None
            if m is None:
                continue
            shown = "; ".join(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "loss")
                              for split, values in m["eval"].items())
            per_epoch = m["examples_seen"] / m["epochs"]
            out.append(f"| {label} | {method} | {shown} | {per_epoch:,.0f} x {m['epochs']:g} | "
                       f"{m['train_seconds'] / 60:.1f} |")
    return "\n".join(out)


def squad_table(root: Path) -> str:
    out = ["| method | exact match | F1 | trainable params | train time (min) | peak memory (MB) |",
           "|---|---:|---:|---:|---:|---:|"]
    for method in ("head", "lora", "full"):
        m = load(root / "squad" / method)
        if m is None:
            continue
        v = split_metrics(m)
        out.append(f"| {method} | {v['exact_match']:.2f} | {v['f1']:.2f} | {m['trainable_params']:,} | "
                   f"{m['train_seconds'] / 60:.1f} | {m['peak_memory_mb']:,.0f} |")
    return "\n".join(out)


def instruct_table(root: Path) -> str:
    out = ["| method | held-out loss before | after | perplexity before | after | reloaded adapter's loss | "
           "trainable params | train time (min) | peak memory (MB) | adapter |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in ("lora", "qlora"):
        run = root / "instruct" / method
        m = load(run)
        if m is None:
            continue
        before, after = next(iter(m["eval_before_training"].values())), split_metrics(m, skip=())
        reloaded = run / "reloaded_eval.json"
        again = (f"{next(iter(json.loads(reloaded.read_text())['eval'].values()))['loss']:.4f}"
                 if reloaded.is_file() else "-")
        out.append(f"| {method} | {before['loss']:.4f} | {after['loss']:.4f} | {before['perplexity']:.2f} | "
                   f"{after['perplexity']:.2f} | {again} | {m['trainable_params']:,} | {m['train_seconds'] / 60:.1f} | "
                   f"{m['peak_memory_mb']:,.0f} | {artifact_size(m)} |")
    return "\n".join(out)


def generations(root: Path, method: str = "lora", n: int = 2) -> str:
    run = root / "instruct" / method
    files = [run / "generations_before.jsonl", run / "generations_after.jsonl"]
    if not all(f.is_file() for f in files):
        return ""
    before, after = ([json.loads(x) for x in f.read_text().splitlines()] for f in files)
    out = []
    for b, a in list(zip(before, after))[:n]:
        prompt = " ".join(str(v) for v in b["prompt"].values() if v)
        out += [f"- prompt: {prompt!r}", f"  - before: {b['generated']!r}", f"  - after: {a['generated']!r}",
                f"  - reference: {b['reference']!r}"]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench"))
    root = ap.parse_args().runs
    for title, table in (("SST-2", sst2_table(root)), ("GLUE and IMDB", glue_table(root)),
                         ("SQuAD", squad_table(root)), ("Instruction tuning", instruct_table(root)),
                         ("Generations (lora)", generations(root))):
        print(f"### {title}\n\n{table}\n")


if __name__ == "__main__":
    main()
