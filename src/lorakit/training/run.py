"""The training loop: plain PyTorch, top to bottom.

    from lorakit.training.run import train
    from lorakit.training.config import TrainConfig
    metrics = train(TrainConfig(task="sst2", data_dir="../shared/data/sst2", method="lora", epochs=1))

`train` runs the recipe `Run.run()`, in order:
  1. seeds, device, precision; the data (load_splits, tokenized by the task kind), batched by length and padded
     per batch (PaddingCollator; --pad-to-max-length pads to max_length instead);
  2. the model for the method (methods.setup_method), gradient checkpointing, the cheap CPU dropout
     (layers/dropout.py; --torch-dropout keeps torch's), and `wrap_model`: the one place
     the model is wrapped for the device and, under torchrun / accelerate launch, in DistributedDataParallel
     (distributed.py: every rank builds the same seeded global batches of batch_size x world rows and trains
     on its shard; evaluation is sharded and gathered; only rank 0 writes), or with --fsdp sharded by FSDP2
     (fsdp.py: each rank holds 1/world of every weight; checkpoints and the adapter gathered to rank 0);
  3. AdamW with LoRA+ parameter groups, linear warmup then linear decay (step.py);
  4. the loop over optimizer steps: each step (step.optimizer_step) accumulates grad_accum micro-batches,
     their losses weighted by rows (the gradient equals that of one big batch), then clips and steps. One JSON
     line per step; evaluation every eval_steps and at each epoch end; the best weights by the task's main
     metric kept in checkpoints/best; early stopping; a resumable step checkpoint at every evaluation (or every
     save_steps); a NaN or infinite loss stops the run with TrainingDiverged, the last step checkpoint untouched;
  5. the best weights are loaded back and saved as the artifact (adapter/, weights/ or model/);
     metrics.json, config.yaml, versions.json and log.jsonl complete the output directory.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lorakit.io.atomic import recover
from lorakit.errors import RunInterrupted
from lorakit.layers.dropout import fast_dropout
from lorakit.params import parameter_report
from lorakit.tasks import CAUSAL_LM, LengthGroupedBatchSampler, PaddingCollator, get_task, load_splits, sequence_lengths
from lorakit.training import distributed
from lorakit.training.checkpoint import (BEST, CHECKPOINTS, RunDir, TrainState, check_reporters, load_checkpoint, load_trainable,
                         versions)
from lorakit.training.config import TrainConfig, eval_sample_cap, resolve_device, resolve_precision
from lorakit.training.estimate import RunClock, evaluation_steps, token_count
from lorakit.training.evaluation import Evaluator, kind_of
from lorakit.training.fsdp import gather_adapter, is_sharded, local_model_bytes
from lorakit.models.limits import check_max_length
from lorakit.training.methods import load_base, save_artifact, setup_method, uses_loftq
from lorakit.training.resume import adopt_best, note_changed_settings, resume_path, still_stopped
from lorakit.training.launch import is_main_process
from lorakit.training.runlock import RunLock, check_run_output, run_lock
from lorakit.training.signals import stop_requests
from lorakit.training.step import build_optimizer, linear_schedule, optimizer_step
from lorakit.training.model_card import write_model_card
from lorakit.training.placement import enable_gradient_checkpointing, set_seed, unwrap_model, wrap_model
from lorakit.training.summary import divergence_message, final_metrics, print_settings, say, write_generations


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite. The message names the last good checkpoint."""


def train(cfg: TrainConfig, on_evaluate: Callable[[TrainState], None] | None = None,
          lock: RunLock | None = None) -> dict:
    """Run one fine-tuning job (module docstring). Returns metrics.json's content.

    on_evaluate(state) is called after every evaluation (state.last_metric, best_metric, step); an exception it
    raises ends the run (a hyperparameter search prunes a trial so).
    lock: the caller's lock of cfg.output, held for the whole run (`lorakit train` takes it before importing
    torch); without it train holds the lock itself (one run per output directory, runlock.py).
    """
    check_reporters(cfg.report_to)
    if lock is None and is_main_process():  # `lorakit train` checked before taking its lock
        check_run_output(cfg.output, cfg.new_run)
    with run_lock(cfg.output, lock):
        set_seed(cfg.seed)
        device, started_group = distributed.setup(resolve_device(cfg.device))
        try:
            with stop_requests() as stop:
                return Run(cfg, device, on_evaluate, stop).run()
        finally:
            distributed.cleanup(started_group)


class Run:
    """One training run as a recipe: `run()` reads top to bottom (setup, the loop, evaluation, checkpoints, the
    finish); each stage is a method below. Under torchrun every rank runs the same recipe on its shard."""

    def __init__(self, cfg: TrainConfig, device: torch.device, on_evaluate, stop) -> None:
        self.cfg, self.device, self.on_evaluate, self.stop = cfg, device, on_evaluate, stop
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.precision = resolve_precision(cfg.precision, device)
        self.output = Path(cfg.output)
        self.before = None  # a causal LM's held-out metrics before training

    def run(self) -> dict:
        self.setup_data_and_model()
        self.setup_optimization()
        self.start_output()
        try:
            self.out.open_reporters(self.cfg.report_to, self.cfg.to_dict())
            stop_reason = self.loop()
            return self.finish(stop_reason)
        finally:
            self.progress.close()
            self.out.close()

    # --- setup ---------------------------------------------------------------------------------------------------

    def setup_data_and_model(self) -> None:
        """The data, the model for the method, the features, and the length-grouped sampler of global batches."""
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.cuda.reset_peak_memory_stats(self.device)
        data = load_splits(cfg.task, data_dir=cfg.data_dir, train_file=cfg.train_file, eval_file=cfg.eval_file,
                           text_columns=cfg.text_columns, label_column=cfg.label_column,
                           split_from_eval=cfg.split_from_eval, max_train_samples=cfg.max_train_samples,
                           max_eval_samples=eval_sample_cap(cfg.max_eval_samples,
                                                            get_task(cfg.task).kind == CAUSAL_LM),
                           include_test=cfg.eval_test, seed=cfg.seed)
        self.spec, self.kind = data.spec, kind_of(data.spec)
        quantize_while_loading = cfg.method == "qlora" and not uses_loftq(cfg)  # LoftQ quantizes W0 - s·B·A
        model, self.tokenizer = load_base(cfg.model, self.spec, new_head=True,
                                          quant_config=cfg.quant_config() if quantize_while_loading else None)
        check_max_length(model, cfg.max_length)
        setup_method(model, cfg)
        self.report = parameter_report(model)
        self.train_set = self.kind.train_features(data.train, self.tokenizer, cfg.max_length)
        self.eval_sets = {name: (rows, self.kind.eval_features(rows, self.tokenizer, cfg.max_length))
                          for name, rows in data.eval.items()}
        self.collator = PaddingCollator.from_tokenizer(self.tokenizer, pad_to_max_length=cfg.pad_to_max_length,
                                                       max_length=cfg.max_length)
        # global batches of batch_size * world rows, the same on every rank; each rank trains on its shard of each
        self.sampler = LengthGroupedBatchSampler(sequence_lengths(self.train_set), cfg.batch_size * self.world,
                                                 shuffle=True, seed=cfg.seed, group_by_length=cfg.group_by_length)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.grad_accum)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.warmup = (cfg.warmup_steps if cfg.warmup_steps is not None
                       else math.ceil(cfg.warmup_ratio * self.total_steps))
        self.model = model

    def setup_optimization(self) -> None:
        """Checkpointing, the cheap dropout, the (DDP-)wrapped model, AdamW with its schedule, the evaluator."""
        cfg = self.cfg
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        if not cfg.torch_dropout:
            fast_dropout(self.model)  # the model's dropout layers cost more than LoRA's work on CPU (layers/dropout.py)
        self.model = wrap_model(self.model, self.device, cfg.fsdp)
        self.raw = unwrap_model(self.model)  # saved, loaded and evaluated without the DDP wrapper
        self.sharded = is_sharded(self.raw)  # FSDP: saving gathers, a collective every rank joins
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           linear_schedule(self.warmup, self.total_steps))
        self.evaluate = Evaluator(self.spec, self.kind, self.tokenizer, self.collator, cfg.eval_batch_size,
                                  cfg.max_length, self.device, self.precision)

    def start_output(self) -> None:
        """Recovery after a kill, the resume (if any), the output directory, the settings printed, the progress
        bar, and a causal LM's evaluation before training."""
        cfg, output = self.cfg, self.output
        if distributed.is_main():
            for line in recover(output) + recover(output / CHECKPOINTS):  # what a kill interrupted (atomic.py)
                print(f"lorakit train: note: {line} (left by an interrupted run)", file=sys.stderr)
        self.resume_from = resume_path(cfg)
        self.state = self.resume() if self.resume_from is not None else self.fresh_state()
        out = self.out = RunDir(output, resume_step=self.state.step if self.resume_from is not None else None)
        out.write_text("config.yaml", cfg.to_yaml())
        out.write_json("versions.json", versions())
        if out.main:
            print_settings(cfg, self.device, self.precision, len(self.train_set),
                           {k: len(rows) for k, (rows, _) in self.eval_sets.items()}, self.total_steps, self.warmup,
                           self.report.summary(), self.resume_from, self.state.step, self.world)
        self.progress = tqdm(total=self.total_steps, initial=self.state.step, desc="train", unit="step",
                             dynamic_ncols=True, disable=not out.main,
                             mininterval=0.2 if sys.stderr.isatty() else 30)  # log files: sparse
        self.stop_reason = still_stopped(self.state, cfg)
        n_eval = sum(len(rows) for rows, _ in self.eval_sets.values())
        tokens = [token_count(features) for _, features in self.eval_sets.values()]  # this rank: 1/world of them
        self.clock = RunClock(self.total_steps, self.state.step,
                              evaluation_steps(self.total_steps, self.steps_per_epoch, cfg.eval_steps,
                                               self.state.step), n_eval,
                              eval_tokens=None if None in tokens else sum(tokens) // self.world)
        if self.resume_from is None and self.kind.generate is not None:
            self.evaluate_before_training(n_eval)

    def resume(self) -> TrainState:
        note_changed_settings(self.resume_from, self.cfg)
        state = load_checkpoint(self.resume_from, self.raw, self.optimizer, self.scheduler)
        if distributed.is_main():
            adopt_best(self.resume_from, self.output)
        distributed.barrier()
        return state

    def fresh_state(self) -> TrainState:
        if list((self.output / CHECKPOINTS).glob("step-*")):
            raise ValueError(f"--output {self.output} holds checkpoints of an earlier run; continue it with --resume "
                             "auto, or choose another --output (or delete that one)")
        return TrainState()

    def evaluate_before_training(self, n_eval: int) -> None:
        """Causal LMs: where the held-out loss starts."""
        if self.out.main:
            say(self.progress, f"lorakit train: evaluating the untrained model on {n_eval} held-out examples "
                               "(the loss before training)")
        began = time.perf_counter()
        self.before = self.evaluate(self.raw, self.eval_sets)
        self.clock.eval_seconds = time.perf_counter() - began
        self.out.log({"step": 0, "eval_before_training": self.before})
        write_generations(self.kind, self.evaluate, self.raw, self.eval_sets, self.out, "generations_before.jsonl")

    # --- the loop --------------------------------------------------------------------------------------------------

    def loop(self) -> str | None:
        """Epochs of optimizer steps until total_steps, an early stop, or a stop request. Returns the stop reason."""
        cfg, state = self.cfg, self.state
        stop_reason = self.stop_reason
        while state.step < self.total_steps and stop_reason is None:
            self.sampler.set_epoch(state.epoch)
            batches = self.sampler.batches()[state.step_in_epoch * cfg.grad_accum:]  # resume mid-epoch: skip what ran
            counts, micro_batches = self.micro_batches(batches)
            for start in range(0, len(batches), cfg.grad_accum):
                group = batches[start:start + cfg.grad_accum]  # index lists of this step's global micro-batches
                epoch_end = self.train_step(group, micro_batches, counts[start:start + cfg.grad_accum])
                last = state.step >= self.total_steps
                evaluate_now = epoch_end or last or (cfg.eval_steps and state.step % cfg.eval_steps == 0)
                if evaluate_now:
                    stop_reason = self.evaluate_and_track()
                    state.stopped_early = stop_reason  # in the checkpoint: a resumed run stays stopped
                    if self.on_evaluate is not None:
                        self.on_evaluate(state)
                self.checkpoint_if_due(evaluate_now, epoch_end, last or bool(stop_reason))
                if last or stop_reason:
                    break
        self.progress.close()
        if stop_reason:
            print(f"lorakit train: {stop_reason}", file=sys.stderr)
        return stop_reason

    def micro_batches(self, batches: list[list[int]]):
        """This rank's rows of each global micro-batch, and an iterator over them as padded tensors."""
        shards = [distributed.shard(b, self.world, self.rank) for b in batches]
        counts = [len(s) for s in shards]
        shards = [s or b[:1] for s, b in zip(shards, batches)]  # an empty shard: a stand-in row, weighted 0
        # its own generator: creating a DataLoader iterator draws a seed, which must not shift the global RNG
        loader = DataLoader(self.train_set, batch_sampler=shards, collate_fn=self.collator,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator())
        return counts, iter(loader)

    def train_step(self, group: list[list[int]], micro_batches, counts: list[int]) -> bool:
        """One optimizer step over the micro-batches of `group`; logs it. Returns whether it ended the epoch."""
        cfg, state, out = self.cfg, self.state, self.out
        rows = sum(len(b) for b in group)  # over all ranks
        lr = self.optimizer.param_groups[0]["lr"]
        began = time.perf_counter()
        step_batches = [next(micro_batches) for _ in group]
        padded = sum(b["input_ids"].numel() for b in step_batches)  # this rank's tokens, padding included
        loss, grad_norm = optimizer_step(self.model, step_batches, rows, self.optimizer, self.scheduler, cfg,
                                         self.device, self.precision, counts if self.world > 1 else None)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            out.log({"step": state.step + 1, "event": "diverged", "loss": str(loss), "grad_norm": str(grad_norm)})
            raise TrainingDiverged(divergence_message(loss, grad_norm, state.step + 1, out, cfg))
        seconds = time.perf_counter() - began
        state.step += 1
        state.step_in_epoch += 1
        state.examples_seen += rows
        state.train_seconds += seconds
        epoch_end = state.step_in_epoch == self.steps_per_epoch
        out.log({"step": state.step, "epoch": round(state.epoch + state.step_in_epoch / self.steps_per_epoch, 4),
                 "loss": loss, "lr": lr, "grad_norm": grad_norm, "examples_per_s": rows / seconds,
                 "padded_tokens": padded, "elapsed_s": round(state.train_seconds, 3)})
        self.show_progress(loss, lr, seconds, rows, padded)
        if epoch_end:
            state.epoch += 1
            state.step_in_epoch = 0
        return epoch_end

    def show_progress(self, loss: float, lr: float, seconds: float, rows: int, padded: int) -> None:
        progress, state = self.progress, self.state
        if state.step >= self.total_steps and not sys.stderr.isatty():
            progress.mininterval = math.inf  # a log: the finished bar is printed once, when it closes
        progress.update(1)
        note = self.clock.after_step(seconds, rows, padded)
        if note and self.out.main:
            say(progress, note)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                             ex_s=f"{state.examples_seen / state.train_seconds:.0f}", refresh=False)

    # --- evaluation and checkpoints -----------------------------------------------------------------------------

    def evaluate_and_track(self) -> str | None:
        """Evaluate, keep the best weights, count patience. Returns a reason to stop early, or None."""
        state, spec, out, cfg = self.state, self.spec, self.out, self.cfg
        began = time.perf_counter()
        results = self.evaluate(self.raw, self.eval_sets)
        seconds = time.perf_counter() - began
        value = results[next(iter(results))][spec.main_metric]
        state.last_metric = value
        improved = state.best_metric is None or value > state.best_metric
        if improved:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
            out.save_best(self.raw, state, results)
        else:
            state.evals_without_improvement += 1
        out.log({"step": state.step, "epoch": state.epoch, "eval": results, "eval_seconds": round(seconds, 3)})
        shown = ", ".join(f"{split} {spec.main_metric} {r[spec.main_metric]:.4f} loss {r['loss']:.4f}"
                          for split, r in results.items())
        if out.main:
            say(self.progress, f"step {state.step}: {shown}{'  (best)' if improved else ''}")
        if cfg.early_stopping_patience and state.evals_without_improvement >= cfg.early_stopping_patience:
            return (f"early stopping at step {state.step}: no better {spec.main_metric} in "
                    f"{state.evals_without_improvement} evaluations "
                    f"(best {state.best_metric:.4f} at step {state.best_step})")
        return None

    def checkpoint_if_due(self, evaluated: bool, epoch_end: bool, finishing: bool) -> None:
        """A resumable step checkpoint at every evaluation (or every save_steps), at epoch ends, the last step, an
        early stop and a stop request; then a SIGTERM / Ctrl-C ends the run (this step is done and saved)."""
        cfg, state, stop = self.cfg, self.state, self.stop
        due = (evaluated and not cfg.save_steps) or (cfg.save_steps and state.step % cfg.save_steps == 0)
        if not (due or epoch_end or finishing or stop.received):
            return
        checkpoint = self.out.save_checkpoint(self.raw, self.optimizer, self.scheduler, state, cfg.to_dict(),
                                              cfg.save_total_limit)
        if stop.received and self.world == 1 and not finishing:
            raise RunInterrupted(stop.received, state.step, str(self.output), str(checkpoint))

    # --- the finish -----------------------------------------------------------------------------------------------

    def finish(self, stop_reason: str | None) -> dict:
        """The best weights back, the artifact saved, metrics.json written (every rank returns the metrics)."""
        cfg, state, out = self.cfg, self.state, self.out
        best = self.output / CHECKPOINTS / BEST
        distributed.barrier()  # rank 0 has written checkpoints/best
        if not distributed.broadcast_object((best / "state.json").is_file()):
            self.evaluate_and_track()  # resumed at the very end of a run whose best lives elsewhere
            distributed.barrier()
        load_trainable(self.raw, best)
        write_generations(self.kind, self.evaluate, self.raw, self.eval_sets, out, "generations_after.jsonl")
        adapter = gather_adapter(self.raw) if self.sharded else None  # FSDP: full tensors, on every rank
        artifact = distributed.broadcast_object(str(save_artifact(self.raw, self.tokenizer, cfg, self.spec,
                                                                  self.output, adapter)) if out.main else None)
        metrics = final_metrics(cfg, self.spec, state, best, self.report, self.device, self.precision,
                                self.total_steps, self.steps_per_epoch, artifact, stop_reason)
        metrics["world_size"] = self.world
        metrics["global_batch_size"] = cfg.batch_size * self.world * cfg.grad_accum
        metrics["model_bytes_per_process"] = local_model_bytes(self.raw)  # FSDP: rank 0's shards, ~1/world
        if self.before is not None:
            metrics["eval_before_training"] = self.before
        out.write_json("metrics.json", metrics)
        write_model_card(artifact, cfg, metrics, main=out.main)  # adapter/README.md
        distributed.barrier()  # every file is written before any rank returns
        return metrics
