"""lorakit: LoRA and QLoRA for Hugging Face transformers, written from scratch.

    from lorakit import LoraConfig, add_lora, save_adapter, load_adapter, merge_and_unload
    model = add_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))

The names below are imported when first used (PEP 562), so `import lorakit` and `lorakit --help` do not pay for
torch and transformers until a name that needs them is touched.
"""
from __future__ import annotations

import importlib as _importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "LoraConfig": "config",
    "QuantConfig": "config",
    "add_lora": "inject.inject",
    "save_adapter": "io.peft_format",
    "load_adapter": "io.peft_format",
    "save_adapters": "io.peft_format",
    "load_adapters": "io.peft_format",
    "set_adapter": "adapters.api",
    "delete_adapter": "adapters.api",
    "adapter_names": "adapters.api",
    "active_adapters": "adapters.api",
    "adapter_config": "adapters.api",
    "mixed_batch": "adapters.api",
    "add_weighted_adapter": "combine.api",
    "merge_lora": "inject.inject",
    "unmerge_lora": "inject.inject",
    "merge_and_unload": "inject.inject",
    "disable_lora": "inject.inject",
    "parameter_report": "params",
    "lora_layers": "layers.lora",
    "LoRALinear": "layers.lora",
    "LoRAEmbedding": "layers.lora",
    "quantize_model": "quant.linear",
    "dequantize_model": "quant.linear",
    "QuantLinear": "quant.linear",
    "fast_dropout": "layers.dropout",
    "load_quantized": "quant.load",
    "DoRALinear": "layers.dora",
    "apply_loftq": "init.family",
    "loftq_quantized_base": "io.loftq_base",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lorakit' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({"__version__", *_EXPORTS})
