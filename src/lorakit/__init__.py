"""lorakit: LoRA and QLoRA for Hugging Face transformers, written from scratch.

    from lorakit import LoraConfig, add_lora, save_adapter, load_adapter, merge_and_unload
    model = add_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
"""
from .adapter import load_adapter, save_adapter
from .config import LoraConfig, QuantConfig
from .inject import add_lora, disable_lora, lora_layers, merge_and_unload, merge_lora, unmerge_lora
from .lora import LoRAEmbedding, LoRALinear
from .dora import DoRALinear
from .lora_init import apply_loftq
from .params import parameter_report

__version__ = "0.1.0"

__all__ = [
    "LoraConfig",
    "QuantConfig",
    "add_lora",
    "save_adapter",
    "load_adapter",
    "merge_lora",
    "unmerge_lora",
    "merge_and_unload",
    "disable_lora",
    "parameter_report",
    "lora_layers",
    "LoRALinear",
    "LoRAEmbedding",
    "DoRALinear",
    "apply_loftq",
]
