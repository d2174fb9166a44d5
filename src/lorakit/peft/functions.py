"""PEFT's module-level helpers: adapter state dicts both ways, prepare_model_for_kbit_training,
inject_adapter_in_model.

    state = get_peft_model_state_dict(peft_model)          # the keys adapter_model.safetensors holds
    set_peft_model_state_dict(other_peft_model, state)
"""
from __future__ import annotations

import torch
from torch import nn

from lorakit.adapters.api import using
from lorakit.inject.inject import add_lora
from lorakit.io.peft_format import PREFIX, adapter_state_dict
from lorakit.layers.saved_modules import param_name
from lorakit.peft.config import LoraConfig
from lorakit.quant.linear import QuantLinear


def _lorakit_model(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def get_peft_model_state_dict(model: nn.Module, state_dict: dict | None = None, adapter_name: str = "default",
                              **_kwargs) -> dict[str, torch.Tensor]:
    """Adapter `adapter_name`'s tensors under the keys of PEFT's adapter file ("base_model.model.<path>...")."""
    base = _lorakit_model(model)
    with using(base, adapter_name):
        return {PREFIX + k: v for k, v in adapter_state_dict(base).items()}


def set_peft_model_state_dict(model: nn.Module, peft_model_state_dict: dict, adapter_name: str = "default",
                              ignore_mismatched_sizes: bool = False, low_cpu_mem_usage: bool = False):
    """Copy a PEFT adapter state dict into adapter `adapter_name`. Returns (missing_keys, unexpected_keys) as
    torch's load_state_dict does; missing keys are the adapter's tensors the dict lacks."""
    base = _lorakit_model(model)
    unexpected = []
    with using(base, adapter_name), torch.no_grad():
        params = dict(base.named_parameters(remove_duplicate=False))
        expected = set(adapter_state_dict(base))
        for key, tensor in peft_model_state_dict.items():
            name = param_name(key.removeprefix(PREFIX), adapter_name, params)
            if name not in params:
                unexpected.append(key)
                continue
            params[name].copy_(tensor.to(params[name].dtype))
            expected.discard(key.removeprefix(PREFIX))
    return nn.modules.module._IncompatibleKeys(sorted(PREFIX + k for k in expected), unexpected)


def prepare_model_for_kbit_training(model: nn.Module, use_gradient_checkpointing: bool = True,
                                    gradient_checkpointing_kwargs: dict | None = None) -> nn.Module:
    """PEFT's: freeze every parameter, cast 16-bit ones to float32, and for a quantized model (bitsandbytes or
    lorakit's QuantLinear) make the inputs require grad and switch gradient checkpointing on."""
    kbit = getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False) or any(
        isinstance(m, QuantLinear) for m in model.modules())
    for param in model.parameters():
        param.requires_grad = False
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.to(torch.float32)
    if kbit and use_gradient_checkpointing:
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant", True):
            model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)
    return model


def inject_adapter_in_model(peft_config: LoraConfig, model: nn.Module, adapter_name: str = "default",
                            low_cpu_mem_usage: bool = False, state_dict: dict | None = None) -> nn.Module:
    """LoRA layers into `model` in place, without a PeftModel around it; only the adapter trains."""
    add_lora(model, peft_config.to_lorakit(), adapter_name)
    if state_dict is not None:
        set_peft_model_state_dict(model, state_dict, adapter_name)
    return model


__all__ = ["get_peft_model_state_dict", "set_peft_model_state_dict", "prepare_model_for_kbit_training",
           "inject_adapter_in_model"]
