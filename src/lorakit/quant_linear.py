"""QuantLinear: a frozen linear layer whose weight is stored quantized (NF4 / FP4 / int8), and
quantize_model, which swaps a model's nn.Linear (and GPT-2 Conv1D) layers for it in place.

    model = quantize_model(model, QuantConfig(kind="nf4", double_quant=True))   # QLoRA base model
    layer = QuantLinear.from_linear(nn.Linear(64, 32), QuantConfig(kind="int8"))
    y = layer(x)              # dequantize to compute_dtype, F.linear, result in x's dtype
    w = layer.dequantize()    # (out_features, in_features) fp32

Codes and constants are buffers (in state_dict, never trained); the bias is a Parameter with
requires_grad=False so LoRA's bias="all" can unfreeze it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import QuantConfig
from .quant import QuantizedTensor, dequantize, quantize, requantize_error  # noqa: F401  (re-exported)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class QuantLinear(nn.Module):
    """y = x · dequantize(W)ᵀ + b with W (out_features, in_features) kept quantized per quant_config."""

    def __init__(self, quantized: QuantizedTensor, bias: torch.Tensor | None, quant_config: QuantConfig):
        super().__init__()
        if len(quantized.shape) != 2:
            raise ValueError(f"QuantLinear needs a 2-D (out, in) weight, got shape {quantized.shape}")
        self.out_features, self.in_features = quantized.shape
        self.quant_config = quant_config
        self._kind, self._block_size, self._bits = quantized.kind, quantized.block_size, quantized.bits
        for name, tensor in quantized.tensors().items():  # qweight, absmax | absmax_q, absmax_scale, absmax_offset
            self.register_buffer(name, tensor)
        bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.register_parameter("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Module, config: QuantConfig) -> QuantLinear:
        """Quantize an nn.Linear (weight (out, in)) or a transformers Conv1D (weight (in, out), transposed here)."""
        if isinstance(linear, QuantLinear):
            raise ValueError("layer is already a QuantLinear; quantize the full-precision nn.Linear instead")
        if isinstance(linear, nn.Linear):
            weight = linear.weight.detach()  # (out, in)
        elif isinstance(linear, Conv1D):
            weight = linear.weight.detach().t()  # (in, out) -> (out, in)
        else:
            raise ValueError(f"QuantLinear.from_linear expects nn.Linear or Conv1D, got {type(linear).__name__}")
        quantized = quantize(weight, config.kind, config.block_size, config.double_quant, config.int8_blockwise)
        return cls(quantized, linear.bias, config)

    def _quantized(self) -> QuantizedTensor:
        b = self._buffers
        return QuantizedTensor(
            self._kind, (self.out_features, self.in_features), self._block_size, self._bits,
            qweight=b["qweight"], absmax=b.get("absmax"), absmax_q=b.get("absmax_q"),
            absmax_scale=b.get("absmax_scale"), absmax_offset=b.get("absmax_offset"),
        )  # fmt: skip

    def dequantize(self) -> torch.Tensor:
        """The weight as fp32, shape (out_features, in_features)."""
        return dequantize(self._quantized(), torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _DTYPES[self.quant_config.compute_dtype]
        weight = self.dequantize().to(dtype)  # (out, in), rebuilt each call: no full-precision copy kept
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), weight, bias).to(x.dtype)  # (..., out)

    def storage_bytes(self) -> int:
        """Bytes of the quantized weight (codes + constants); the bias is not counted."""
        return self._quantized().nbytes()

    def extra_repr(self) -> str:
        c = self.quant_config
        detail = f"double_quant={c.double_quant}" if c.kind != "int8" else f"blockwise={c.int8_blockwise}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, kind={c.kind}, "
            f"block_size={c.block_size}, {detail}, bias={self.bias is not None}"
        )


def _skipped(name: str, skip_modules: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip_modules)


def is_quantized(model: nn.Module) -> bool:
    """True if any submodule is a QuantLinear."""
    return any(isinstance(m, QuantLinear) for m in model.modules())


def quantize_model(model: nn.Module, quant_config: QuantConfig) -> nn.Module:
    """Replace every nn.Linear / Conv1D not named in quant_config.skip_modules (exact path or ".name"
    suffix) by a QuantLinear, in place, one layer at a time: each original weight is released as soon
    as its layer is swapped, so peak memory holds one full-precision layer at most on top of the model.
    Returns the model. Raises ValueError if the model already holds QuantLinear layers.
    """
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            raise ValueError(
                f"model is already quantized (QuantLinear at {name!r}); quantize_model expects a full-precision model"
            )
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and not _skipped(name, quant_config.skip_modules)
    ]  # names only: holding the modules would keep their weights alive
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, QuantLinear.from_linear(getattr(parent, child), quant_config))
    return model


def check_state_dict_quantized(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise a clear ValueError if state_dict and model disagree on which layers are quantized.

    Call before model.load_state_dict(state_dict): a quantized checkpoint holds "<layer>.qweight" where a
    full-precision model has "<layer>.weight", and vice versa.
    """
    quantized_keys = sorted(k for k in state_dict if k.endswith(".qweight"))
    model_keys = set(model.state_dict())
    if quantized_keys and not is_quantized(model):
        raise ValueError(
            f"the state dict holds quantized weights ({len(quantized_keys)} layers, e.g. {quantized_keys[0]!r}) "
            "but the model is not quantized; call quantize_model(model, quant_config) with the checkpoint's "
            "QuantConfig before loading"
        )
    for key in quantized_keys:
        if key not in model_keys:
            raise ValueError(f"the state dict quantizes {key[:-8]!r} but the model has no quantized layer there")
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear) and f"{name}.weight" in state_dict:
            raise ValueError(
                f"the model is quantized but the state dict holds the full-precision weight {name + '.weight'!r}; "
                "load full-precision weights before quantize_model"
            )
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            expected = {f"{name}.{b}" for b in module._buffers}
            found = {k for k in state_dict if k.rpartition(".")[0] == name and k != f"{name}.bias"}
            if found and found != expected:
                raise ValueError(
                    f"quantization settings differ at {name!r}: model stores {sorted(expected)}, "
                    f"state dict has {sorted(found)} (double_quant or kind mismatch?)"
                )


def quantized_bits_per_parameter(model: nn.Module) -> float:
    """Average storage bits per base-linear weight parameter over the model's QuantLinear layers."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    params = sum(m.in_features * m.out_features for m in layers)
    return 8 * sum(m.storage_bytes() for m in layers) / params if params else math.nan
