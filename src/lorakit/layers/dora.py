"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024, eq. 5 and section 4.3).

    W' = m ⊙ (W0 + s·B·A) / n,     n = ||W0 + s·B·A||_c  (one norm per output unit), detached in backward
    h  = W'·x + b = g ⊙ (W0·x + s·B·A·x) + b,   g = m / n   (out,)

    W0: (out, in) (GPT-2 Conv1D stores it (in, out)); A: (r, in); B: (out, r); m: (out,) initialised to ||W0||_c,
    so g = 1 and DoRA starts exactly at the base layer (B = 0). The paper's "column" norm is PEFT's row norm of the
    (out, in) weight: one entry per output feature, `lora_magnitude_vector` on disk.

Speed (what PEFT does not do):
  * n is computed without the dense (out, in) update B·A:
        n² = ||W0||²_row + 2s·rowsum((W0·Aᵀ) ⊙ B) + s²·rowsum((B·(A·Aᵀ)) ⊙ B)
    ||W0||²_row is a vector norm over W0, W0·Aᵀ is (out, r): O(out·in·r) work and no (out, in) temporary.
  * `DoRALinearFunction` is one autograd node: the LoRA node of fused.py (low_rank.py's pieces) with g folded into
    W0 and B (transient (out, in) and (out, r) copies), so no extra pass over the (N, out) activations but dL/dm's.
    Backward saves what LoRA saves plus the output h (out-sized, shared with the next op, which saves its input
    anyway) instead of a second copy of the pre-scale output; dL/dm = Σ_N dL/dh ⊙ (h - b) / m.
  * In eval mode (or without grad) n is cached and reused until A, B or W0 change (their version counters).
Dropout (p > 0) applies to the low-rank branch input only, as in LoRA: h = g ⊙ (W0·x + s·B·A·drop(x)) + b.
(PEFT also multiplies (g - 1)·W0·drop(x), one more dense matmul; both agree whenever dropout is off, as in eval.)
QDoRA (QuantLinear base) composes qlora_linear (no dense W0 kept for backward) with the scale g.
"""
from __future__ import annotations

import torch
from torch import nn

from lorakit.low_rank import add_low_rank_grad_x, low_rank_backward, low_rank_forward
from lorakit.layers.lora import LoRALinear
from lorakit.quant.linear import QuantLinear, qlora_linear


def _dense_w0(layer: LoRALinear) -> torch.Tensor:
    """W0 as (out, in) in fp32 (dequantized for QuantLinear; a transposed view for Conv1D)."""
    base = layer.base_layer
    if isinstance(base, QuantLinear):
        return base.dequantize()
    w = base.weight.float()
    return w.t() if layer.fan_in_fan_out else w


@torch.no_grad()
def dora_norm(w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: float) -> torch.Tensor:
    """n = ||W0 + s·B·A||_row (out,) from W0 (out, in), A (r, in), B (out, r): see the module docstring."""
    a, b = a.float(), b.float()
    w0_sq = torch.linalg.vector_norm(w0, dim=1).square()  # ||W0||²_row: (out,), no (out, in) temporary
    cross = ((w0 @ a.t()) * b).sum(1)  # rowsum((W0·Aᵀ) ⊙ B): (out,)
    quad = ((b @ (a @ a.t())) * b).sum(1)  # rowsum((B·A·Aᵀ) ⊙ B) = ||B·A||²_row: (out,)
    return (w0_sq + 2 * s * cross + s * s * quad).clamp_min(0).sqrt()


class DoRALinearFunction(torch.autograd.Function):
    """h = g ⊙ (W0·x + s·B·A·drop(x)) + b with g = m / n, n given (detached). Shapes as fused.py; m, n (out,).

    g is folded into the (out, ·) operands, g ⊙ (W0·x) = (g ⊙ W0)·x and g ⊙ (B·xa) = (g ⊙ B)·xa, so no pass
    over an (N, out) activation is added to LoRA's: the scaled copies of W0 (out, in) and B (out, r) are
    transient (freed after the matmul; N = 4096 tokens make an (N, out) pass 10x the work of an (out, in) one)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, magnitude, norm, scaling, p, fan_in_fan_out):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (N, in)
        g = magnitude / norm  # (out,)
        w_t = weight * g if fan_in_fan_out else weight * g[:, None]  # g ⊙ W0 (a transient copy)
        w_t = w_t if fan_in_fan_out else w_t.t()  # (in, out) view
        h = torch.addmm(bias, x2, w_t) if bias is not None else x2 @ w_t  # (N, out) = g ⊙ (W0·x) + b
        del w_t
        # h += s·(g ⊙ B)·A·drop(x) = g ⊙ (s·B·A·drop(x)): h = g ⊙ (W0·x + s·B·A·drop(x)) + b
        xa, keep, inv_q = low_rank_forward(x2, h, lora_a, lora_b * g[:, None], scaling, p)
        ctx.save_for_backward(x, weight, bias, lora_a, lora_b, magnitude, g, xa, keep, h)
        ctx.scaling, ctx.inv_q, ctx.fan_in_fan_out = scaling, inv_q, fan_in_fan_out
        return h.view(*shape[:-1], h.shape[-1])

    @staticmethod
    def backward(ctx, grad_h):
        x, weight, bias, lora_a, lora_b, magnitude, g, xa, keep, h = ctx.saved_tensors
        s, inv_q = ctx.scaling, ctx.inv_q
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        gy = grad_h.reshape(-1, grad_h.shape[-1])  # (N, out)
        grad_m = grad_bias = grad_a = grad_b = grad_x = None
        gy_sum = gy.sum(0) if bias is not None else None  # (out,)
        if ctx.needs_input_grad[5]:  # dL/dm = Σ_N gy ⊙ u / n = Σ_N gy ⊙ (h - b) / m
            # = (Σ_N gy ⊙ h - b ⊙ Σ_N gy) / m: one (N, out) temporary, not two
            grad_m = (gy * h).sum(0)
            grad_m = (grad_m - bias * gy_sum if bias is not None else grad_m) / magnitude
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = gy_sum
        # dL/du = g ⊙ gy; from here on LoRA's backward with g folded into B and W0: dL/d(xa) = s·gy·(g ⊙ B) and
        # dL/dA are LoRA's; dL/dB = g ⊙ (LoRA's dL/dB) is its own product below, g applied before s
        grad_xa, grad_a, _, keep = low_rank_backward(gy, x2, lora_a, lora_b * g[:, None], xa, keep, s, inv_q,
                                                     ctx.needs_input_grad[3], False)
        if ctx.needs_input_grad[4]:
            grad_b = (xa.t() @ gy).t().mul(g[:, None]).mul_(s)  # (out, r) = s·(g ⊙ gy)ᵀ·xa
        if ctx.needs_input_grad[0]:
            w = weight.t() if ctx.fan_in_fan_out else weight  # (out, in)
            grad_x = gy @ (w * g[:, None])  # (N, in) = (g ⊙ gy)·W0, with g ⊙ W0 transient
            add_low_rank_grad_x(grad_x, grad_xa, lora_a, keep, inv_q)
            grad_x = grad_x.view(x.shape)
        return grad_x, None, grad_bias, grad_a, grad_b, grad_m, None, None, None, None


class DoRALinear(LoRALinear):
    """LoRALinear plus a trainable magnitude m (out,): h = m/||W0 + s·B·A||_row ⊙ (W0·x + s·B·A·x) + b.
    Several DoRA adapters on one layer are used one at a time (set_adapter and mixed_batch refuse sums and mixes)."""

    ADAPTER_FIELDS = (*LoRALinear.ADAPTER_FIELDS, "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 init: str = "gaussian"):
        super().__init__(base_layer, r, alpha, dropout, use_rslora, init)
        self._norm_cache: tuple[tuple, torch.Tensor] | None = None
        norm = self.weight_norm()
        # Saved as "<path>.lora_magnitude_vector", PEFT's key.
        self.lora_magnitude_vector = nn.Parameter(norm.to(self.lora_A.weight.dtype))  # m = ||W0 + s·B·A||_row
        self._merge_scale: torch.Tensor | None = None  # g used by merge(), for unmerge()

    def weight_norm(self) -> torch.Tensor:
        """n = ||W0 + s·B·A||_row (out,), detached; cached while nothing trains (eval mode or no grad)."""
        a, b = self.lora_A.weight, self.lora_B.weight
        base = self.base_layer
        w = base.qweight if isinstance(base, QuantLinear) else base.weight
        key = (a._version, b._version, w._version, a.data_ptr(), b.data_ptr(), w.data_ptr())
        cacheable = not self.training or not torch.is_grad_enabled()
        if cacheable and self._norm_cache is not None and self._norm_cache[0] == key:
            return self._norm_cache[1]
        norm = dora_norm(_dense_w0(self), a, b, self.scaling)
        self._norm_cache = (key, norm) if cacheable else None
        return norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        if self.merged or self.disabled:
            return self.base_layer(x)
        base, m = self.base_layer, self.lora_magnitude_vector
        a, b = self.lora_A.weight, self.lora_B.weight
        norm = self.weight_norm().to(m.dtype)
        p = self.dropout if self.training else 0.0
        same = x.dtype == a.dtype and not torch.is_autocast_enabled(x.device.type)
        if not isinstance(base, QuantLinear) and same and x.dtype == base.weight.dtype:
            return DoRALinearFunction.apply(x, base.weight, base.bias, a, b, m, norm, self.scaling, p,
                                            self.fan_in_fan_out)
        g = m / norm  # (out,)
        if isinstance(base, QuantLinear) and same and x.dtype == base.compute_dtype:
            u = qlora_linear(x, base, a, b, self.scaling, p)  # W0·x + b + s·B·A·drop(x), no dense W0 kept
        else:  # general path (autocast, mixed dtypes): plain ops
            u = base(x) + self.adapter_output(x, self.adapter_name).to(x.dtype)
        bias = base.bias
        if bias is None:
            return u * g.to(u.dtype)
        return u * g.to(u.dtype) + (1 - g).to(u.dtype) * bias.to(u.dtype)  # g ⊙ (u - b) + b

    def train(self, mode: bool = True):
        self._norm_cache = None
        return super().train(mode)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """W' - W0 in fp32, shaped like the base weight: what merging adds to W0 (used by merge_and_unload)."""
        w0 = _dense_w0(self)  # (out, in)
        g = (self.lora_magnitude_vector.float() / self.weight_norm().float())[:, None]  # (out, 1)
        delta = g * (w0 + self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())) - w0
        return delta.t() if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- g ⊙ (W0 + s·B·A); g is kept so unmerge can invert it. Idempotent."""
        if not self.merged:
            self._merge_scale = self.lora_magnitude_vector.float() / self.weight_norm().float()  # (out,)
            super().merge()  # W0 + delta_weight(), delta = g ⊙ (W0 + s·B·A) - W0

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W'/g - s·B·A. Idempotent."""
        if not self.merged:
            return
        weight = self.dense_weight()
        g = self._merge_scale[None, :] if self.fan_in_fan_out else self._merge_scale[:, None]  # over (in, out) / (out, in)
        lora = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling  # (out, in)
        lora = lora.t() if self.fan_in_fan_out else lora
        weight.copy_((weight.float() / g - lora).to(weight.dtype))
        self.merged = False
        self._merge_scale = None
        self._norm_cache = None

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora=True"
