"""`lorakit compare`: the fine-tuning methods side by side on one model and task, with the same data, epochs and seed.

    lorakit compare --model minilm --task sst2 --data-dir ../shared/data/sst2 --max-train-samples 2000 --epochs 1 \\
        --search-dir runs/search --output runs/compare

Methods (--methods, default all): head, last-layers, lora (the TrainConfig defaults: all-linear, r 8), lora-best (the
LoRA settings of a search's best.yaml; only with --search-dir), qlora, full; and the LoRA family rows dora, pissa,
olora (lora with --dora / --lora-init pissa / olora) and qlora-loftq (qlora with --lora-init loftq). Each method trains in its own process
(so each peak memory is its own), one after the other with every core, into <output>/<method>/; its learning rate is
the method's default (train_config.DEFAULT_LR) unless --lr is given. A method whose finished run in <output> has the
same settings is reused; delete its directory to train it again.

Writes <output>/comparison.md, comparison.csv and comparison.png: per method the evaluation metrics, trainable
parameters (count and % of the model), training time, peak memory (CPU: the process's max resident set size; CUDA:
max allocated) and the size of the saved adapter / trained weights (the tensor files of the artifact).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from lorakit.experiments import report
from lorakit.experiments.jobs import JOB, RESULT, cpu_count, run_job
from lorakit.training.config import METHODS, TrainConfig

BEST = "lora-best"  # the pseudo-method: LoRA with the settings of a search's best.yaml
DEFAULT_METHODS = ("head", "last-layers", "lora", BEST, "qlora", "full")
# the LoRA family as rows: a training method plus the settings that make it (lorakit train --dora / --lora-init)
FAMILY_ROWS = {"dora": {"method": "lora", "dora": True}, "pissa": {"method": "lora", "lora_init": "pissa"},
               "olora": {"method": "lora", "lora_init": "olora"},
               "qlora-loftq": {"method": "qlora", "lora_init": "loftq"}}
CHOICES = (*METHODS, BEST, *FAMILY_ROWS)
# settings every method shares (the comparison's conditions); a search's best.yaml contributes everything else
SHARED = ("model", "task", "data_dir", "train_file", "eval_file", "text_columns", "label_column", "split_from_eval",
          "max_train_samples", "max_eval_samples", "max_length", "pad_to_max_length", "group_by_length", "epochs",
          "max_steps", "batch_size", "grad_accum", "eval_batch_size", "eval_steps", "seed", "device", "precision",
          "torch_dropout")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
TOTAL_PARAMS = ("total params: the base model's parameters, one definition for every method: each weight counted "
                "once, a quantized (qlora) weight as the values it encodes, LoRA's added A and B not counted; "
                "% of total: trainable params (LoRA's A and B included) over it.")
NOT_METRICS = ("method", "status", "main_metric", "trainable_params", "total_params", "trainable_percent",
               "train_seconds", "peak_memory_mb", "adapter_bytes", "artifact", "lr", "error")


def method_configs(base: dict, methods: list[str], output: Path, search_dir: str | Path | None = None
                   ) -> dict[str, TrainConfig]:
    """{method: TrainConfig}: the base values as given, the method, <output>/<method>; lora-best from best.yaml."""
    configs = {}
    for method in methods:
        if method == BEST:
            if search_dir is None:
                raise ValueError(f"method {BEST} needs --search-dir (a `lorakit search` output with best.yaml)")
            path = Path(search_dir) / "best.yaml"
            if not path.is_file():
                raise FileNotFoundError(f"--search-dir {search_dir}: no best.yaml (has the search a complete trial?)")
            shared = TrainConfig.from_dict({**base, "output": None})
            values = {**(yaml.safe_load(path.read_text()) or {}), **{k: getattr(shared, k) for k in SHARED}}
        else:
            values = {**base, **FAMILY_ROWS.get(method, {"method": method})}
        values.update(output=str(output / method), resume=None)
        configs[method] = TrainConfig.from_dict(values)
    return configs


def artifact_bytes(artifact: str | Path) -> int:
    """Bytes of the tensor files of a saved adapter / weights / model directory (configs and tokenizer excluded)."""
    return sum(p.stat().st_size for p in Path(artifact).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def comparison_row(method: str, result: dict) -> dict:
    """One table row from a run's result.json (a failed run keeps its error)."""
    row = {"method": method, "status": result["status"]}
    if result["status"] != "complete":
        return {**row, "error": result.get("error")}
    m = result["metrics"]
    row.update({f"{split}_{name}": value for split, values in m["eval"].items() for name, value in values.items()})
    base = m.get("base_params")  # TOTAL_PARAMS; runs before it was recorded keep their own total and percent
    row.update(main_metric=f"{next(iter(m['eval']))}_{m['main_metric']}", trainable_params=m["trainable_params"],
               total_params=base or m["total_params"],
               trainable_percent=100 * m["trainable_params"] / base if base else m["trainable_percent"],
               train_seconds=m["train_seconds"], peak_memory_mb=m["peak_memory_mb"],
               adapter_bytes=artifact_bytes(m["artifact"]), artifact=m["artifact"])
    return row


def _reusable(directory: Path, cfg: TrainConfig) -> dict | None:
    """The result of a finished run in `directory` with exactly these settings, else None."""
    job, result = directory / JOB, directory / RESULT
    if not (job.is_file() and result.is_file()):
        return None
    done = json.loads(result.read_text())
    same = TrainConfig.from_dict(json.loads(job.read_text())["config"]) == cfg  # settings added since: defaults
    return done if same and done["status"] == "complete" else None


def run_compare(configs: dict[str, TrainConfig], threads: int | None = None) -> list[dict]:
    """Train each method in turn (in a fresh process, with `threads` torch threads: default every core)."""
    rows = []
    for method, cfg in configs.items():
        directory = Path(cfg.output)
        result = _reusable(directory, cfg)
        if result is not None:
            print(f"lorakit compare: {method}: reusing the finished run in {directory}")
        else:
            if directory.exists():
                shutil.rmtree(directory)  # an unfinished run or other settings: start clean
            print(f"lorakit compare: {method}: training (lr {cfg.lr:g}; log {directory / 'train.log'}) ...", flush=True)
            result = run_job(cfg, directory, threads or cpu_count())
        row = comparison_row(method, result)
        row["lr"] = cfg.lr
        rows.append(row)
        shown = f"{row['main_metric']} {row[row['main_metric']]:.4f}, {row['train_seconds']:.0f} s training" \
            if result["status"] == "complete" else f"{result['status']}: {result.get('error')}"
        print(f"lorakit compare: {method}: {shown}", flush=True)
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    done = [r for r in rows if r["status"] == "complete"]
    metrics = list(dict.fromkeys(k for r in done for k in r if k not in NOT_METRICS))
    columns = {"method": "method", **{m: m for m in metrics}, "trainable_params": "trainable params",
               "total_params": "total params", "trainable_percent": "% of total", "train_seconds": "train time (s)",
               "peak_memory_mb": "peak memory (MB)",
               "adapter_bytes": "adapter size", "lr": "lr"}
    table = report.markdown_table(done, columns, {**{m: report.metric_cell for m in metrics},
                                                  "adapter_bytes": report.human_bytes,
                                                  "trainable_percent": lambda v: f"{v:.3f}%",
                                                  "train_seconds": lambda v: f"{v:.0f}",
                                                  "peak_memory_mb": lambda v: f"{v:,.0f}"})
    notes = [TOTAL_PARAMS] if done else []
    notes += [f"{r['method']}: {r['status']}: {r.get('error')}" for r in rows if r["status"] != "complete"]
    return table + ("\n" + "".join(f"\n- {note}" for note in notes) if notes else "") + "\n"


def write_comparison(rows: list[dict], output: Path, title: str = "") -> dict[str, Path]:
    """comparison.md, comparison.csv and comparison.png in `output`."""
    output.mkdir(parents=True, exist_ok=True)
    markdown = output / "comparison.md"
    markdown.write_text((f"# {title}\n\n" if title else "") + comparison_markdown(rows))
    paths = {"table": markdown, "csv": report.write_csv(rows, output / "comparison.csv")}
    done = [r for r in rows if r["status"] == "complete"]
    if done:
        metric = done[0]["main_metric"]
        chart = report.plot_comparison(done, metric, output / "comparison.png")
        if chart is not None:
            paths["chart"] = chart
    return paths


def describe(configs: dict[str, TrainConfig]) -> str:
    cfg = next(iter(configs.values()))
    return (f"{cfg.model} on {cfg.task}: {cfg.max_train_samples or 'all'} train / {cfg.max_eval_samples or 'all'} "
            f"eval examples, max_length {cfg.max_length}, "
            f"{f'{cfg.max_steps} steps' if cfg.max_steps else f'{cfg.epochs} epoch(s)'}, batch size {cfg.batch_size}, "
            f"seed {cfg.seed}")
