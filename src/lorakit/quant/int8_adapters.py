"""int8 LoRA adapters (lorakit's "lora-adapt" variant): A and B stored as int8 codes with one scale per row.

    add_lora(model, LoraConfig(r=8, target_modules="all-linear", adapter_dtype="int8"))
    ... train as usual (fp32 master weights, fake-quantized forward) ...
    save_adapter(model, "out")   # int8 codes + fp32 scales: about 3-4x smaller than the fp32 file

Per-row absmax quantization of a (rows, cols) matrix W (rows of A (r, in): r; rows of B (out, r): out):
    scale_i = bf16(max_j |W_ij| / 127)            fp32 value, rounded to bfloat16 precision (see below)
    code_ij = clamp(round(W_ij / scale_i), -127, 127)                 int8
    W_hat_ij = code_ij · scale_i                                      fp32
Storage per element: 8 bits + 32/cols for the scale, so 8 + 32/in for A and 8 + 32/r for B (r = 8: 12 bits).

Training keeps the fp32 A and B as master weights and computes forward with W_hat (fake quantization), with a
straight-through estimator: dL/dW := dL/dW_hat, i.e. W_used = W + (W_hat - W).detach() in value and gradient
(written as W_hat.detach() + (W - W.detach()), which equals W_hat exactly). The trained adapter is therefore
exactly what the int8 file holds.

Why the scale is rounded to bfloat16 precision (8 significant bits): then 127·scale and code·scale are exact in
fp32, so quantizing W_hat again gives back the same scales and codes (quantize∘dequantize is idempotent). A model
loaded from the file (master = W_hat) computes bit for bit the logits of the model that was saved. The rounding
changes a scale by at most 2^-9 relative; a row's largest element may land at code 127 instead of 127.5.

On disk (safetensors, PEFT's key names otherwise): "<path>.lora_A.weight" int8 (r, in), "<path>.lora_A.weight_scale"
fp32 (r,), the same for lora_B; embedding adapters and modules_to_save stay fp32. adapter_config.json says
peft_type "LORAKIT_INT8", so PEFT refuses the file instead of loading int8 codes as if they were weights.
"""
from __future__ import annotations

import torch
from torch import nn

QMAX = 127
PEFT_TYPE = "LORAKIT_INT8"  # adapter_config.json "peft_type" of an int8 adapter
SCALE_SUFFIX = "_scale"  # "<...>.lora_A.weight" -> "<...>.lora_A.weight_scale"
_INT8_KEYS = (".lora_A.weight", ".lora_B.weight")  # LoRALinear tensors that are stored as int8


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) float -> codes (rows, cols) int8 and scales (rows,) fp32 (bf16-representable). Zero rows: 0."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / QMAX).to(torch.bfloat16).float()  # (rows,)
    divisor = scale.clamp(min=torch.finfo(torch.float32).tiny)[:, None]  # a zero row divides 0 by it: code 0
    codes = torch.round(w / divisor).clamp_(-QMAX, QMAX).to(torch.int8)
    return codes, scale


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """codes (rows, cols) int8, scales (rows,) -> (rows, cols) fp32: code · scale (exact in fp32)."""
    return codes.float() * scale[:, None]


def fake_quantize(w: torch.Tensor) -> torch.Tensor:
    """dequantize_rows(quantize_rows(w)) in value, identity in gradient (straight-through estimator)."""
    w_hat = dequantize_rows(*quantize_rows(w)).to(w.dtype)
    return w_hat + (w - w.detach())  # w - w.detach() is exactly 0 and carries dL/dw = dL/dw_hat


def adapter_weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r, in) and B (out, r) of a LoRALinear as its forward uses them: fake-quantized when adapter_dtype is int8."""
    a, b = layer.lora_A.weight, layer.lora_B.weight
    if layer.adapter_dtype == "int8":
        return fake_quantize(a), fake_quantize(b)
    return a, b


def to_int8_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An adapter state dict with every LoRALinear A and B replaced by int8 codes plus a "<key>_scale" entry."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(_INT8_KEYS):
            out[key], out[key + SCALE_SUFFIX] = quantize_rows(tensor)
        else:
            out[key] = tensor
    return out


def from_int8_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of to_int8_state: int8 codes and their scales back to fp32 A and B (the trained values, exactly)."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        if key.endswith(_INT8_KEYS):
            if tensor.dtype != torch.int8 or key + SCALE_SUFFIX not in state:
                raise ValueError(f"int8 adapter: {key} should be int8 codes with a {key + SCALE_SUFFIX} entry")
            tensor = dequantize_rows(tensor, state[key + SCALE_SUFFIX])
        out[key] = tensor
    return out
