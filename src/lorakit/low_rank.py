"""The low-rank branch h += s·B·A·(m ⊙ x / q), in pieces every LoRA autograd node shares: the dense one
(layers/fused.py), the quantized one (quant/linear.py) and DoRA's (layers/dora.py), and the cheap dropout mask.

Shapes: x2 (N, in); h (N, out); A (r, in); B (out, r); m (N, in) a 1-byte keep mask; q the keep probability.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_LEVELS = 1 << 16  # dropout masks are drawn as uniform 16-bit integers


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A 0/1 uint8 keep mask with P(drop) = round(p·65536)/65536, and the scale 1/P(keep) for the kept values.

    uint8 rather than bool: float * bool takes a slow type-promotion path on CPU (about 4x slower here).
    """
    n = 1
    for d in shape:
        n *= d
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    dropped = round(p * _LEVELS)
    keep = (bits >= dropped - _LEVELS // 2).view(torch.uint8)
    return keep, _LEVELS / (_LEVELS - dropped)


def low_rank_forward(x2: torch.Tensor, h: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float,
                     p: float) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """h += s·B·A·(m ⊙ x / q) in place, h (N, out) from x2 (N, in). Returns what backward needs: xa = A·(m ⊙ x)/q
    (N, r), the uint8 keep mask m (N, in) or None without dropout, and 1/q. Shared by LoRA's and QLoRA's nodes."""
    if p > 0:
        keep, inv_q = keep_mask(x2.shape, p, x2.device)  # (N, in) uint8
        xa = (x2 * keep) @ lora_a.t()  # (N, r); the masked copy is freed right away
        xa.mul_(inv_q)
    else:
        keep, inv_q = None, 1.0
        xa = x2 @ lora_a.t()  # (N, r)
    h.addmm_(xa, lora_b.t(), alpha=scaling)  # h += s·(A·x)·B^T, in place
    return xa, keep, inv_q


def low_rank_backward(g, x2, lora_a, lora_b, xa, keep, s: float, inv_q: float, need_a: bool, need_b: bool):
    """The low-rank branch's gradients from g = dL/dh (N, out): returns dL/d(xa) = s·g·B (N, r), dL/dA (r, in) and
    dL/dB (out, r) (None when not needed), and the keep mask as x's dtype (for add_low_rank_grad_x)."""
    # dL/d(xa) as linear(g, B^T) with B^T (r, out) contiguous (a copy of r·out numbers): MKL runs g·B with B
    # stored (out, r) about 2x slower (16 vs 8 ms for N=4096, out=1536, r=8, one thread).
    grad_xa = F.linear(g, lora_b.t().contiguous()).mul_(s)
    # s·g^T·xa: (out, r). Computed as (xa^T·g)^T: MKL runs g^T·xa (a transposed N x out operand against a
    # skinny one) about 8x slower than the same product in this order.
    grad_b = (xa.t() @ g).mul_(s).t() if need_b else None
    # float * uint8 converts the mask on every use: convert it once here for the two uses
    keep = keep.to(x2.dtype) if keep is not None else None  # (N, in) 0./1.
    grad_a = None
    if need_a:
        grad_a = (grad_xa.t() @ (x2 * keep if keep is not None else x2)).mul_(inv_q)  # (r, in)
    return grad_xa, grad_a, grad_b, keep


def add_low_rank_grad_x(grad_x, grad_xa, lora_a, keep, inv_q: float) -> None:
    """grad_x (N, in) += (dL/d(xa)·A) ⊙ m / q, in place: the low-rank path's share of dL/dx."""
    if keep is None:
        grad_x.addmm_(grad_xa, lora_a)
    else:
        grad_x.add_((grad_xa @ lora_a).mul_(keep), alpha=inv_q)  # the dropout mask gates the low-rank path
