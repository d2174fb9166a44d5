"""An adapter file is untrusted input: what it may hold, checked before it changes the model, and a failed load undone.

    check_config_data(data, file)           # adapter_config.json is a mapping, its free-form fields of sane types
    state = checked_tensors(state, "float32", file)   # floating point, finite (int8 files: codes + scales decoded)
    check_ranks(model, config, state, file)  # each target's rank against the file's, before any layer is made
    with undone_on_failure(model):          # an error inside: the model exactly as before (structure, flags, state)
        add_lora(model, config, name)
        copies = planned_copies(model, state, config, name, file, source)   # only the tensors the config declares
        ...copy...

An adapter holds exactly what its config declares: the LoRA tensors (lora_A / lora_B, lora_embedding_A / _B,
lora_magnitude_vector for DoRA) of the layers it adapts, the parameters of its modules_to_save, and the biases its
`bias` trains ("all": every bias, "lora_only": those of adapted layers). Any other key, even one naming a parameter
of the base model, is refused with one line naming it, so a file cannot overwrite the base model that other adapters
share (`lorakit serve`). PEFT's ".original_module." copies of a saved module are skipped.
"""
from __future__ import annotations

import collections
import contextlib
import copy
from pathlib import Path

import torch
from torch import nn

from lorakit.adapters.api import active_adapters
from lorakit.config import LoraConfig
from lorakit.errors import UserError
from lorakit.inject.beside import bases_in_place
from lorakit.inject.inject import resolve_targets, saved_in_full
from lorakit.inject.targets import pattern_value
from lorakit.layers.lora import lora_layers
from lorakit.layers.saved_modules import file_key
from lorakit.quant import int8_adapters
from lorakit.state import adapter_state

PREFIX = "base_model.model."
_INT8_CODES = (".lora_A.weight", ".lora_B.weight")  # the tensors an int8 adapter stores as int8 codes
LORA_KEYS = "lora_A / lora_B / lora_embedding_A / lora_embedding_B / lora_magnitude_vector"
# adapter_config.json fields lorakit reads itself (not through LoraConfig's checks): the types each may have
_FREE_FIELDS = {"peft_type": (str,), "peft_version": (str, type(None)), "init_lora_weights": (bool, str, type(None)),
                "base_model_name_or_path": (str, type(None))}


def adapter_params(model: nn.Module, remove_duplicate: bool = True) -> dict[str, nn.Parameter]:
    """The parameters of the adapter in use, under PEFT's key names (without the "base_model.model." prefix): its
    lora_* tensors, its copies of the modules_to_save, the biases its `bias` setting trains. With
    remove_duplicate=False a tied parameter appears under each of its names."""
    config = adapter_state(model).config
    in_use = active_adapters(model)[0]
    layers = lora_layers(model)
    lora_paths = {p for p, _ in layers}
    # the other adapters: banked ones, and the layers that do not hold the adapter in use
    others = tuple(f"{p}.bank." for p, _ in layers) + tuple(f"{p}.lora_" for p, m in layers if m.adapter_name != in_use)
    state = {}
    for param_path, param in model.named_parameters(remove_duplicate=remove_duplicate):
        name = file_key(param_path, in_use)  # a copy of a module trained in full: its PEFT key, None if not ours
        if name is None or name.startswith(others):
            continue
        parts = name.split(".")
        keep = any(part.startswith("lora_") for part in parts)
        keep = keep or saved_in_full(name.rpartition(".")[0], config.modules_to_save)
        keep = keep or (config.bias == "all" and name.endswith("bias"))
        if config.bias == "lora_only" and name.endswith(".base_layer.bias"):
            keep = keep or name[: -len(".base_layer.bias")] in lora_paths
        if keep:
            state[name] = param
    return state


# --- the file alone ------------------------------------------------------------------------------------------------

def check_config_data(data, file: Path) -> None:
    """adapter_config.json must be a JSON object; the fields read outside LoraConfig's checks must have their types."""
    if not isinstance(data, dict):
        raise UserError(f"adapter config {file} holds {type(data).__name__ if data is not None else 'null'}, not a "
                        "JSON object of PEFT's fields (r, lora_alpha, target_modules, ...); restore it or save again")
    for field, types in _FREE_FIELDS.items():
        if field in data and not isinstance(data[field], types):
            allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise UserError(f"adapter config {file}: {field} is {data[field]!r}, which should be {allowed}")


def checked_tensors(state: dict[str, torch.Tensor], adapter_dtype: str, file: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, checked: floating point and finite. An int8 adapter's codes (int8) and scales (floating
    point, one per row) are checked and decoded to the trained A and B. UserError naming the first bad key."""
    int8 = adapter_dtype == "int8"
    for key, tensor in state.items():
        if int8 and tensor.dtype == torch.int8 and key.endswith(_INT8_CODES):
            continue  # codes, checked with their scales (which are checked here)
        if not tensor.is_floating_point():
            raise UserError(f"adapter file {file}: {key} is {str(tensor.dtype).removeprefix('torch.')}; adapter "
                            "tensors are floating point (float32, float16, bfloat16) (int8 codes only in "
                            f"{int8_adapters.PEFT_TYPE} adapters, for lora_A / lora_B)")
        if tensor.numel() and not bool(torch.isfinite(tensor.float()).all()):
            raise UserError(f"adapter file {file}: {key} holds NaN or infinite values; the adapter is broken (a "
                            "diverged run?): retrain it or load another checkpoint")
    return _decoded_int8(state, file) if int8 else state


def _decoded_int8(state: dict[str, torch.Tensor], file: Path) -> dict[str, torch.Tensor]:
    suffix = int8_adapters.SCALE_SUFFIX
    for key, tensor in state.items():
        codes = state.get(key.removesuffix(suffix)) if key.endswith(suffix) else None
        if key.endswith(suffix) and (codes is None or codes.dtype != torch.int8):
            raise UserError(f"adapter file {file}: {key} is a scale without the int8 codes "
                            f"{key.removesuffix(suffix)}; an int8 adapter pairs each lora_A / lora_B with its scales")
        if codes is not None and (tensor.dim() != 1 or codes.dim() != 2 or tensor.shape[0] != codes.shape[0]
                                  or not tensor.is_floating_point()):
            raise UserError(f"adapter file {file}: {key} has shape {tuple(tensor.shape)} and dtype "
                            f"{str(tensor.dtype).removeprefix('torch.')}; the int8 codes {key.removesuffix(suffix)} "
                            f"of shape {tuple(codes.shape)} need one floating-point scale per row")
    try:
        return int8_adapters.from_int8_state(state)
    except ValueError as err:
        raise UserError(f"adapter file {file}: {err}") from None


# --- the file against the model ------------------------------------------------------------------------------------

def file_name(key: str) -> str:
    """A file key as the adapter's parameter name: no "base_model.model." prefix, PEFT's in-memory copies of a
    module trained in full (".modules_to_save.default.") under the module's own path."""
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    return name.replace(".modules_to_save.default.", ".").replace(".modules_to_save.", ".")


def _file_ranks(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The rank of each adapted layer as the file gives it: lora_A.weight (r, in), lora_embedding_A (r, n)."""
    ranks = {}
    for key, tensor in state.items():
        name = file_name(key)
        for leaf in (".lora_A.weight", ".lora_embedding_A"):
            if name.endswith(leaf) and tensor.dim() == 2:
                ranks[name[: -len(leaf)]] = tensor.shape[0]
    return ranks


def check_ranks(model: nn.Module, config: LoraConfig, state: dict[str, torch.Tensor], file: Path) -> None:
    """Every layer the config adapts has the rank the file's tensors have, checked before a LoRA layer is made
    (a config with r = 10^9 allocates nothing). Layers the file has no tensors for are left to the copy's check."""
    with bases_in_place(model):
        paths, _ = resolve_targets(model, config)
    ranks = _file_ranks(state)
    for path in paths:
        r = pattern_value(path, config.rank_pattern, config.r)
        if path in ranks and ranks[path] != r:
            raise UserError(f"adapter file {file}: the LoRA tensors of {path}: its rank {ranks[path]} differs from "
                            f"the rank {r} adapter_config.json gives it (r, rank_pattern); the config and the weights "
                            "of this adapter do not belong together")


def planned_copies(model: nn.Module, state: dict[str, torch.Tensor], config: LoraConfig, file: Path,
                   source) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, tensor) for every key of the file, the adapter in use being the one loaded; nothing is copied.
    A key that is not a tensor the config declares, or a tensor of another shape, is a UserError (one line)."""
    accepted = adapter_params(model, remove_duplicate=False)
    model_params = dict(model.named_parameters(remove_duplicate=False))
    embeddings = _embedding_params(model)
    copies = []
    for key, tensor in state.items():
        name = file_name(key)
        if ".original_module." in name:  # PEFT with bias="all" also writes the untouched copy of a saved module
            continue
        if name not in accepted and id(model_params.get(name)) in embeddings and _equal(model_params[name], tensor):
            continue  # PEFT's save_embedding_layers: the base embedding, unchanged (a changed one is refused below)
        if name not in accepted:
            raise UserError(_refused(key, name, name in model_params, config, file, source))
        target = accepted[name]
        if target.shape != tensor.shape:
            raise UserError(shape_mismatch(name, tuple(tensor.shape), tuple(target.shape), config, source))
        copies.append((target, tensor))
    return copies


def _embedding_params(model: nn.Module) -> set[int]:
    """The ids of the input and output embeddings' parameters (which PEFT saves beside an adapter that targets
    them, save_embedding_layers)."""
    found = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)() if hasattr(model, getter) else None
        except NotImplementedError:
            module = None
        if isinstance(module, nn.Module):
            found.update(id(p) for p in module.parameters())
    return found


def _equal(param: nn.Parameter, tensor: torch.Tensor) -> bool:
    return param.shape == tensor.shape and bool(torch.equal(param.detach().cpu(), tensor.to(param.dtype)))


def _refused(key: str, name: str, names_a_param: bool, config: LoraConfig, file: Path, source) -> str:
    if not names_a_param:
        return (f"adapter key {key} names no parameter of this model (adapter trained on {source!r}); "
                "is it the right base model?")
    biases = {"all": "every bias", "lora_only": "the biases of adapted layers", "none": "no bias"}[config.bias]
    return (f"adapter file {file}: refusing key {key}, a base-model parameter its config does not declare; an adapter "
            f"may hold only {LORA_KEYS} tensors of its target layers, the modules_to_save "
            f"{list(config.modules_to_save)} and {biases} (bias={config.bias!r}); a copy of the base embedding only "
            "when equal to the model's")


def shape_mismatch(name: str, saved: tuple, ours: tuple, config: LoraConfig, source) -> str:
    """Why an adapter tensor does not fit: the task head's labels, the rank, or really another base model."""
    shown = f"adapter tensor {name} has shape {saved} but the model's is {ours}"
    if (any(name.startswith(m + ".") or f".{m}." in name for m in config.modules_to_save) and saved[1:] == ours[1:]
            and saved):
        return (f"{shown}: the adapter's task head has {saved[0]} outputs and this task {ours[0]}; evaluate it on "
                "the task (labels) it was trained on")
    rank_dim = 0 if "_A" in name.rsplit(".", 2)[-2] else 1  # lora_A: (r, in); lora_B: (out, r)
    if ".lora_" in name and len(saved) == 2 and len(ours) == 2 and saved[1 - rank_dim] == ours[1 - rank_dim]:
        return (f"{shown}: its rank {saved[rank_dim]} differs from the rank {ours[rank_dim]} adapter_config.json "
                "gives it (r, rank_pattern); the config and the weights of this adapter do not belong together")
    return f"{shown}: the adapter was trained on {source!r}, a different base model; pass that one as --model"


# --- undoing a failed load -----------------------------------------------------------------------------------------

# a module's own containers (children, parameters, buffers, hooks, ...): their contents are saved, not just the object
_CONTAINERS = (dict, set, collections.OrderedDict)


@contextlib.contextmanager
def undone_on_failure(model: nn.Module, values: bool = False):
    """If the block raises, the model is put back as it was before it: every module's attributes and children
    (LoRA layers and copies of saved modules taken out, banks and slots as they were), each parameter's
    requires_grad, the adapters' record (AdapterState). Tensor values are saved only with values=True (an init
    that rewrites the base, PiSSA / OLoRA); otherwise the block must check everything before it copies a value."""
    modules = [(m, dict(vars(m)), {k: copy.copy(v) for k, v in vars(m).items() if type(v) in _CONTAINERS})
               for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    tensors = [(p, p.detach().clone()) for p in model.parameters()] if values else []
    state = adapter_state(model)
    record = (dict(state.configs), state.active, dict(state.originals)) if state is not None else None
    try:
        yield model
    except BaseException:
        for module, attributes, containers in modules:
            vars(module).clear()
            vars(module).update(attributes)
            for key, saved in containers.items():
                attributes[key].clear()
                attributes[key].update(saved)
        for param, flag in grads:
            param.requires_grad_(flag)
        with torch.no_grad():
            for param, value in tensors:
                param.copy_(value)
        if state is not None:
            state.configs.clear()
            state.configs.update(record[0])
            state.active = record[1]
            state.originals.clear()
            state.originals.update(record[2])
        raise

