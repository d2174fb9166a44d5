"""Putting LoRA into a model and taking it out again.

    model = add_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    ... train ...
    with disable_lora(model):          # the base model, for comparison
        base_logits = model(**batch).logits
    merge_lora(model); unmerge_lora(model)   # fold the update into W0 and back (idempotent)
    plain = merge_and_unload(model)    # no lorakit module left: save_pretrained / from_pretrained round-trip

After `add_lora` only `lora_*` parameters, the `modules_to_save` and the biases chosen by `bias` train. As in PEFT,
the task head of a classification / QA model is always among the modules_to_save (so a reloaded adapter never
predicts with a random head), and no module inside a module trained in full gets LoRA.
The resolved configuration is kept in the model's AdapterState (`adapter_state(model).config`); `save_adapter`
writes it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging

from torch import nn

from lorakit.inject.beside import add_head_copies, bases_in_place, check_addable, set_submodule
from lorakit.config import LoraConfig, is_family_init, path_matches
from lorakit.state import STATE_ATTRIBUTE, AdapterState, adapter_state
from lorakit.layers.dora import DoRALinear
from lorakit.layers.saved_modules import HeadCopies
from lorakit.layers.lora import LORA_LAYERS, LoRAEmbedding, LoRALinear, lora_layers
from lorakit.init.family import is_residual_init, residual_init
from lorakit.quant.codes import requantize_error
from lorakit.quant.linear import QuantLinear, dequantize_model
from lorakit.inject.targets import compact_targets, find_targets, pattern_value

logger = logging.getLogger(__name__)

# The modules PEFT trains in full for a task model (PeftModelForSequenceClassification, ...ForTokenClassification,
# ...ForQuestionAnswering add them to modules_to_save); lorakit treats multiple-choice models like classifiers.
TASK_HEADS = {
    "ForSequenceClassification": ("classifier", "score"),
    "ForTokenClassification": ("classifier", "score"),
    "ForQuestionAnswering": ("qa_outputs",),
    "ForMultipleChoice": ("classifier",),
}


def default_modules_to_save(model: nn.Module) -> tuple[str, ...]:
    """The task head(s) of a classification / QA model: every module whose path ends with a head name, with or
    without a dot before it. PEFT's names match the head itself; the leaf names listed here also cover DistilBERT's
    pre_classifier, a freshly initialised layer like the head, which a frozen random layer would waste."""
    name = type(model).__name__
    heads = next((h for suffix, h in TASK_HEADS.items() if name.endswith(suffix)), ())
    found: list[str] = []
    for head in heads:
        for path, _ in model.named_modules():
            leaf = path.rsplit(".", 1)[-1]
            if path.endswith(head) and leaf not in found:
                found.append(leaf)
    return tuple(found)


def saved_in_full(module_path: str, names: tuple[str, ...]) -> bool:
    """Is the module at `module_path` one of the modules_to_save `names`, or inside one? PEFT's rule (path_matches):
    "norm" saves model.norm, not input_layernorm."""
    return any(path_matches(prefix, name) for prefix in _prefixes(module_path) for name in names)


def _inside(path: str, module_name: str) -> bool:
    """Is `path` the module called `module_name` (exact or ".name" suffix), or inside it?"""
    return any(path_matches(prefix, module_name) for prefix in _prefixes(path))


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def add_lora(model: nn.Module, config: LoraConfig, name: str = "default") -> nn.Module:
    """Wrap the target modules of `model` in LoRA layers (in place) and freeze everything else. Returns `model`.

    On a model that holds adapters already, adapter `name` is added beside them (beside.py), inactive until
    set_adapter(model, name), as in PEFT; its targets and rank may differ from theirs."""
    state = adapter_state(model)
    present = state is not None
    if lora_layers(model) and not present:
        raise ValueError("this model already has LoRA layers; merge_and_unload(model) first, or start from a fresh model")
    if present:
        check_addable(model, config, name)
    with bases_in_place(model):
        paths, to_save = resolve_targets(model, config)
        compact = compact_targets(model, paths)
    if not present:
        model.requires_grad_(False)
        originals = original_modules(model, to_save)
    for path in paths:
        current = model.get_submodule(path)
        base = current.base_layer if isinstance(current, LORA_LAYERS) else current
        layer = new_layer(base, config, path)
        if isinstance(current, LORA_LAYERS):
            current.add_adapter(name, layer)
            continue
        layer.adapter_name = name
        set_submodule(model, path, layer)
    if present:
        for _, layer in lora_layers(model):  # the adapters in use stay so; the new one waits, frozen
            layer.activate(state.active)
        add_head_copies(model, to_save, name)
    else:
        train_first_adapter(model, config, to_save)
    if config.init == "loftq":
        logger.info("init='loftq': A and B are set by lorakit.apply_loftq(model, quant_config), which also quantizes")
    resolved = dataclasses.replace(
        config, target_modules=tuple(compact), exclude_modules=None, layers_to_transform=None, modules_to_save=tuple(to_save)
    )
    if present:
        state.configs[name] = resolved
    else:
        setattr(model, STATE_ATTRIBUTE, AdapterState({name: resolved}, (name,), originals))
    return model


def original_modules(model: nn.Module, to_save: tuple[str, ...]) -> dict[str, nn.Module]:
    """A frozen copy of every module `to_save` names, before the first adapter trains it in place (PEFT keeps the
    base model's module as original_module; disable_lora computes with it)."""
    return {p: copy.deepcopy(m).requires_grad_(False) for p, m in model.named_modules()
            if p and any(path_matches(p, name) for name in to_save)}


def resolve_targets(model: nn.Module, config: LoraConfig) -> tuple[list[str], tuple[str, ...]]:
    """The module paths that get LoRA and the modules_to_save names, by PEFT's rules: the task head always trains in
    full (added to any modules_to_save given), and a module trained in full gets no adapter inside it."""
    paths = find_targets(model, config.target_modules, config.exclude_modules, config.layers_to_transform)
    to_save = tuple(dict.fromkeys((*(config.modules_to_save or ()), *default_modules_to_save(model))))
    paths = [p for p in paths if not any(_inside(p, name) for name in to_save)]
    if not paths:
        raise ValueError(f"every target of {config.target_modules!r} lies inside modules_to_save={to_save!r}, which "
                         "train in full (the task head always does); target modules outside them")
    return paths, to_save


def new_layer(base: nn.Module, config: LoraConfig, path: str) -> nn.Module:
    """The LoRA layer `config` puts around `base` (the module at `path`)."""
    r = pattern_value(path, config.rank_pattern, config.r)
    alpha = pattern_value(path, config.alpha_pattern, config.alpha)
    if isinstance(base, nn.Embedding):
        return LoRAEmbedding(base, r, alpha, config.use_rslora)
    if config.use_dora:  # DoRA: LoRA plus a magnitude vector (dora.py)
        return DoRALinear(base, r, alpha, config.dropout, config.use_rslora, config.init)
    init = config.init if not is_family_init(config.init) else "kaiming"  # a placeholder: init/family.py sets A and B
    layer = LoRALinear(base, r, alpha, config.dropout, config.use_rslora, init, config.adapter_dtype)
    if is_residual_init(config.init):
        residual_init(layer, config.init)  # PiSSA / OLoRA: A, B from W0; W0 <- residual
    return layer


def train_first_adapter(model: nn.Module, config: LoraConfig, to_save: tuple[str, ...]) -> None:
    """Unfreeze what the first adapter trains: its lora_* tensors, the modules_to_save (in place), chosen biases."""
    for name in to_save:
        matched = [m for p, m in model.named_modules() if p and path_matches(p, name)]
        if not matched:
            raise ValueError(f"modules_to_save: {name!r} matches no module of this model")
        for module in matched:
            module.requires_grad_(True)
    if config.bias == "all":
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.requires_grad_(True)
    elif config.bias == "lora_only":
        for _, layer in lora_layers(model):
            if isinstance(layer, LoRALinear) and layer.base_layer.bias is not None:
                layer.base_layer.bias.requires_grad_(True)
    for _, layer in lora_layers(model):  # every lora_* tensor trains, including those inside modules_to_save
        for name, param in layer.named_parameters():
            if name.startswith("lora_"):
                param.requires_grad_(True)


def untie_before_merge(model: nn.Module) -> None:
    """Give each unmerged LoRA layer whose base weight is tied to another parameter (an embedding and the tied
    lm_head of Gemma, BLOOM, Falcon, Whisper; encoder and decoder embeddings sharing one table) its own copy, so a
    merge changes that layer only and the merged model computes what the adapted one did (PEFT's merge also moves
    the tied head). Logged; the config stops asking transformers to tie them again."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for path, layer in lora_layers(model):
        base = layer.base_layer
        weight = getattr(base, "weight", None)
        if layer.merged or isinstance(base, QuantLinear) or not isinstance(weight, nn.Parameter):
            continue
        tied = [n for n in owners.get(id(weight), []) if not n.startswith(path + ".")]
        if tied:
            base.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
            owners[id(weight)] = tied
            logger.info("merging into %s: its weight was tied to %s; untied it first, so the merge changes %s only",
                        path, ", ".join(tied), path)
            if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
                model.config.tie_word_embeddings = False


def merge_lora(model: nn.Module) -> nn.Module:
    """W0 <- W0 + (alpha/r)·B·A in every LoRA layer (tied weights untied first). Idempotent."""
    untie_before_merge(model)
    for _, layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """W0 <- W0 - (alpha/r)·B·A in every merged LoRA layer. Idempotent."""
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


@contextlib.contextmanager
def disable_lora(model: nn.Module):
    """Within the block the model computes as its base model (merged layers are unmerged, then re-merged), the
    modules trained in full (modules_to_save) included: their base model's module computes, as in PEFT's
    disable_adapter()."""
    layers = [layer for _, layer in lora_layers(model)]
    state = [(layer.disabled, layer.merged) for layer in layers]
    for layer in layers:
        layer.unmerge()
        layer.disabled = True
    trained = _swap_in_originals(model)
    try:
        yield model
    finally:
        for path, module in trained.items():
            set_submodule(model, path, module)
        for layer, (disabled, merged) in zip(layers, state):
            layer.disabled = disabled
            if merged:
                layer.merge()


def _swap_in_originals(model: nn.Module) -> dict[str, nn.Module]:
    """Put the base model's module in place of each module trained in full; returns {path: the trained module}."""
    state = adapter_state(model)
    originals = dict(state.originals) if state is not None else {}
    for path, module in model.named_modules():
        if isinstance(module, HeadCopies) and module.original_module is not None:
            originals[path] = module.original_module
    trained = {}
    for path, original in originals.items():
        current = model.get_submodule(path)
        weight = next(current.parameters(), None)
        if weight is not None:
            original.to(device=weight.device, dtype=weight.dtype)
        trained[path] = current
        set_submodule(model, path, original)
    return trained


def merge_and_unload(model: nn.Module, requantize: bool = False) -> nn.Module:
    """Fold the adapters in use into their base weights and put the plain base layers back. Returns `model`.

    Quantized (QLoRA) bases are dequantized, the update added, and a dense 32-bit layer returned (an nn.Linear,
    or a Conv1D where the quantized layer replaced one); quantized layers without an adapter are dequantized too,
    so the result is a plain model: re-quantizing a merged weight adds a second rounding error. With
    `requantize=True` the merged weight is quantized again with the layer's own settings (the other quantized
    layers stay as they are) and the error this introduced (max abs, relative Frobenius) is logged per layer and
    kept in `model.requantize_errors` ({path: {"max_abs": ..., "rel_fro": ...}}).
    """
    errors = {}
    untie_before_merge(model)
    for path, layer in lora_layers(model):
        base = layer.base_layer
        if isinstance(base, QuantLinear):
            merged = base.dequantize().float() + layer.delta_weight()  # (out, in)
            dense = base.to_dense(merged)
            if requantize:
                requantized = QuantLinear.from_linear(dense, base.quant_config)
                errors[path] = requantize_error(merged, requantized.dequantize().float())
                dense = requantized
            base = dense
        else:
            layer.merge()
        set_submodule(model, path, base.requires_grad_(False))
    if not requantize:
        dequantize_model(model)
    if requantize:
        model.requantize_errors = errors
        for path, err in errors.items():
            logger.info("requantized %s: max abs error %.3g, relative Frobenius error %.3g", path, err["max_abs"], err["rel_fro"])
    for path, module in [(p, m) for p, m in model.named_modules() if isinstance(m, HeadCopies)]:
        set_submodule(model, path, module.copy_for(module.active))  # the copy of the adapter in use
    forget_adapters(model)
    return model


def forget_adapters(model: nn.Module) -> None:
    """Drop the model's record of its adapters (once no LoRA layer is left)."""
    if STATE_ATTRIBUTE in vars(model):
        delattr(model, STATE_ATTRIBUTE)
