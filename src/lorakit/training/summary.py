"""What a run tells and records: the resolved settings it prints, lines above the progress bar, the generations of
a causal LM, the divergence message, and metrics.json's content."""
from __future__ import annotations

import json
import math
import resource
import sys
import textwrap

import torch
from torch import nn

from lorakit.training.checkpoint import RunDir, versions
from lorakit.training.config import TrainConfig
from lorakit.training.evaluation import Evaluator
from lorakit.training.fsdp import is_sharded


def say(progress, line: str) -> None:
    """A line above the progress bar on a terminal; a plain line in a log (tqdm.write would print the bar again)."""
    if sys.stderr.isatty():
        progress.write(line)
    else:
        print(line, flush=True)


def write_generations(kind, evaluate: Evaluator, model: nn.Module, eval_sets, out: RunDir, name: str) -> None:
    """Causal LMs: greedy responses to a few evaluation prompts, one JSON object a line. Rank 0 generates and writes;
    under FSDP every rank generates (each forward pass all-gathers the weights) and rank 0 writes."""
    if kind.generate is None or not eval_sets or not (out.main or is_sharded(model)):
        return
    rows, _ = next(iter(eval_sets.values()))
    samples = kind.generate(evaluate, model, rows)
    out.write_text(name, "".join(json.dumps(sample) + "\n" for sample in samples))


def divergence_message(loss: float, grad_norm: float, step: int, out: RunDir, cfg: TrainConfig) -> str:
    what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
    kept = out.checkpoints()
    where = (f"the last good checkpoint is {kept[-1]}; continue from it with --resume {kept[-1]} and a lower --lr"
             if kept else "no checkpoint was written before it; rerun with a lower --lr")
    return f"training stopped at step {step}: the {what} (lr {cfg.lr:g}); {where}"


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process max resident set size"


def final_metrics(cfg, spec, state, best, report, device, precision, total_steps, steps_per_epoch, artifact,
                   stop_reason) -> dict:
    best_state = json.loads((best / "state.json").read_text())
    peak, peak_kind = peak_memory_mb(device)
    return {
        "task": spec.name, "method": cfg.method, "model": cfg.model,
        "eval": best_state["metrics"], "main_metric": spec.main_metric,
        "best_metric": state.best_metric, "best_step": state.best_step,
        "steps": state.step, "planned_steps": total_steps, "epochs": round(state.step / steps_per_epoch, 4),
        "stopped_early": stop_reason,
        "trainable_params": report.trainable, "total_params": report.total,
        "base_params": report.base,
        "trainable_percent": round(report.percent, 4),
        "train_seconds": round(state.train_seconds, 3), "examples_seen": state.examples_seen,
        "train_examples_per_s": round(state.examples_seen / max(state.train_seconds, 1e-9), 2),
        "peak_memory_mb": round(peak, 1), "peak_memory_kind": peak_kind,
        "device": str(device), "precision": precision, "artifact": str(artifact), "versions": versions(),
    }


def print_settings(cfg, device, precision, n_train, n_eval, total_steps, warmup, params, resume_from, step,
                    world: int = 1) -> None:
    pairs = [f"{k}={v}" for k, v in cfg.to_dict().items() if v not in (None, (), [])]
    print("lorakit train: resolved settings")
    print(textwrap.fill("  ".join(pairs), width=110, initial_indent="  ", subsequent_indent="  "))
    print(f"  device={device} precision={precision} train_examples={n_train} eval_examples={n_eval} "
          f"steps={total_steps} warmup_steps={warmup}")
    if world > 1:
        print(f"  data-parallel: world_size={world} global_batch={cfg.batch_size * world * cfg.grad_accum} "
              f"(batch_size {cfg.batch_size} x {world} processes x grad_accum {cfg.grad_accum})")
    print(f"  {params}")
    if resume_from is not None:
        print(f"  resuming from {resume_from} at step {step}")
