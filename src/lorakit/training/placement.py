"""The model around the training loop: the seeds, its device and data-parallel wrapper (DDP or FSDP2), and
gradient checkpointing."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from lorakit.training import distributed
from lorakit.training.fsdp import shard_model


def set_seed(seed: int) -> None:
    """Python, NumPy and torch (CPU and every CUDA device). Data order has its own seeded generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def wrap_model(model: nn.Module, device: torch.device, fsdp: bool = False) -> nn.Module:
    """The single place the model is placed and wrapped under a data-parallel launch: DistributedDataParallel, or
    with fsdp FSDP2's fully_shard per transformer block (fsdp.shard_model, in place).

    DDP: only parameters that require grad are synchronized (the LoRA weights and the head); frozen and quantized
    weights are never communicated. DDP broadcasts rank 0's parameters and buffers at construction.
    FSDP: every rank built the same seeded model; each keeps 1/world of every parameter (frozen ones included) and
    all-gathers a block's weights around its forward and backward; the LoRA gradients are reduce-scattered.
    """
    model = model.to(device)
    if distributed.world_size() > 1 and fsdp:
        return shard_model(model)
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
    # activation_checkpointing_enable where transformers has it, since there the other name warns
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    model.enable_input_require_grads()
