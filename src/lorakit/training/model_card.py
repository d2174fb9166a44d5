"""The model card of a saved adapter: README.md beside adapter_config.json, as the hub and PEFT users expect.

    write_model_card("runs/sst2-lora/adapter", cfg, metrics)   # `lorakit train` does this when it saves the adapter

YAML front matter as the hub reads it (base_model, library_name: lorakit, tags), then the base model, the method
and its LoRA settings, the data, the best checkpoint's metrics and a `lorakit train` command that makes the same
run (every setting that differs from its default, as flags).
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

from lorakit.io.atomic import write_text_atomic
from lorakit.models.loading import hub_id
from lorakit.training.config import LORA_METHODS, TrainConfig


def train_command(cfg: TrainConfig) -> str:
    """`lorakit train` with --model, --task and a flag for every other setting of cfg that differs from its default
    (resume left out)."""
    words = ["lorakit", "train"]
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name == "resume" or value is None or value == () and f.default is None or \
                value == f.default and f.name not in ("model", "task"):
            continue
        flags = f.metadata.get("flags", (f"--{f.name.replace('_', '-')}",))
        if isinstance(value, bool):
            words.append(f"--{'' if value else 'no-'}{f.name.replace('_', '-')}")
        elif isinstance(value, tuple):
            words += [w for v in value for w in (flags[0], str(v))] if "flags" in f.metadata else \
                [flags[0], *map(str, value)]
        else:
            words += [flags[0], str(value)]
    return " ".join(shlex.quote(w) for w in words)


def model_card(cfg: TrainConfig, metrics: dict, base_model: str | None) -> str:
    """README.md's text for the adapter of a finished run (metrics: metrics.json's content)."""
    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else ", ".join(cfg.target_modules)
    lora = f" (r {cfg.lora_r}, alpha {cfg.lora_alpha:g}, targets {targets})" if cfg.method in LORA_METHODS else ""
    data = cfg.data_dir or ", ".join(str(p) for p in (cfg.train_file, cfg.eval_file) if p) or "the task's default"
    best = ", ".join(f"{split} {name} {value:.4f}" for split, values in metrics["eval"].items()
                     for name, value in values.items() if isinstance(value, (int, float)))
    return "\n".join([
        "---", f"base_model: {json.dumps(base_model or cfg.model)}", "library_name: lorakit", "tags: [lora]", "---", "",
        f"# {metrics['task']} {cfg.method} adapter of {base_model or cfg.model}", "",
        f"- base model: {base_model or cfg.model} (`--model {cfg.model}`)",
        f"- method: {cfg.method}{lora}; {metrics['trainable_params']:,} trainable parameters",
        f"- data: task {metrics['task']}, {data}; {metrics['steps']} steps, {metrics['examples_seen']:,} examples seen",
        f"- metrics (best checkpoint, step {metrics['best_step']}): {best}",
        "", "Made by:", "", "```bash", train_command(cfg), "```", "",
        "Load it with `lorakit eval --adapter DIR` or `lorakit predict --adapter DIR`, in Python with "
        "`lorakit.load_adapter(model, DIR)`, or with PEFT: `PeftModel.from_pretrained(model, DIR)`.", ""])


def write_model_card(artifact: str | Path, cfg: TrainConfig, metrics: dict, main: bool = True) -> Path | None:
    """README.md in an adapter directory (the other artifacts, weights/ and model/, get none), by the main process
    alone. Returns its path."""
    config = Path(artifact) / "adapter_config.json"
    if not main or not config.is_file():
        return None
    base = hub_id(cfg.model) or json.loads(config.read_text()).get("base_model_name_or_path")
    write_text_atomic(Path(artifact) / "README.md", model_card(cfg, metrics, base))
    return Path(artifact) / "README.md"
