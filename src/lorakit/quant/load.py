"""Quantize while loading: a QLoRA base model built from a safetensors checkpoint one tensor at a time.

    model = load_quantized("path/to/llama", QuantConfig(kind="nf4", double_quant=True))
    model = load_quantized(path, config, model_class=AutoModelForSequenceClassification, model_kwargs={"num_labels": 2})

`from_pretrained` followed by `quantize_model` holds the whole model in full precision first: peak memory is the
fp32 model. Here the model is built on the meta device (accelerate's init_empty_weights: parameters take no memory;
buffers such as rotary frequencies are real), then every tensor of every shard is read lazily with
`read_safetensors` (plain file reads into fresh tensors: a memory map would add every page read to the
process's resident set until the kernel evicts it) and placed:
    the weight of a Linear / Conv1D that quantize_model would quantize  -> a QuantLinear (QuantLinear.from_linear),
                                                                          the full-precision tensor dropped at once
    any other tensor                                                     -> the module's parameter / buffer
Peak memory ≈ the quantized model + one full-precision tensor. Each weight is cast to the dtype from_pretrained
gives the model before it is quantized, so codes and constants are bit-identical to quantize_model after a full
load (tests/test_quant_load.py). Afterwards the tied weights are tied (tie_weights), parameters the checkpoint
lacks (a new task head) are initialized by the model's own initializer, and a target layer whose weight came
only so (a tied lm_head that is not skipped, a new head) is quantized then.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers as tf
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorakit.config import QuantConfig
from lorakit.quant.linear import QuantLinear, is_skipped

INDEX = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}
SINGLE = "model.safetensors"


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The checkpoint's safetensors shards (from the index when sharded); [] when it has none."""
    path = Path(model_dir)
    if (path / INDEX).is_file():
        shards = sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values()))
        return [path / s for s in shards]
    return [path / SINGLE] if (path / SINGLE).is_file() else []


def load_quantized(model_dir: str | Path, quant_config: QuantConfig, model_class: type = tf.AutoModelForCausalLM,
                   model_kwargs: dict | None = None, new_head: bool = False) -> nn.Module:
    """The model in `model_dir` (config.json + safetensors) with its Linear layers quantized as they are read.

    model_class: a transformers Auto class (or model class) with from_config; model_kwargs: config overrides
    (e.g. num_labels). new_head: a checkpoint tensor whose shape differs from the model's (a head for other
    labels) is skipped and the parameter initialized fresh; otherwise that is a ValueError.
    Raises ValueError if the directory has no safetensors checkpoint.
    """
    files = safetensors_files(model_dir)
    if not files:
        raise ValueError(f"{model_dir} has no {SINGLE} or {INDEX}; quantizing while loading reads safetensors "
                         "(re-save the model with save_pretrained(directory, safe_serialization=True))")
    from accelerate import init_empty_weights  # here: `import lorakit` stays free of accelerate's import time

    config = tf.AutoConfig.from_pretrained(model_dir, **(model_kwargs or {}))
    with init_empty_weights(include_buffers=False):
        model = model_class.from_config(config)
    targets = _quantize_targets(model, quant_config)
    prefix = model.base_model_prefix
    names = set(model.state_dict())
    loaded = 0
    for file in files:
        for key, tensor in read_safetensors(file):
            name = key if key in names or not prefix else f"{prefix}.{key}"
            if name not in names:
                continue  # a tensor the model does not use (from_pretrained drops it too)
            _place(model, name, tensor, targets, quant_config, new_head)
            loaded += 1
    if not loaded:
        raise ValueError(f"no tensor of {model_dir} matches a {type(model).__name__} parameter name")
    model.tie_weights()
    _init_missing(model)
    quantize_model_rest(model, targets, quant_config)
    return model.eval()


def read_safetensors(file: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor of a safetensors file, in file order, each read on demand into its own memory.

    The format: an 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
    [begin, end]}} (offsets from the end of the header), then the raw little-endian data.
    """
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            tensor = torch.empty(info["shape"], dtype=dtype)
            f.seek(8 + length + begin)
            if end > begin:
                f.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy()))
            yield name, tensor


def _quantize_targets(model: nn.Module, quant_config: QuantConfig) -> set[str]:
    """Module paths quantize_model would turn into QuantLinear (same rule: Linear / Conv1D not skipped)."""
    return {name for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, Conv1D)) and not is_skipped(name, quant_config.skip_modules)}


def _place(model: nn.Module, name: str, tensor: torch.Tensor, targets: set[str], quant_config: QuantConfig,
           new_head: bool) -> None:
    """Put one checkpoint tensor into the meta model: quantize a target weight, else set the parameter/buffer."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, QuantLinear):  # the bias of a layer whose weight came first
        module.bias = nn.Parameter(tensor.to(module.bias.dtype), requires_grad=False)
        return
    old = getattr(module, attr)
    if tuple(tensor.shape) != tuple(old.shape):
        if new_head:
            return  # left on the meta device: initialized fresh by _init_missing
        raise ValueError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                         f"{tuple(old.shape)}")
    value = tensor.to(old.dtype)  # the dtype from_pretrained would load it in
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, attr, value)
    if module_name in targets and attr == "weight":
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, QuantLinear.from_linear(module, quant_config))
        module.weight = None  # drop the full-precision weight now


def quantize_model_rest(model: nn.Module, targets: set[str], quant_config: QuantConfig) -> None:
    """Quantize target layers still in full precision after tying (their weight was another module's)."""
    modules = dict(model.named_modules())
    for name in sorted(targets):
        layer = modules[name]
        if isinstance(layer, QuantLinear) or layer.weight.is_meta:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, QuantLinear.from_linear(layer, quant_config))


def _init_missing(model: nn.Module) -> None:
    """Materialize parameters the checkpoint lacked (a new task head) with the model's own initializer."""
    for name, module in model.named_modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(t.is_meta for t in own):
            if isinstance(module, QuantLinear):
                raise ValueError(f"checkpoint has no weight for the quantized layer {name}")
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)  # transformers' per-module initializer, as from_pretrained uses
