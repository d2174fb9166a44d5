"""The training loop: plain PyTorch, top to bottom.

    from lorakit.training.run import train
    from lorakit.training.config import TrainConfig
    metrics = train(TrainConfig(task="sst2", data_dir="../shared/data/sst2", method="lora", epochs=1))

`train` does, in order:
  1. seeds, device, precision; the data (load_splits, tokenized by the task kind), batched by length and padded
     per batch (PaddingCollator; --pad-to-max-length pads to max_length instead);
  2. the model for the method (methods.setup_method), gradient checkpointing, the cheap CPU dropout
     (fast_dropout.py; --torch-dropout keeps torch's), and `wrap_model`: the one place
     the model is wrapped for the device and, under torchrun / accelerate launch, in DistributedDataParallel
     (distributed.py: every rank builds the same seeded global batches of batch_size x world rows and trains
     on its shard; evaluation is sharded and gathered; only rank 0 writes);
  3. AdamW with LoRA+ parameter groups, linear warmup then linear decay (train_step.py);
  4. the loop over optimizer steps: each step (train_step.optimizer_step) accumulates grad_accum micro-batches,
     their losses weighted by rows (the gradient equals that of one big batch), then clips and steps. One JSON
     line per step; evaluation every eval_steps and at each epoch end; the best weights by the task's main
     metric kept in checkpoints/best; early stopping; a resumable step checkpoint at every evaluation (or every
     save_steps); a NaN or infinite loss stops the run with TrainingDiverged, the last step checkpoint untouched;
  5. the best weights are loaded back and saved as the artifact (adapter/, weights/ or model/);
     metrics.json, config.yaml, versions.json and log.jsonl complete the output directory.
"""
from __future__ import annotations

import json
import math
import random
import resource
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed
from ..atomic import atomic_dir, read_json, recover
from .checkpoint import (BEST, CHECKPOINTS, RunDir, TrainState, check_reporters, is_main_process, load_checkpoint,
                         load_trainable, versions)
from ..errors import RunInterrupted, UserError
from .estimate import RunClock, evaluation_steps
from ..fast_dropout import fast_dropout
from .guards import check_max_length
from .evaluation import Evaluator, kind_of
from .methods import load_base, save_artifact, setup_method
from ..params import parameter_report
from .runlock import RunLock
from .signals import stop_requests
from ..tasks import (CAUSAL_LM, LengthGroupedBatchSampler, PaddingCollator, TaskSpec, get_task, load_splits,
                     sequence_lengths)
from .config import TrainConfig, eval_sample_cap, resolve_device, resolve_precision
from .step import build_optimizer, linear_schedule, optimizer_step


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite. The message names the last good checkpoint."""


def set_seed(seed: int) -> None:
    """Python, NumPy and torch (CPU and every CUDA device). Data order has its own seeded generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The single place the model is placed and wrapped: DistributedDataParallel under a data-parallel launch.

    Only parameters that require grad are synchronized (the LoRA weights and the head); frozen and quantized
    weights are never communicated. DDP broadcasts rank 0's parameters and buffers at construction.
    """
    model = model.to(device)
    if distributed.world_size() > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            output_device=device.index if device.type == "cuda" else None)
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (state-dict names without "module.")."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them.

    The embeddings are frozen, so their output does not require grad; under reentrant checkpointing no gradient
    would then reach the LoRA weights inside the checkpointed blocks. enable_input_require_grads makes the
    embedding output require grad, which keeps LoRA training under either checkpoint variant.
    """
    # transformers 5 renamed gradient_checkpointing_enable; the old name warns
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    model.enable_input_require_grads()


def train(cfg: TrainConfig, on_evaluate: Callable[[TrainState], None] | None = None) -> dict:
    """Run one fine-tuning job (module docstring). Returns metrics.json's content.

    on_evaluate(state) is called after every evaluation (state.last_metric, best_metric, step); an exception it
    raises ends the run (a hyperparameter search prunes a trial so).
    """
    check_reporters(cfg.report_to)
    lock = RunLock(cfg.output) if is_main_process() else None  # one run per output directory (runlock.py)
    if lock is not None:
        lock.acquire()
    try:
        set_seed(cfg.seed)
        device, started_group = distributed.setup(resolve_device(cfg.device))
        try:
            with stop_requests() as stop:
                return _train(cfg, device, on_evaluate, stop)
        finally:
            distributed.cleanup(started_group)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, device: torch.device, on_evaluate, stop) -> dict:
    world, rank = distributed.world_size(), distributed.rank()
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)

    data = load_splits(cfg.task, data_dir=cfg.data_dir, train_file=cfg.train_file, eval_file=cfg.eval_file,
                       text_columns=cfg.text_columns, label_column=cfg.label_column,
                       split_from_eval=cfg.split_from_eval, max_train_samples=cfg.max_train_samples,
                       max_eval_samples=eval_sample_cap(cfg.max_eval_samples, get_task(cfg.task).kind == CAUSAL_LM),
                       include_test=cfg.eval_test, seed=cfg.seed)
    spec, kind = data.spec, kind_of(data.spec)
    model, tokenizer = load_base(cfg.model, spec, new_head=True,
                                 quant_config=cfg.quant_config() if cfg.method == "qlora" and cfg.lora_init != "loftq" else None)
    check_max_length(model, cfg.max_length)
    setup_method(model, cfg)
    report = parameter_report(model)
    train_set = kind.train_features(data.train, tokenizer, cfg.max_length)
    eval_sets = {name: (rows, kind.eval_features(rows, tokenizer, cfg.max_length)) for name, rows in data.eval.items()}
    collator = PaddingCollator.from_tokenizer(tokenizer, pad_to_max_length=cfg.pad_to_max_length,
                                              max_length=cfg.max_length)
    # global batches of batch_size * world rows, the same on every rank; each rank trains on its shard of each
    sampler = LengthGroupedBatchSampler(sequence_lengths(train_set), cfg.batch_size * world, shuffle=True,
                                        seed=cfg.seed, group_by_length=cfg.group_by_length)
    steps_per_epoch = math.ceil(len(sampler) / cfg.grad_accum)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(cfg.warmup_ratio * total_steps)

    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if not cfg.torch_dropout:
        fast_dropout(model)  # the model's dropout layers cost more than LoRA's work on CPU (fast_dropout.py)
    model = wrap_model(model, device)
    raw = unwrap_model(model)  # saved, loaded and evaluated without the DDP wrapper
    model.train()
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, total_steps))
    evaluate = Evaluator(spec, kind, tokenizer, collator, cfg.eval_batch_size, cfg.max_length, device, precision)

    output = Path(cfg.output)
    if distributed.is_main():
        for line in recover(output) + recover(output / CHECKPOINTS):  # what a kill interrupted (atomic.py)
            print(f"lorakit train: note: {line} (left by an interrupted run)", file=sys.stderr)
    resume_from = _resume_path(cfg)
    state = TrainState()
    if resume_from is not None:
        _note_changed_settings(resume_from, cfg)
        state = load_checkpoint(resume_from, raw, optimizer, scheduler)
        if distributed.is_main():
            _adopt_best(resume_from, output)
        distributed.barrier()
    elif list((output / CHECKPOINTS).glob("step-*")):
        raise ValueError(f"--output {output} holds checkpoints of an earlier run; continue it with --resume auto, "
                         "or choose another --output (or delete that one)")
    out = RunDir(output, resume_step=state.step if resume_from is not None else None)
    out.write_text("config.yaml", cfg.to_yaml())
    out.write_json("versions.json", versions())
    if out.main:
        _print_settings(cfg, device, precision, len(train_set), {k: len(rows) for k, (rows, _) in eval_sets.items()},
                        total_steps, warmup, report.summary(), resume_from, state.step, world)
    progress = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
                    disable=not out.main, mininterval=0.2 if sys.stderr.isatty() else 30)  # log files: sparse
    stop_reason = _still_stopped(state, cfg)
    before = None
    n_eval = sum(len(rows) for rows, _ in eval_sets.values())
    clock = RunClock(total_steps, state.step, evaluation_steps(total_steps, steps_per_epoch, cfg.eval_steps,
                                                               state.step), n_eval)
    if resume_from is None and kind.generate is not None:  # causal LMs: where the held-out loss starts
        if out.main:
            _say(progress, f"lorakit train: evaluating the untrained model on {n_eval} held-out examples "
                           "(the loss before training)")
        began = time.perf_counter()
        before = evaluate(raw, eval_sets)
        clock.eval_seconds = time.perf_counter() - began
        out.log({"step": 0, "eval_before_training": before})
        _write_generations(kind, evaluate, raw, eval_sets, out, "generations_before.jsonl")
    try:
        out.open_reporters(cfg.report_to, cfg.to_dict())
        while state.step < total_steps and stop_reason is None:
            sampler.set_epoch(state.epoch)
            batches = sampler.batches()[state.step_in_epoch * cfg.grad_accum:]  # resume mid-epoch: skip what ran
            # its own generator: creating a DataLoader iterator draws a seed, which must not shift the global RNG
            shards = [distributed.shard(b, world, rank) for b in batches]  # this rank's rows of each global batch
            counts = [len(s) for s in shards]
            shards = [s or b[:1] for s, b in zip(shards, batches)]  # an empty shard: a stand-in row, weighted 0
            micro_batches = iter(DataLoader(train_set, batch_sampler=shards, collate_fn=collator,
                                            pin_memory=device.type == "cuda", generator=torch.Generator()))
            for start in range(0, len(batches), cfg.grad_accum):
                group = batches[start:start + cfg.grad_accum]  # index lists of this step's global micro-batches
                rows = sum(len(b) for b in group)  # over all ranks
                lr = optimizer.param_groups[0]["lr"]
                began = time.perf_counter()
                step_batches = [next(micro_batches) for _ in group]
                padded = sum(b["input_ids"].numel() for b in step_batches)  # this rank's tokens, padding included
                loss, grad_norm = optimizer_step(model, step_batches, rows, optimizer,
                                                 scheduler, cfg, device, precision,
                                                 counts[start:start + cfg.grad_accum] if world > 1 else None)
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    out.log({"step": state.step + 1, "event": "diverged", "loss": str(loss),
                             "grad_norm": str(grad_norm)})
                    raise TrainingDiverged(_divergence_message(loss, grad_norm, state.step + 1, out, cfg))
                seconds = time.perf_counter() - began
                state.step += 1
                state.step_in_epoch += 1
                state.examples_seen += rows
                state.train_seconds += seconds
                epoch_end = state.step_in_epoch == steps_per_epoch
                out.log({"step": state.step, "epoch": round(state.epoch + state.step_in_epoch / steps_per_epoch, 4),
                         "loss": loss, "lr": lr, "grad_norm": grad_norm, "examples_per_s": rows / seconds,
                         "padded_tokens": padded, "elapsed_s": round(state.train_seconds, 3)})
                if state.step >= total_steps and not sys.stderr.isatty():
                    progress.mininterval = math.inf  # a log: the finished bar is printed once, when it closes
                progress.update(1)
                note = clock.after_step(seconds, rows)
                if note and out.main:
                    _say(progress, note)
                progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                     ex_s=f"{state.examples_seen / state.train_seconds:.0f}", refresh=False)
                if epoch_end:
                    state.epoch += 1
                    state.step_in_epoch = 0
                last = state.step >= total_steps
                evaluate_now = epoch_end or last or (cfg.eval_steps and state.step % cfg.eval_steps == 0)
                if evaluate_now:
                    stop_reason = _evaluate_and_track(raw, evaluate, eval_sets, spec, state, out, cfg, progress)
                    state.stopped_early = stop_reason  # in the checkpoint: a resumed run stays stopped
                    if on_evaluate is not None:
                        on_evaluate(state)
                saved = (evaluate_now and not cfg.save_steps) or (cfg.save_steps and state.step % cfg.save_steps == 0) \
                    or epoch_end or last or stop_reason or stop.received
                if saved:
                    checkpoint = out.save_checkpoint(raw, optimizer, scheduler, state, cfg.to_dict(),
                                                     cfg.save_total_limit)
                if last or stop_reason:
                    break
                if stop.received and world == 1:  # SIGTERM / Ctrl-C: this step is done and saved
                    raise RunInterrupted(stop.received, state.step, str(output), str(checkpoint))
        progress.close()
        if stop_reason:
            print(f"lorakit train: {stop_reason}", file=sys.stderr)

        best = output / CHECKPOINTS / BEST
        distributed.barrier()  # rank 0 has written checkpoints/best
        if not distributed.broadcast_object((best / "state.json").is_file()):
            # resumed at the very end of a run whose best lives elsewhere
            _evaluate_and_track(raw, evaluate, eval_sets, spec, state, out, cfg, progress)
            distributed.barrier()
        load_trainable(raw, best)
        _write_generations(kind, evaluate, raw, eval_sets, out, "generations_after.jsonl")
        artifact = distributed.broadcast_object(str(save_artifact(raw, tokenizer, cfg, spec, output))
                                                if out.main else None)
        metrics = _final_metrics(cfg, spec, state, best, report, device, precision, total_steps, steps_per_epoch,
                                 artifact, stop_reason)
        metrics["world_size"] = world
        metrics["global_batch_size"] = cfg.batch_size * world * cfg.grad_accum
        if before is not None:
            metrics["eval_before_training"] = before
        out.write_json("metrics.json", metrics)
        distributed.barrier()  # every file is written before any rank returns
        return metrics
    finally:
        progress.close()
        out.close()


def _evaluate_and_track(model, evaluate: Evaluator, eval_sets, spec: TaskSpec, state: TrainState, out: RunDir,
                        cfg: TrainConfig, progress) -> str | None:
    """Evaluate, keep the best weights, count patience. Returns a reason to stop early, or None."""
    began = time.perf_counter()
    results = evaluate(model, eval_sets)
    seconds = time.perf_counter() - began
    main_split = next(iter(results))
    value = results[main_split][spec.main_metric]
    state.last_metric = value
    improved = state.best_metric is None or value > state.best_metric
    if improved:
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        out.save_best(model, state, results)
    else:
        state.evals_without_improvement += 1
    out.log({"step": state.step, "epoch": state.epoch, "eval": results, "eval_seconds": round(seconds, 3)})
    shown = ", ".join(f"{split} {spec.main_metric} {r[spec.main_metric]:.4f} loss {r['loss']:.4f}"
                      for split, r in results.items())
    if out.main:
        _say(progress, f"step {state.step}: {shown}{'  (best)' if improved else ''}")
    if cfg.early_stopping_patience and state.evals_without_improvement >= cfg.early_stopping_patience:
        return (f"early stopping at step {state.step}: no better {spec.main_metric} in "
                f"{state.evals_without_improvement} evaluations "
                f"(best {state.best_metric:.4f} at step {state.best_step})")
    return None


def _say(progress, line: str) -> None:
    """A line above the progress bar on a terminal; a plain line in a log (tqdm.write would print the bar again)."""
    if sys.stderr.isatty():
        progress.write(line)
    else:
        print(line, flush=True)


def _write_generations(kind, evaluate: Evaluator, model: nn.Module, eval_sets, out: RunDir, name: str) -> None:
    """Causal LMs: greedy responses to a few evaluation prompts, one JSON object a line (rank 0 only)."""
    if kind.generate is None or not out.main or not eval_sets:
        return
    rows, _ = next(iter(eval_sets.values()))
    samples = kind.generate(evaluate, model, rows)
    out.write_text(name, "".join(json.dumps(sample) + "\n" for sample in samples))


def _still_stopped(state: TrainState, cfg: TrainConfig) -> str | None:
    """A resumed run that had stopped early stays stopped, unless the patience was raised since."""
    if state.stopped_early and cfg.early_stopping_patience and \
            state.evals_without_improvement >= cfg.early_stopping_patience:
        return state.stopped_early
    state.stopped_early = None
    return None


def _resume_path(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume != "auto":
        return Path(cfg.resume)
    found = sorted((Path(cfg.output) / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None  # "auto" with nothing to resume starts fresh


def _adopt_best(checkpoint: Path, output: Path) -> None:
    """Resuming into another output directory: bring the best weights so far along."""
    source, target = checkpoint.parent / BEST, output / CHECKPOINTS / BEST
    if source.is_dir() and source.resolve() != target.resolve() and not target.exists():
        with atomic_dir(target) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)


def _note_changed_settings(checkpoint: Path, cfg: TrainConfig) -> None:
    """Resuming with other settings is allowed (e.g. more epochs, a lower lr after a divergence); say which.
    Settings that change the trained tensors' shapes are not: a UserError names them."""
    if not (checkpoint / "state.json").is_file():
        raise FileNotFoundError(f"--resume {checkpoint} is not a checkpoint directory (no state.json); "
                                "pass one of <output>/checkpoints/step-* or --resume auto")
    saved = read_json(checkpoint / "state.json", "checkpoint state")["config"]
    given = cfg.to_dict()
    shaped = [k for k in _SHAPING if k in saved and saved[k] != given[k]]
    if shaped:
        shown = ", ".join(f"--{k.replace('_', '-')} {given[k]!r} (the checkpoint's: {saved[k]!r})" for k in shaped)
        raise UserError(f"cannot resume {checkpoint} with {shown}: these settings change what the run trains; "
                        "resume with the checkpoint's values, or start a new --output")
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in given.items()
               if k not in ("output", "resume") and saved.get(k) != v]
    if changed:
        print(f"lorakit train: note: resuming with settings that differ from the checkpoint's: {', '.join(changed)}")


_SHAPING = ("method", "lora_r", "target_modules")  # settings the checkpoint's tensor names and shapes depend on


def _divergence_message(loss: float, grad_norm: float, step: int, out: RunDir, cfg: TrainConfig) -> str:
    what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
    kept = out.checkpoints()
    where = (f"the last good checkpoint is {kept[-1]}; continue from it with --resume {kept[-1]} and a lower --lr"
             if kept else "no checkpoint was written before it; rerun with a lower --lr")
    return f"training stopped at step {step}: the {what} (lr {cfg.lr:g}); {where}"


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process max resident set size"


def _final_metrics(cfg, spec, state, best, report, device, precision, total_steps, steps_per_epoch, artifact,
                   stop_reason) -> dict:
    best_state = json.loads((best / "state.json").read_text())
    peak, peak_kind = _peak_memory_mb(device)
    return {
        "task": spec.name, "method": cfg.method, "model": cfg.model,
        "eval": best_state["metrics"], "main_metric": spec.main_metric,
        "best_metric": state.best_metric, "best_step": state.best_step,
        "steps": state.step, "planned_steps": total_steps, "epochs": round(state.step / steps_per_epoch, 4),
        "stopped_early": stop_reason,
        "trainable_params": report.trainable, "total_params": report.total,
        "trainable_percent": round(report.percent, 4),
        "train_seconds": round(state.train_seconds, 3), "examples_seen": state.examples_seen,
        "train_examples_per_s": round(state.examples_seen / max(state.train_seconds, 1e-9), 2),
        "peak_memory_mb": round(peak, 1), "peak_memory_kind": peak_kind,
        "device": str(device), "precision": precision, "artifact": str(artifact), "versions": versions(),
    }


def _print_settings(cfg, device, precision, n_train, n_eval, total_steps, warmup, params, resume_from, step,
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
