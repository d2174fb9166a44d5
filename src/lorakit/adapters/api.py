"""Many adapters on one base model: add, switch, sum, delete, and a different adapter per batch row.

    add_lora(model, cfg_a, name="sst2"); load_adapter(model, "imdb_adapter", name="imdb")
    set_adapter(model, "imdb")                      # that adapter alone (the first added stays active until then)
    set_adapter(model, ["sst2", "imdb"])            # both, their updates summed
    with mixed_batch(model, ["sst2", None, "imdb"]):  # row i computes with adapter i (None: the base model)
        logits = model(**batch).logits              # one batched forward (layers/mixed.py), generate() alike
    delete_adapter(model, "sst2")

Every LoRA layer keeps the adapter in use in its own fields and the others in a bank (layers/bank.py), so a model
with one adapter computes on the one-adapter path. The model records its adapters in one AdapterState
(config.py, `adapter_state(model)`): their resolved configs by name, in the order they were added, and the names in
use; its `config` is that of the first in use.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re

import torch
from torch import nn

from lorakit.inject.beside import set_submodule
from lorakit.config import LoraConfig
from lorakit.state import adapter_state
from lorakit.layers.saved_modules import HeadCopies
from lorakit.inject.inject import add_lora, forget_adapters
from lorakit.layers.lora import lora_layers


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters `model` holds, in the order they were added ([] without LoRA)."""
    state = adapter_state(model)
    return list(state.configs) if state is not None else []


def active_adapters(model: nn.Module) -> tuple[str, ...]:
    """The names of the adapters in use."""
    state = adapter_state(model)
    return state.active if state is not None else ()


def adapter_config(model: nn.Module, name: str) -> LoraConfig:
    """The resolved LoraConfig of adapter `name`."""
    _check_names(model, [name])
    return adapter_state(model).configs[name]


def _check_names(model: nn.Module, names: list[str]) -> None:
    held = adapter_names(model)
    unknown = [n for n in names if n not in held]
    if unknown:
        raise ValueError(f"no adapter named {unknown[0]!r} on this model; it holds {held}")


def _head_copies(model: nn.Module) -> list[HeadCopies]:
    return [m for m in model.modules() if isinstance(m, HeadCopies)]


def set_adapter(model: nn.Module, names: str | list[str] | tuple[str, ...]) -> nn.Module:
    """Compute (and train) with adapter `names`, or with several, their updates summed. Returns `model`."""
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise ValueError("set_adapter needs at least one adapter name; use disable_lora(model) for the base model")
    _check_names(model, list(names))
    layers = lora_layers(model)
    if any(layer.merged for _, layer in layers):
        raise ValueError("LoRA is merged into the base weights; unmerge_lora(model) before switching adapters")
    state = adapter_state(model)
    dora = [n for n in names if state.configs[n].use_dora]
    if len(names) > 1 and dora:
        raise ValueError(f"{dora[0]!r} is a DoRA adapter: DoRA adapters are used one at a time, not summed")
    for _, layer in layers:
        layer.activate(names)
    for heads in _head_copies(model):
        heads.set_active(names)
    state.active = names
    return model


def delete_adapter(model: nn.Module, name: str) -> nn.Module:
    """Remove adapter `name` (and its copies of the modules trained in full). Returns `model`.

    If it was in use, the others in use stay so; if none is left in use, the first remaining adapter is set (as
    PEFT does). Deleting the last adapter leaves the plain base model (like merge_and_unload without the merge)."""
    _check_names(model, [name])
    for path, layer in lora_layers(model):
        if layer.merged:
            raise ValueError("LoRA is merged into the base weights; unmerge_lora(model) before deleting an adapter")
        if name in layer.adapter_names() and layer.remove(name):
            set_submodule(model, path, layer.base_layer)
    state = adapter_state(model)
    del state.configs[name]
    if not state.configs:
        forget_adapters(model)
        return model
    remaining = tuple(n for n in state.active if n != name) or (next(iter(state.configs)),)
    for path, heads in [(p, m) for p, m in model.named_modules() if isinstance(m, HeadCopies)]:
        if name in heads.modules_to_save:
            del heads.modules_to_save[name]
        if len(state.configs) == 1 and len(heads.modules_to_save) <= 1:  # back to one adapter: unwrap
            set_submodule(model, path, heads.copy_for(next(iter(state.configs))))
    return set_adapter(model, remaining)


@contextlib.contextmanager
def using(model: nn.Module, name: str):
    """Within the block adapter `name` alone is in use (its tensors under PEFT's names); then the previous set."""
    previous = active_adapters(model)
    if previous == (name,):
        yield model
        return
    set_adapter(model, name)
    try:
        yield model
    finally:
        set_adapter(model, previous)


@contextlib.contextmanager
def mixed_batch(model: nn.Module, row_adapters: list[str | None]):
    """Within the block, batch row i computes with adapter row_adapters[i] (None: the base model), for any forward
    or generate() call on a batch of len(row_adapters) rows. Inference only; one batched forward (layers/mixed.py)."""
    row_adapters = list(row_adapters)
    _check_names(model, [n for n in dict.fromkeys(row_adapters) if n is not None])
    if model.training:
        raise ValueError("mixed_batch is for inference: call model.eval() first (rows of different adapters cannot "
                         "train together)")
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged for layer in layers):
        raise ValueError("LoRA is merged into the base weights; unmerge_lora(model) before a mixed batch")
    configs = adapter_state(model).configs
    dora = [n for n in dict.fromkeys(row_adapters) if n is not None and configs[n].use_dora]
    if dora:
        raise ValueError(f"{dora[0]!r} is a DoRA adapter: mixed batches take plain LoRA adapters only")
    heads = _head_copies(model)
    with torch.no_grad():
        for layer in layers:
            layer.rows = layer.ROW_PLAN(layer, row_adapters)
    for head in heads:
        head.row_names = row_adapters
    try:
        yield model
    finally:
        for layer in layers:
            layer.rows = None
        for head in heads:
            head.row_names = None


def add_adapter_weights(model: nn.Module, name: str, config: LoraConfig,
                        weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """Add adapter `name` whose A and B are given per LoRA layer path (the other layers get none): A (r, in) and
    B (out, r), the rank per path from A's shape; config gives alpha and the rest. Inactive until set. Returns `model`.
    add_weighted_adapter builds its combinations so."""
    ranks = {re.escape(path): a.shape[0] for path, (a, _) in weights.items() if a.shape[0] != config.r}  # regexes
    config = dataclasses.replace(config, target_modules=tuple(weights), rank_pattern=ranks, exclude_modules=None,
                                 layers_to_transform=None, init="kaiming")
    add_lora(model, config, name)
    with torch.no_grad():
        for path, (a, b) in weights.items():
            target_a, target_b, _ = model.get_submodule(path).low_rank(name)
            target_a.copy_(a)
            target_b.copy_(b)
    return model
