"""lorakit: LoRA and QLoRA for Hugging Face transformers, written from scratch.

    from lorakit import LoraConfig, add_lora, save_adapter, load_adapter, merge_and_unload
    model = add_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))

The names below are imported when first used (PEP 562), so `import lorakit` and `lorakit --help` do not pay for
torch and transformers until a name that needs them is touched.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "LoraConfig": "config",
    "QuantConfig": "config",
    "add_lora": "inject",
    "save_adapter": "adapter",
    "load_adapter": "adapter",
    "save_adapters": "adapter",
    "load_adapters": "adapter",
    "set_adapter": "named",
    "delete_adapter": "named",
    "adapter_names": "named",
    "active_adapters": "named",
    "adapter_config": "named",
    "mixed_batch": "named",
    "add_weighted_adapter": "combine",
    "merge_lora": "inject",
    "unmerge_lora": "inject",
    "merge_and_unload": "inject",
    "disable_lora": "inject",
    "parameter_report": "params",
    "lora_layers": "lora",
    "LoRALinear": "lora",
    "LoRAEmbedding": "lora",
    "quantize_model": "quant_linear",
    "dequantize_model": "quant_linear",
    "QuantLinear": "quant_linear",
    "fast_dropout": "fast_dropout",
    "load_quantized": "quant_load",
    "DoRALinear": "dora",
    "apply_loftq": "lora_init",
    "loftq_quantized_base": "loftq_base",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lorakit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """Python binds a submodule to its package's attribute when the submodule is first imported; for the function
    `fast_dropout`, whose module has the same name, that would replace the function by the module. The public
    function wins, as it did when this file imported it eagerly (the module stays in sys.modules)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
