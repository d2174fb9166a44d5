"""The quantized base of a QLoRA + LoftQ run, rebuilt for reloading its adapter.

    model = loftq_quantized_base(full_precision_model, cfg.lora_config(), cfg.quant_config())
    load_adapter(model, "runs/x/adapter")      # the trained adapter over the Q_T it was trained with

LoftQ (lora_init.apply_loftq) trains the adapter over Q_T = q(W0 - s·B_{T-1}·A_{T-1}), not over q(W0): reloading
such an adapter over a plainly quantized base computes other logits. Q_T depends only on W0, r, alpha, the
quantization settings and T, and every step (quantize, SVD) is deterministic, so it is recomputed here from the
full-precision base instead of being saved (the adapter stays a PEFT-format LoRA adapter). The price is T SVDs
per adapted layer at load: 17 s for MiniLM at T = 5 on one shared CPU core. The device and library versions must
match for Q_T to be bit-equal (another SVD implementation may round a few NF4 codes the other way).
"""
from __future__ import annotations

from torch import nn

from lorakit.config import LoraConfig, QuantConfig
from lorakit.inject.inject import add_lora, forget_adapters, lora_layers
from lorakit.init.family import apply_loftq


def loftq_quantized_base(model: nn.Module, lora_config: LoraConfig, quant_config: QuantConfig) -> nn.Module:
    """`model` (full precision, untouched by LoRA) with every layer `lora_config` adapts replaced by Q_T of LoftQ
    (the layer training quantized), and the others quantized as quantize_model does. No LoRA layer is left:
    load_adapter then injects the saved adapter. Returns `model`."""
    if lora_config.init != "loftq":
        raise ValueError(f"loftq_quantized_base: lora_config.init is {lora_config.init!r}, not 'loftq'")
    add_lora(model, lora_config)  # the adapted layers, their r and scaling, as in training
    apply_loftq(model, quant_config)  # base layers <- Q_T (the LoRA factors it computes are discarded)
    for path, layer in lora_layers(model):
        model.set_submodule(path, layer.base_layer)  # take the LoRA wrapper out again: the QuantLinear stays
    forget_adapters(model)
    return model.requires_grad_(False)
