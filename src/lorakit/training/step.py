"""One optimizer step of the training loop, and what it steps: the loss, gradient accumulation, AdamW, the schedule.

    optimizer = build_optimizer(model, cfg)   # AdamW; LoRA+: the B matrices at lr * loraplus_ratio
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, total_steps))
    loss, grad_norm = optimizer_step(model, micro_batches, rows, optimizer, scheduler, cfg, device, precision)

A step accumulates its micro-batches' gradients, each loss weighted by its share of the step's rows (or labelled
tokens), so the gradient is that of one big batch, also data-parallel; then it clips and steps, unless the loss or
the gradient norm is NaN or infinite.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from lorakit.training import distributed
from lorakit.training.fsdp import full_tensor, is_sharded, no_gradient_sync
from lorakit.tasks.batching import LABEL_PAD_ID
from lorakit.training.config import TrainConfig, autocast, to_device


def training_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss of one micro-batch, a scalar averaged over its examples (transformers heads compute it)."""
    return model(**batch).loss


def loss_weight(batch: dict[str, torch.Tensor]) -> int:
    """What a micro-batch's mean loss averages over: its rows, or for token labels (B, T) (causal LMs, whose
    transformers loss is the mean over the labelled tokens after the one-token shift) its labelled tokens."""
    labels = batch.get("labels")
    if labels is not None and labels.ndim == 2:
        return int((labels[:, 1:] != LABEL_PAD_ID).sum())
    return len(batch["input_ids"])


def accumulate_gradients(model: nn.Module, micro_batches, rows: int, device: torch.device, precision: str,
                         counts: list[int] | None = None) -> float:
    """Forward and backward over one step's micro-batches; returns the mean loss over their `rows` examples.

    Each micro-batch's mean loss is weighted by its share of the step's rows (causal LMs: of its labelled tokens,
    `loss_weight`), so the summed gradient is that of one batch of all rows. A non-finite micro-batch loss is
    returned at once, before its backward.

    Data-parallel (the model a DistributedDataParallel or FSDP-sharded, world W > 1): counts[i] is this rank's
    number of rows in micro-batch i (0: a stand-in row that only keeps the collectives in step, weighted 0); the
    weights are summed over all ranks (one all-reduce), and as DDP and FSDP average the gradients over ranks, each
    share is scaled by W. The returned loss is the mean over all ranks' rows (tokens), the same on every rank.
    Gradients are synchronized once per step: the micro-steps before the last run without sync (`gradient_sync`).
    Every rank runs every backward (a NaN is only returned after the loss all-reduce).
    """
    data_parallel = isinstance(model, nn.parallel.DistributedDataParallel) or is_sharded(model)
    world = distributed.world_size() if data_parallel else 1
    micro_batches = list(micro_batches)  # dicts of (B, T) tensors, on the CPU until their turn
    weights = [loss_weight(b) if counts is None or counts[i] else 0 for i, b in enumerate(micro_batches)]
    weight_total = sum(weights)
    if world > 1:
        weight_total = distributed.sum_across(float(weight_total))
    weight_total = max(weight_total, 1)
    total = 0.0
    for i, batch in enumerate(micro_batches):
        batch = to_device(batch, device)
        last = i == len(micro_batches) - 1
        with gradient_sync(model, world > 1 and not last):
            with autocast(device, precision):
                loss = training_loss(model, batch)
            value = loss.item()
            if world == 1 and not math.isfinite(value):
                return value
            share = weights[i] * world / weight_total
            (loss * share).backward()
        total += value * share if weights[i] else 0.0
    return distributed.sum_across(total) / world if world > 1 else total


def gradient_sync(model: nn.Module, skip: bool):
    """The context of one micro-step's backward: without gradient synchronization when `skip` (DDP's no_sync,
    FSDP2's set_requires_gradient_sync(False)), else as usual."""
    if not skip:
        return contextlib.nullcontext()
    return no_gradient_sync(model) if is_sharded(model) else model.no_sync()


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. LoRA+: the B matrices learn at lr * loraplus_ratio.

    Weight decay applies to matrices only (never to biases and LayerNorm weights).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_b = bool(cfg.loraplus_ratio) and (".lora_B." in name or name.endswith("lora_embedding_B"))
        groups.setdefault((is_b, param.ndim >= 2), []).append(param)
    if not groups:
        raise ValueError(f"method {cfg.method} left no trainable parameter in this model")
    param_groups = [
        {"params": params, "name": ("lora_B" if is_b else "main") + ("" if decay else "_no_decay"),
         "lr": cfg.lr * (cfg.loraplus_ratio if is_b else 1.0), "weight_decay": cfg.weight_decay if decay else 0.0}
        for (is_b, decay), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


def linear_schedule(warmup: int, total: int):
    """The lr factor of 0-based step s: (s+1)/(warmup+1) rising, then (total-s)/(total-warmup) falling.

    No step has lr 0: the first warmup step already learns, and the last step still does.
    """
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def optimizer_step(model: nn.Module, micro_batches, rows: int, optimizer, scheduler, cfg: TrainConfig,
                   device: torch.device, precision: str, counts: list[int] | None = None) -> tuple[float, float]:
    """One optimizer step over a group of micro-batches: (mean loss, gradient norm before clipping).

    A NaN or infinite loss or gradient norm is returned without stepping (the weights stay as they were).
    Data-parallel: the loss is all-reduced and the gradients are identical on every rank, so every rank decides
    alike.
    """
    loss = accumulate_gradients(model, micro_batches, rows, device, precision, counts)
    if not math.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return loss, math.nan
    trainable = [p for p in model.parameters() if p.requires_grad]
    # FSDP: a DTensor over the shards' norms, made whole
    grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm or math.inf)))
    if math.isfinite(grad_norm):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm
