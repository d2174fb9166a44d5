"""One autograd node for a LoRA linear layer: h = W0·x + b + s·B·A·(m ⊙ x / q).

Why a custom `torch.autograd.Function` (measured on CPU, MiniLM, batch 32 x 128 tokens; see benchmarks/):
  * Composing `base(x) + lora_B(lora_A(dropout(x)))` from nn modules saves a fresh dropout copy of x (N, in) in
    fp32 for every adapted layer, plus its mask, and allocates two (N, out) temporaries for the sum. Here the base
    matmul writes h, the low-rank product is accumulated into h in place (addmm_), and backward saves only x itself
    (one tensor shared by sibling layers such as query/key/value), a 1-byte keep mask and x·A^T (N, r).
  * Drawing the dropout mask with `bernoulli_` costs more than the base matmul itself on CPU (about 16 ms for a
    4096 x 384 input against 9 ms for the matmul). The mask here is drawn as 16-bit random integers, four per
    64-bit draw, compared with a threshold: about 7x cheaper. The drop probability is rounded to a multiple of
    1/65536 (for p = 0.1: 0.100006) and the kept values are scaled by exactly 1 / (keep probability).

Shapes: x (..., in) -> h (..., out); W0 (out, in) or, for GPT-2 Conv1D (fan_in_fan_out), (in, out);
A (r, in); B (out, r); m (N, in) with N = prod(...).
Frozen W0 and b get no gradient unless they require one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lorakit.low_rank import add_low_rank_grad_x, low_rank_backward, low_rank_forward

class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, p, fan_in_fan_out):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (N, in), a view
        w_t = weight if fan_in_fan_out else weight.t()  # (in, out), a view: no transpose copy
        h = torch.addmm(bias, x2, w_t) if bias is not None else x2 @ w_t  # (N, out) = W0·x + b
        xa, keep, inv_q = low_rank_forward(x2, h, lora_a, lora_b, scaling, p)
        ctx.save_for_backward(x, weight, lora_a, lora_b, xa, keep)
        ctx.scaling, ctx.inv_q, ctx.fan_in_fan_out, ctx.has_bias = scaling, inv_q, fan_in_fan_out, bias is not None
        return h.view(*shape[:-1], h.shape[-1])

    @staticmethod
    def backward(ctx, grad_h):
        x, weight, lora_a, lora_b, xa, keep = ctx.saved_tensors
        s, inv_q = ctx.scaling, ctx.inv_q
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        g = grad_h.reshape(-1, grad_h.shape[-1])  # (N, out)
        grad_xa, grad_a, grad_b, keep = low_rank_backward(g, x2, lora_a, lora_b, xa, keep, s, inv_q,
                                                          ctx.needs_input_grad[3], ctx.needs_input_grad[4])
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            w = weight.t() if ctx.fan_in_fan_out else weight  # (out, in)
            grad_x = g @ w  # (N, in): the frozen base path
            add_low_rank_grad_x(grad_x, grad_xa, lora_a, keep, inv_q)
            grad_x = grad_x.view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = g.t() @ x2  # (out, in)
            grad_w = grad_w.t() if ctx.fan_in_fan_out else grad_w
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None, None, None


def lora_linear(x, weight, bias, lora_a, lora_b, scaling: float, p: float, fan_in_fan_out: bool) -> torch.Tensor:
    """h = W0·x + b + scaling·B·A·dropout_p(x) as one fused autograd node (see the module docstring)."""
    return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, p, fan_in_fan_out)
