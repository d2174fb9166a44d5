"""QuantLinear: a frozen linear layer whose weight is stored quantized (NF4 / FP4 / int8), and
quantize_model, which swaps a model's nn.Linear (and GPT-2 Conv1D) layers for it in place.

    model = quantize_model(model, QuantConfig(kind="nf4", double_quant=True))   # QLoRA base model
    layer = QuantLinear.from_linear(nn.Linear(64, 32), QuantConfig(kind="int8"))
    y = layer(x)              # dequantize to compute_dtype, x·Wᵀ + b, result in x's dtype
    w = layer.dequantize()    # (out_features, in_features) fp32

Codes and constants are buffers (in state_dict, never trained); the bias is a Parameter with
requires_grad=False so LoRA's bias="all" can unfreeze it.

Memory in training: `QuantLinearFunction` dequantizes W inside forward, uses it and drops it; backward
dequantizes it again from the codes. Autograd therefore keeps no dense copy of the frozen weight (composing
`F.linear(x, layer.dequantize())` would keep one fp32 (out, in) weight per layer alive until backward: a
full-precision copy of the model during training). The same node computes a LoRA branch for QLoRA
(`qlora_linear`, called by LoRALinear), with the cheap dropout mask and in-place accumulation of fused.py.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorakit.config import QuantConfig, path_matches
from lorakit.low_rank import add_low_rank_grad_x, low_rank_backward, low_rank_forward
from lorakit.quant.codes import QuantizedTensor, dequantize, quantize

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class QuantLinearFunction(torch.autograd.Function):
    """h = x·dq(W)ᵀ + b  [+ s·B·A·dropout_p(x)]  with W kept quantized: backward rebuilds dq(W) from the codes.

    Shapes: x (..., in) -> h (..., out); W (out, in) as a QuantizedTensor; b (out,); A (r, in); B (out, r);
    N = prod(...). lora_a = lora_b = None: the plain quantized linear layer. Saved for backward: the codes
    and constants (the layer's own buffers, no new memory), and with LoRA x, A, B, x·Aᵀ (N, r) and a 1-byte
    dropout mask, as in fused.py. The frozen W gets no gradient; b one only if it requires it.
    """

    @staticmethod
    def forward(ctx, x, bias, qt: QuantizedTensor, dtype, lora_a, lora_b, scaling: float, p: float):
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        weight = dequantize(qt, dtype)  # (out, in), freed when forward returns
        h = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()  # (N, out)
        del weight
        keep, inv_q, xa = None, 1.0, None
        if lora_a is not None:  # h += s·B·A·dropout(x), fused.py's low-rank branch
            xa, keep, inv_q = low_rank_forward(x2, h, lora_a, lora_b, scaling, p)
        names = tuple(qt.tensors())
        x_saved = x if lora_a is not None else None  # only grad_A needs x
        ctx.save_for_backward(x_saved, lora_a, lora_b, xa, keep, *qt.tensors().values())
        ctx.qt = dataclasses.replace(qt, **{n: None for n in names})  # kind, shape, block size: no tensors
        ctx.names, ctx.dtype, ctx.scaling, ctx.inv_q = names, dtype, scaling, inv_q
        return h.view(*x.shape[:-1], h.shape[-1])

    @staticmethod
    def backward(ctx, grad_h):
        x, lora_a, lora_b, xa, keep, *codes = ctx.saved_tensors
        s, inv_q = ctx.scaling, ctx.inv_q
        g = grad_h.reshape(-1, grad_h.shape[-1])  # (N, out)
        grad_x = grad_bias = grad_a = grad_b = grad_xa = None
        if lora_a is not None:  # fused.py's low-rank branch
            x2 = x.reshape(-1, x.shape[-1])  # (N, in)
            grad_xa, grad_a, grad_b, keep = low_rank_backward(g, x2, lora_a, lora_b, xa, keep, s, inv_q,
                                                              ctx.needs_input_grad[4], ctx.needs_input_grad[5])
        if ctx.needs_input_grad[0]:
            qt = dataclasses.replace(ctx.qt, **dict(zip(ctx.names, codes)))
            grad_x = g @ dequantize(qt, ctx.dtype)  # (N, in): dq(W) rebuilt, used, dropped
            if grad_xa is not None:
                add_low_rank_grad_x(grad_x, grad_xa, lora_a, keep, inv_q)
            grad_x = grad_x.view(*grad_h.shape[:-1], grad_x.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_bias = g.sum(0)
        return grad_x, grad_bias, None, None, grad_a, grad_b, None, None


class QuantLinear(nn.Module):
    """y = x · dequantize(W)ᵀ + b with W (out_features, in_features) kept quantized per quant_config."""

    def __init__(self, quantized: QuantizedTensor, bias: torch.Tensor | None, quant_config: QuantConfig,
                 from_conv1d: bool = False):
        super().__init__()
        if len(quantized.shape) != 2:
            raise ValueError(f"QuantLinear needs a 2-D (out, in) weight, got shape {quantized.shape}")
        self.out_features, self.in_features = quantized.shape
        self.quant_config = quant_config
        self.from_conv1d = from_conv1d  # the layer it replaced was a GPT-2 Conv1D: to_dense() gives one back
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
        return cls(quantized, linear.bias, config, from_conv1d=isinstance(linear, Conv1D))

    def to_dense(self, weight: torch.Tensor | None = None) -> nn.Module:
        """A frozen fp32 layer of the kind this one replaced (nn.Linear, or Conv1D with its (in, out) weight)
        holding `weight` ((out, in); default: the dequantized weight) and the bias."""
        weight = self.dequantize() if weight is None else weight.float()  # (out, in)
        if self.from_conv1d:
            dense = Conv1D(self.out_features, self.in_features)
            dense.weight.data = weight.t().contiguous()  # (in, out), as GPT-2 stores it
        else:
            dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
            dense.weight.data = weight
        if self.bias is not None:
            dense.bias.data = self.bias.detach().float().clone()
        return dense.to(weight.device).requires_grad_(False)

    def _quantized(self) -> QuantizedTensor:
        b = {**self._buffers, **self._parameters}  # codes are buffers, or frozen parameters under FSDP (fsdp.py)
        return QuantizedTensor(
            self._kind, (self.out_features, self.in_features), self._block_size, self._bits,
            qweight=b["qweight"], absmax=b.get("absmax"), absmax_q=b.get("absmax_q"),
            absmax_scale=b.get("absmax_scale"), absmax_offset=b.get("absmax_offset"),
        )  # fmt: skip

    @property
    def compute_dtype(self) -> torch.dtype:
        return _DTYPES[self.quant_config.compute_dtype]

    def dequantize(self) -> torch.Tensor:
        """The weight as fp32, shape (out_features, in_features)."""
        return dequantize(self._quantized(), torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., in) -> (..., out), in x's dtype
        dtype = self.compute_dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        h = QuantLinearFunction.apply(x.to(dtype), bias, self._quantized(), dtype, None, None, 1.0, 0.0)
        return h.to(x.dtype)

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


def qlora_linear(
    x: torch.Tensor, layer: QuantLinear, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, p: float
) -> torch.Tensor:
    """h = dq(W)·x + b + scaling·B·A·dropout_p(x) as one node that keeps no dense W (QLoRA's LoRALinear path).

    x, lora_a and lora_b must have the layer's compute dtype. Shapes: x (..., in), A (r, in), B (out, r).
    """
    bias = None if layer.bias is None else layer.bias.to(layer.compute_dtype)
    return QuantLinearFunction.apply(x, bias, layer._quantized(), layer.compute_dtype, lora_a, lora_b, scaling, p)


def is_skipped(name: str, skip_modules: tuple[str, ...]) -> bool:
    """Is the module at path `name` kept in full precision by quantize_model (QuantConfig.skip_modules)?"""
    return any(path_matches(name, s) for s in skip_modules)


def is_quantized(model: nn.Module) -> bool:
    """True if any submodule is a QuantLinear."""
    return any(isinstance(m, QuantLinear) for m in model.modules())


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every QuantLinear by the dense fp32 layer it stands for (QuantLinear.to_dense), in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.to_dense())
    return model


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
        if isinstance(module, (nn.Linear, Conv1D)) and not is_skipped(name, quant_config.skip_modules)
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
