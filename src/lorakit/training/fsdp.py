"""FSDP2 for LoRA and QLoRA: the frozen base sharded across ranks, one unit per transformer block.

    dist.init_process_group("gloo")                     # or nccl; torchrun sets the environment
    model = add_lora(quantize_model(model, qcfg), lcfg)  # the same model on every rank
    shard_model(model)                                  # fully_shard per block, then the root
    ... forward / backward / optimizer.step() as usual (parameters are DTensors, gradients reduce-scattered)
    save_gathered_adapter(model, "out/adapter")         # every rank calls; rank 0 writes PEFT's format

torch.distributed.fsdp.fully_shard (FSDP2) shards each parameter on dim 0 across the ranks and all-gathers a unit's
parameters just before its forward (and again before its backward), freeing them after. Per parameter, so frozen
base weights and trainable LoRA weights share a block's unit; only the LoRA gradients are reduce-scattered. A
QuantLinear keeps its codes as buffers, which FSDP would replicate on every rank; codes_as_parameters turns them
into frozen parameters (uint8 packed codes, fp32 constants, requires_grad=False) so they shard like any weight.
The 0-dimensional double-quantization offset stays a buffer (fully_shard rejects scalar parameters; 4 bytes).
Tested on CPU with gloo (tests/test_training_fsdp.py): 2 ranks follow the single-process loss curve with the same global
batch and hold about half of the parameter bytes each.

`torchrun --nproc-per-node N -m lorakit train ... --fsdp` runs the training loop so (placement.wrap_model): the loop's
collectives stay in step on every rank (gradient accumulation without sync, evaluation with as many forward passes
on each rank, generation with synced_gpus), and checkpoints and the adapter are gathered into full tensors on every
rank (full_tensor, a collective) and written by rank 0; loading a checkpoint back keeps each rank's shard
(shard_like).
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from lorakit.io.peft_format import adapter_state_dict, save_adapter
from lorakit.quant.linear import QuantLinear


def codes_as_parameters(model: nn.Module) -> nn.Module:
    """Re-register every QuantLinear's non-scalar code / constant buffers as frozen parameters, in place."""
    for module in model.modules():
        if isinstance(module, QuantLinear):
            for name in [n for n, t in module._buffers.items() if t is not None and t.dim() > 0]:
                tensor = module._buffers.pop(name)
                module.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
    return model


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules of the classes transformers lists in `_no_split_modules`
    (LlamaDecoderLayer, BertLayer, GPT2Block, ...)."""
    classes = set(model._no_split_modules or ())
    blocks = [m for m in model.modules() if type(m).__name__ in classes]
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no transformer block class (_no_split_modules); "
                         "FSDP wraps per block")
    return blocks


def shard_model(model: nn.Module) -> nn.Module:
    """fully_shard each transformer block, then the root (embeddings, final norm, head). In place; returns it."""
    codes_as_parameters(model)
    for block in transformer_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether shard_model (fully_shard) was applied to this model."""
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module):
    """Gradients accumulate unsharded, without the reduce-scatter, inside the block (the micro-batches of a step
    before its last: FSDP2's counterpart of DDP's no_sync)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (all-gathered: every rank calls); any other tensor unchanged."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`tensor` (a full value, the same on every rank) laid out as `like`: this rank's shard when `like` is a DTensor
    of the same shape (no communication), else unchanged."""
    if not isinstance(like, DTensor) or isinstance(tensor, DTensor) or tensor.shape != like.shape:
        return tensor
    return distribute_tensor(tensor.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def local_parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters this rank holds: its shards of DTensors, whole plain tensors."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.numel() * local.element_size()
    return total


def local_model_bytes(model: nn.Module) -> int:
    """Bytes of the model this rank holds: local_parameter_bytes and every buffer (a QuantLinear's codes are buffers
    until codes_as_parameters)."""
    return local_parameter_bytes(model) + sum(b.numel() * b.element_size() for b in model.buffers())


def gather_adapter(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (adapter.adapter_state_dict's keys) as full tensors. A collective: every rank calls."""
    return {k: full_tensor(v) for k, v in adapter_state_dict(model).items()}


def save_gathered_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Gather the adapter on every rank, write it in PEFT's format on rank 0 (save_adapter), wait for it."""
    state = gather_adapter(model)
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_adapter(model, path, state=state)
    if dist.is_initialized():
        dist.barrier()
