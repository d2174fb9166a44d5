"""Combine adapters of one model into a new adapter: PEFT's `add_weighted_adapter`, same names and maths.

    add_lora(model, cfg_a, name="sst2"); load_adapter(model, "imdb_adapter", name="imdb")
    add_weighted_adapter(model, ["sst2", "imdb"], [0.7, 0.3], "both", combination_type="ties", density=0.5)
    set_adapter(model, "both")

The tensor maths (cat, the sqrt-split merges of A and B, the SVD of the merged update, TIES / DARE) is in
combine_math.py with its equations; here are the model-level rules, PEFT's unless said:
  * new rank r': linear / ties / dare_* / magnitude_prune: the adapters' common rank (equal ranks needed); cat: the
    sum of their ranks; svd types: `svd_rank`, else the largest rank. A rank is max(r, rank_pattern's values).
  * the new adapter has alpha = r' and rank r' in every layer (narrower layers padded with zeros), so its scaling
    is 1 and its update is B'·A'. Unlike PEFT, use_rslora is off in it: PEFT keeps the first adapter's rsLoRA
    flag, which multiplies the combined update by sqrt(r') (alpha / sqrt(r) = sqrt(r')).
  * it adapts the union of the adapters' layers (its config lists them: PEFT's union of target_modules, exactly);
    a layer combines the adapters present there, with their weights.
  * one adapter: any type is "linear" (w·s·B·A, the weight split as sqrt on A and B).
  * modules trained in full (task heads): the new adapter copies the one adapter's copy that trains the module.
    Where several of the combined adapters train the same module PEFT refuses; here `modules_from` names the
    adapter whose copies to take (an error says so when it is needed).
  * unlike PEFT, an existing `adapter_name` is an error (PEFT returns without doing anything), and DARE takes a
    `generator` (PEFT draws from torch's global one: seeded alike, the draws are the same).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lorakit.combine.config import MERGES, CombineConfig, checked_weights
from lorakit.combine.math import combine_layer, unequal_ranks
from lorakit.config import LoraConfig, is_family_init
from lorakit.layers.saved_modules import HeadCopies
from lorakit.layers.lora import lora_layers
from lorakit.adapters.api import adapter_config, adapter_names, add_adapter_weights


DEFAULT = CombineConfig()


def add_weighted_adapter(model: nn.Module, adapters: list[str], weights: list[float], adapter_name: str,
                         combination_type: str = DEFAULT.combination_type, svd_rank: int | None = DEFAULT.svd_rank,
                         svd_clamp: float | None = DEFAULT.svd_clamp,
                         svd_full_matrices: bool = DEFAULT.svd_full_matrices, density: float | None = DEFAULT.density,
                         majority_sign_method: str = DEFAULT.majority_sign_method,
                         generator: torch.Generator | None = None, modules_from: str | None = None) -> nn.Module:
    """Add adapter `adapter_name`, the combination of `adapters` with `weights` (see the module docstring and
    combine_math.py). Inactive until set_adapter(model, adapter_name). Returns `model`."""
    how = CombineConfig(combination_type, density, majority_sign_method, svd_rank, svd_clamp, svd_full_matrices)
    return combine(model, list(adapters), list(weights), adapter_name, how, generator, modules_from)


def combine(model: nn.Module, adapters: list[str], weights: list[float], name: str, how: CombineConfig,
            generator: torch.Generator | None = None, modules_from: str | None = None) -> nn.Module:
    """add_weighted_adapter with its options as a CombineConfig."""
    if not adapters:
        raise ValueError("no adapters to combine: give the names of one or more adapters of the model")
    if len(weights) != len(adapters):
        raise ValueError(f"{len(weights)} weight(s) for {len(adapters)} adapter(s); give one weight per adapter")
    weights = checked_weights(weights)
    configs = source_configs(model, adapters, name)
    kind = how.combination_type if len(adapters) > 1 else "linear"  # PEFT: one adapter is always linear
    rank = new_rank(kind, [config_rank(c) for c in configs], how.svd_rank)
    pairs = {}
    with torch.no_grad():
        for path, layer in lora_layers(model):
            present = [(a, w) for a, w in zip(adapters, weights) if a in layer.adapter_names()]
            if not present:
                continue
            factors = [layer.low_rank(a) for a, _ in present]  # (A_i, B_i, s_i) (slots.Slots)
            A, B = combine_layer(kind, factors, [w for _, w in present], rank, how.density,
                                 how.majority_sign_method, how.svd_clamp, how.svd_full_matrices, generator)
            pairs[path] = (A.contiguous(), B.contiguous())
    heads = head_sources(model, adapters, modules_from)
    add_adapter_weights(model, name, combined_config(configs, rank), pairs)
    copy_heads(model, name, heads)
    return model


def source_configs(model: nn.Module, adapters: list[str], name: str) -> list[LoraConfig]:
    """The configs of the adapters to combine, after the checks that need the model."""
    held = adapter_names(model)
    missing = [a for a in adapters if a not in held]
    if missing:
        raise ValueError(f"no adapter named {missing[0]!r} on this model; it holds {held}")
    if name in held:
        raise ValueError(f"this model already holds an adapter named {name!r}; pick another name for the "
                         f"combination or delete_adapter(model, {name!r}) first")
    configs = [adapter_config(model, a) for a in adapters]
    for adapter, config in zip(adapters, configs):
        if config.use_dora:
            raise ValueError(f"{adapter!r} is a DoRA adapter; add_weighted_adapter combines plain LoRA adapters "
                             "(a DoRA update is not B·A alone)")
        if is_family_init(config.init):
            raise ValueError(f"{adapter!r} uses init={config.init!r}, whose base weights are not the model's own; "
                             "combine it after a save and load (which converts it to plain LoRA)")
    return configs


def config_rank(config: LoraConfig) -> int:
    """An adapter's rank as PEFT counts it: the largest over its layers, max(r, rank_pattern's values)."""
    return max([config.r, *config.rank_pattern.values()])


def new_rank(kind: str, ranks: list[int], svd_rank: int | None) -> int:
    """r' of the combination: the common rank (entry-wise merges), their sum (cat), svd_rank or the largest (svd)."""
    if kind in MERGES:
        if len(set(ranks)) != 1:
            raise unequal_ranks(kind, ranks)
        return ranks[0]
    if kind == "cat":
        return sum(ranks)
    return svd_rank or max(ranks)


def combined_config(configs: list[LoraConfig], rank: int) -> LoraConfig:
    """The first adapter's config (PEFT's rule) with r = alpha = r' (scaling 1), no patterns, no rsLoRA, no bias
    (biases are the base model's, not combined), and the modules trained in full by any of the adapters;
    add_adapter_weights sets the adapted layers (the union of the adapters')."""
    to_save = tuple(dict.fromkeys(name for c in configs for name in (c.modules_to_save or ())))
    return dataclasses.replace(configs[0], r=rank, alpha=float(rank), rank_pattern={}, alpha_pattern={},
                               use_rslora=False, bias="none", modules_to_save=to_save or None)


def head_sources(model: nn.Module, adapters: list[str], modules_from: str | None) -> dict[str, str]:
    """{path of a module trained in full: the combined adapter whose copy the new adapter takes}."""
    if modules_from is not None and modules_from not in adapters:
        raise ValueError(f"modules_from={modules_from!r} is not one of the adapters combined ({adapters})")
    sources = {}
    for path, module in model.named_modules():
        if not isinstance(module, HeadCopies):
            continue
        owners = [a for a in adapters if a in module.modules_to_save]
        if len(owners) > 1 and modules_from is None:
            raise ValueError(f"{owners} each train their own {path!r} (modules_to_save, e.g. a task head), which "
                             "cannot be combined; say whose copy the new adapter takes with modules_from=NAME "
                             "(lorakit merge: --modules-from N, the N-th --adapter)")
        if owners:
            sources[path] = modules_from if modules_from in owners else owners[0]
    return sources


def copy_heads(model: nn.Module, name: str, sources: dict[str, str]) -> None:
    """The new adapter's copies of the modules trained in full := the chosen adapters' copies."""
    with torch.no_grad():
        for path, source in sources.items():
            module = model.get_submodule(path)
            module.modules_to_save[name].load_state_dict(module.modules_to_save[source].state_dict())
