"""Adapter files in PEFT's on-disk format, both ways.

    save_adapter(model, "out/adapter")      # adapter_config.json + adapter_model.safetensors
    model = load_adapter(fresh_model, "out/adapter")   # injects per the saved config, loads the weights
    # and the ecosystem reads it:  peft.PeftModel.from_pretrained(fresh_model, "out/adapter")

Keys are PEFT's: "base_model.model.<module path>.lora_A.weight", "....lora_embedding_A", the modules_to_save under
their own paths ("base_model.model.classifier.weight"), trained biases of adapted layers as "<path>.base_layer.bias".
lorakit names its parameters exactly so, which makes the mapping the identity plus the prefix.
Loading reads safetensors only (never pickle). Writes are atomic: a temporary directory, then a rename.
LoraConfig(adapter_dtype="int8") adapters are lorakit's own variant (int8 codes + scales, see quant/int8_adapters.py):
peft_type "LORAKIT_INT8", which PEFT does not read.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lorakit.quant import int8_adapters as adapter_int8
from lorakit.io.atomic import atomic_dir, check_replaceable, read_json, read_safetensors
from lorakit.config import PEFT_FORMAT_VERSION, LoraConfig, path_matches, saves_by_bare_suffix
from lorakit.state import adapter_state
from lorakit.errors import UserError
from lorakit.inject.inject import add_lora, lora_layers
from lorakit.io.untrusted import (PREFIX, adapter_params, check_config_data, check_ranks, checked_tensors, file_name,
                                  planned_copies, undone_on_failure)
from lorakit.layers.lora import LoRALinear
from lorakit.init.family import is_residual_init, plain_lora_fields, to_plain_lora
from lorakit.adapters.api import active_adapters, adapter_names, using

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# PEFT config fields and how they map to ours.
_FIELD_MAP = {
    "r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "target_modules",
    "exclude_modules": "exclude_modules",
    "layers_to_transform": "layers_to_transform",
    "rank_pattern": "rank_pattern",
    "alpha_pattern": "alpha_pattern",
    "bias": "bias",
    "use_rslora": "use_rslora",
    "modules_to_save": "modules_to_save",
    "use_dora": "use_dora",  # DoRA: "<path>.lora_magnitude_vector" tensors (dora.py)
}
# Metadata, or settings lorakit derives itself.
_IGNORED = {
    "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping",
    "fan_in_fan_out", "init_lora_weights", "layers_pattern", "megatron_core",
    "runtime_config",  # PEFT's settings of one run (ephemeral GPU offload), not part of the adapter
}
# PEFT features lorakit does not implement: accepted only at their "off" value.
_MUST_BE_OFF = {
    "lora_bias", "layer_replication", "target_parameters", "trainable_token_indices", "use_qalora",
    "loftq_config", "eva_config", "corda_config", "megatron_config", "alora_invocation_tokens", "arrow_config",
    "kasa_config", "lora_ga_config", "monteclora_config", "velora_config", "use_bdlora", "qalora_group_size",
    "ensure_weight_tying", "astra_config",
}
_OFF_VALUES = (None, False, {}, [], 16)  # 16: PEFT's qalora_group_size default, unused unless use_qalora
# init_lora_weights as PEFT reads it. lorakit's own N(0, 1/r) has no PEFT name: false ("A and B are not PEFT's
# zero-product init", which PEFT accepts and which only matters before the file's weights are loaded) rather than an
# extra field, which PEFT would warn about. Reading: see _init_from_peft (PiSSA / OLoRA rebuild their residual base).
INIT_TO_PEFT = {"kaiming": True, "gaussian": "gaussian", "normal_1_over_r": False}


# PEFT's task types by the transformers auto-class a model is of (modeling_auto's *_MAPPING_NAMES, by model_type)
_TASK_MAPPINGS = (
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "SEQ_CLS"),
    ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "QUESTION_ANS"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "TOKEN_CLS"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "CAUSAL_LM"),
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "SEQ_2_SEQ_LM"),
)


def _task_type(model: nn.Module) -> str | None:
    """PEFT's task_type for this model, decided from the model: the transformers auto-mapping its config's
    model_type lists its class in. None when unsure (Whisper, Llava, a bare encoder, a custom class): PEFT's
    from_pretrained then wraps it in a plain PeftModel, whose forward passes every input through."""
    from transformers.models.auto import modeling_auto

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = {cls.__name__ for cls in type(model).__mro__}  # FSDP2 makes a subclass FSDP<Class> of the model's class
    for mapping, task in _TASK_MAPPINGS:
        classes = getattr(modeling_auto, mapping, {}).get(model_type, ())
        if names & set((classes,) if isinstance(classes, str) else classes):
            return task
    return None


def _base_name(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or None if config is not None else None


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of the adapter in use, under PEFT's key names (without the "base_model.model." prefix)."""
    return {k: v.detach().contiguous().cpu() for k, v in adapter_params(model).items()}


def peft_config_dict(model: nn.Module) -> dict:
    """adapter_config.json as PEFT writes it (the fields PEFT needs to rebuild the same model)."""
    config = adapter_state(model).config
    fan_in_fan_out = any(isinstance(m, LoRALinear) and m.fan_in_fan_out for _, m in lora_layers(model))
    targets = config.target_modules
    return {
        "peft_type": adapter_int8.PEFT_TYPE if config.adapter_dtype == "int8" else "LORA",
        "task_type": _task_type(model),
        "base_model_name_or_path": _base_name(model),
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": list(targets) if not isinstance(targets, str) else targets,
        "exclude_modules": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": dict(config.alpha_pattern),
        "bias": config.bias,
        "use_rslora": config.use_rslora,
        "use_dora": config.use_dora,
        "fan_in_fan_out": fan_in_fan_out,
        "init_lora_weights": INIT_TO_PEFT.get(config.init, config.init),  # the family: "pissa", "loftq", ...
        "modules_to_save": list(config.modules_to_save) or None,
        "inference_mode": True,
        "revision": None,
        "peft_version": PEFT_FORMAT_VERSION,  # the rules the file follows (config.saves_by_bare_suffix)
    }


# what an adapter directory holds: save_adapter replaces a directory with these files only (or an empty one)
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME, "lorakit.json", "README.md")


def is_adapter_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() and all(p.name in ADAPTER_FILES for p in path.iterdir())


def save_adapter(model: nn.Module, path: str | os.PathLike, state: dict[str, torch.Tensor] | None = None,
                 overwrite: bool = False, name: str | None = None) -> Path:
    """Write `path/adapter_config.json` and `path/adapter_model.safetensors` atomically. Returns the path.

    name: which adapter of a model that holds several; None: the one in use.
    state: the adapter's tensors when the model cannot give them itself (FSDP: gathered by fsdp.gather_adapter).
    An existing `path` is replaced only if it is an empty directory or an adapter directory (ADAPTER_FILES);
    anything else is a UserError unless overwrite=True (a file is never replaced)."""
    check_replaceable(path, is_adapter_dir, "an adapter directory", "save_adapter: path", overwrite)
    if adapter_state(model) is None or not lora_layers(model):
        raise ValueError("save_adapter: this model has no LoRA layers (call add_lora or load_adapter first)")
    if any(layer.merged for _, layer in lora_layers(model)):
        raise ValueError("save_adapter: LoRA is merged into the base weights; call unmerge_lora(model) before saving")
    if name is None and len(active_adapters(model)) > 1:
        raise ValueError(f"save_adapter: adapters {list(active_adapters(model))} are in use together; name the one "
                         "to save (name=...), or save them all with save_adapters(model, path)")
    with using(model, name or active_adapters(model)[0]):
        return _save_in_use(model, Path(path), state)


def _save_in_use(model: nn.Module, path: Path, state: dict[str, torch.Tensor] | None) -> Path:
    state = {PREFIX + k: v for k, v in (adapter_state_dict(model) if state is None else state).items()}
    if not any(".lora_" in k for k in state):
        raise ValueError("save_adapter: refusing to write an adapter without LoRA weights")
    fields = peft_config_dict(model)
    config = adapter_state(model).config
    if is_residual_init(config.init):  # PiSSA / OLoRA: a rank-2r LoRA on the original W0
        state = {PREFIX + k: v for k, v in to_plain_lora(model, adapter_state_dict(model)).items()}
        fields = plain_lora_fields(fields)
    adapter_dtype = config.adapter_dtype
    if adapter_dtype == "int8":
        state = adapter_int8.to_int8_state(state)
    with atomic_dir(path) as tmp:  # the old version stays until the new one is in place
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "lorakit_adapter_dtype": adapter_dtype})
        (tmp / CONFIG_NAME).write_text(json.dumps(fields, indent=2, sort_keys=True))
    size = (path / WEIGHTS_NAME).stat().st_size
    logger.info("saved adapter to %s: %d bytes of %s weights", path, size, adapter_dtype)
    return path


def save_adapters(model: nn.Module, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Every adapter of the model in PEFT's layout: "default" in `path`, each other one in `path/<name>/`
    (PeftModel.save_pretrained's). Written as one atomic directory. Returns the path."""
    check_replaceable(path, is_adapters_dir, "an adapter directory", "save_adapters: path", overwrite)
    path = Path(path)
    with atomic_dir(path) as tmp:
        for name in adapter_names(model):
            save_adapter(model, tmp if name == "default" else tmp / name, name=name)
    return path


def is_adapters_dir(path: Path) -> bool:
    """An adapter directory, or one that holds adapter directories (the multi-adapter layout)."""
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    files = [p for p in path.iterdir() if not p.is_dir()]
    return all(p.name in ADAPTER_FILES for p in files) and all(is_adapter_dir(p) for p in subdirs) and (
        (path / CONFIG_NAME).is_file() or bool(subdirs))


def load_adapters(model: nn.Module, path: str | os.PathLike, is_trainable: bool = False) -> nn.Module:
    """The reverse of save_adapters: `path` itself as "default" (when it holds an adapter), each sub-directory
    with an adapter_config.json as the adapter of that name. The first one loaded is in use. is_trainable: as
    load_adapter's (default: eval mode, frozen)."""
    path = Path(path)
    subdirs = sorted(p for p in path.iterdir() if (p / CONFIG_NAME).is_file()) if path.is_dir() else []
    if not (path / CONFIG_NAME).is_file() and not subdirs:
        raise FileNotFoundError(f"{path} holds no adapter: neither {CONFIG_NAME} nor sub-directories with one")
    if (path / CONFIG_NAME).is_file():
        load_adapter(model, path, "default", is_trainable)
    for sub in subdirs:
        load_adapter(model, sub, sub.name, is_trainable)
    return model


def config_from_peft(data: dict) -> LoraConfig:
    """Our LoraConfig from a PEFT adapter_config.json dict. Unknown fields: one warning; unsupported ones: an error."""
    peft_type = data.get("peft_type", "LORA")
    if peft_type not in ("LORA", adapter_int8.PEFT_TYPE):
        raise ValueError(f"adapter_config.json has peft_type={peft_type!r}; lorakit reads LORA and LORAKIT_INT8 only")
    unsupported = {k: data[k] for k in _MUST_BE_OFF if k in data and data[k] not in _OFF_VALUES}
    if unsupported:
        raise ValueError(f"this adapter uses PEFT features lorakit does not implement: {unsupported}")
    unknown = sorted(set(data) - set(_FIELD_MAP) - _IGNORED - _MUST_BE_OFF)
    if unknown:
        logger.warning("adapter_config.json: ignoring fields lorakit does not know: %s", ", ".join(unknown))
    kwargs = {ours: data[theirs] for theirs, ours in _FIELD_MAP.items() if data.get(theirs) is not None}
    kwargs["init"] = _init_from_peft(data.get("init_lora_weights", True))
    if "modules_to_save" not in kwargs:
        kwargs["modules_to_save"] = ()
    kwargs["adapter_dtype"] = "int8" if peft_type == adapter_int8.PEFT_TYPE else "float32"
    return LoraConfig(**kwargs)


def _init_from_peft(value) -> str:
    """lorakit's init for PEFT's init_lora_weights. PiSSA / OLoRA files saved PEFT's default way hold A, B trained
    from the residual base W0 - s·B0·A0, which PEFT's from_pretrained rebuilds by running the init again on the
    fresh base (an exact SVD / QR): lorakit does the same. A randomized SVD (pissa_niter_N), CorDA and ASTRA cannot
    be rebuilt exactly from the base alone; any other init only set A and B before training: kaiming."""
    if value in ("pissa", "olora"):
        return value
    if isinstance(value, str) and (value.startswith("pissa_niter_") or value in ("corda", "astra")):
        raise ValueError(f"adapter_config.json has init_lora_weights={value!r}: its weights are relative to a residual "
                         "base that cannot be rebuilt exactly from the base model; save it with PEFT's "
                         "save_pretrained(..., path_initial_model_for_weight_conversion=...) as a plain LoRA adapter")
    return {peft: ours for ours, peft in INIT_TO_PEFT.items()}.get(value, "kaiming")


def load_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default",
                 is_trainable: bool = False) -> nn.Module:
    """Inject LoRA into `model` per `path/adapter_config.json` and load `path/adapter_model.safetensors`.
    On a model that holds adapters already, it joins them as adapter `name`, not yet in use.

    As PEFT's from_pretrained: the model comes back in eval mode (dropout off) with the adapter frozen, for
    inference; is_trainable=True leaves the adapter's tensors trainable (continued training) and the mode as it was."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        present = sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such directory"
        raise FileNotFoundError(f"{path} is not an adapter directory: it needs {CONFIG_NAME} and {WEIGHTS_NAME} (found: {present})")
    data = read_json(config_file, "adapter config")
    check_config_data(data, config_file)
    config = config_from_peft(data)
    source = data.get("base_model_name_or_path")
    to_save = config.modules_to_save
    if saves_by_bare_suffix(data.get("peft_version")):
        to_save = bare_suffix_matches(model, to_save)
    # PEFT lists both "classifier" and "score" for every SEQ_CLS model: keep the heads this model has.
    present = [name for name in to_save if _has_module(model, name)]
    config = dataclasses.replace(config, modules_to_save=tuple(present))
    _load_checked(model, weights_file, config, source, name)
    if not is_trainable:
        _for_inference(model, name)
    return model


def _for_inference(model: nn.Module, name: str) -> None:
    """PEFT's inference_mode: the adapter `name` frozen, the model in eval mode. The first adapter of a model owns
    every trainable tensor (add_lora froze the rest); one that joins others starts frozen, not yet in use."""
    if adapter_names(model) == [name]:
        model.requires_grad_(False)
    model.eval()


def _load_checked(model: nn.Module, weights_file: Path, config: LoraConfig, source, name: str) -> None:
    """The file checked whole (dtypes, finite values, ranks) before LoRA is injected, its keys and shapes checked
    before a value is copied, and the injection undone on any failure: a failed load leaves the model as it was."""
    state = read_safetensors(weights_file, "adapter weights")  # safetensors: no pickle
    state = checked_tensors(state, config.adapter_dtype, weights_file)  # int8 codes · scales: the trained A and B
    with undone_on_failure(model, values=is_residual_init(config.init)):
        check_ranks(model, config, state, weights_file)
        add_lora(model, config, name)
        with using(model, name):  # its tensors under PEFT's names
            _copy_weights(model, state, config, source, weights_file)


def _copy_weights(model: nn.Module, state: dict, config: LoraConfig, source, weights_file: Path) -> None:
    """Copy the file's tensors into the adapter in use, once every key and shape has been checked."""
    copies = planned_copies(model, state, config, weights_file, source)
    expected = set(adapter_params(model))
    loaded = {file_name(key) for key in state}
    missing = sorted(k for k in expected - loaded if ".lora_" in k)
    if missing:
        raise UserError(f"adapter at {weights_file.parent} lacks {len(missing)} LoRA tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for target, tensor in copies:
            target.copy_(tensor.to(target.dtype))


def _has_module(model: nn.Module, name: str) -> bool:
    return any(p and path_matches(p, name) for p, _ in model.named_modules())


def bare_suffix_matches(model: nn.Module, names: tuple[str, ...]) -> tuple[str, ...]:
    """modules_to_save of a file written under the bare path-end rule, as names that select the same modules under
    today's rule: each name that would select more than path_matches does ("norm": input_layernorm too) becomes the
    full paths of the modules it selected, so the adapter loads, trains and saves exactly what it was trained with."""
    out: list[str] = []
    paths = [p for p, _ in model.named_modules() if p]
    for name in names:
        bare = [p for p in paths if p.endswith(name)]
        if all(path_matches(p, name) for p in bare):
            out.append(name)
            continue
        outermost = [p for p in bare if not any(p.startswith(q + ".") for q in bare)]
        out.extend(p for p in outermost if p not in out)
    return tuple(dict.fromkeys(out))
