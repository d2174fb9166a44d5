"""The model's own dropout, made cheap on CPU: hidden-state dropout and attention-probability dropout.

Why (profiled on CPU, MiniLM, batch 32 x 128 tokens, LoRA on query+value; see benchmarks/results/step_time.md): the
model's dropout layers cost more than all of LoRA's work. torch's CPU dropout draws one Bernoulli sample per
element (`bernoulli_`, about 22% of the whole training step), keeps the mask as a float tensor (4 bytes per
element) for backward and makes three passes (draw, divide, multiply). Most of it is the attention dropout on the
(batch, heads, T, T) probabilities, four times the size of the hidden states at T = 128.

Here the keep mask comes from fused.keep_mask: four 16-bit uniforms per 64-bit draw, compared with a threshold,
so P(drop) = round(p·65536)/65536 (for p = 0.1: 0.100006) and kept values are scaled by exactly 1/P(keep), i.e.
E[out] = x. The mask is saved as 1 byte per element. The distribution is the same as torch's up to that rounding;
the random stream is not, so a seed gives other masks than with torch's dropout.

`fast_dropout(model)` swaps every `nn.Dropout` for `FastDropout` (same p) and, for models that run attention
through transformers' "sdpa" interface, registers `attention` below as the implementation "lorakit_sdpa". That
computes softmax(Q·K^T·scale + mask)·V explicitly when it must apply dropout on CPU (torch's own CPU sdpa falls
back to that same explicit path whenever dropout > 0), and otherwise calls transformers' sdpa function unchanged.
On CUDA, in eval mode and for p = 0 both are exactly torch's dropout and sdpa: nothing changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.low_rank import keep_mask

ATTENTION = "lorakit_sdpa"


class _MaskedScale(torch.autograd.Function):
    """out = m ⊙ x · c for a fixed 0/1 mask m and constant c; d out/dx = m · c."""

    @staticmethod
    def forward(ctx, x, keep, c):
        ctx.save_for_backward(keep)
        ctx.c = c
        out = torch.where(keep, x, 0.0)  # one pass; float * uint8 would convert the mask first
        return out.mul_(c) if c != 1.0 else out

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        g = torch.where(keep, grad, 0.0)
        return (g.mul_(ctx.c) if ctx.c != 1.0 else g), None, None


def _keep(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    keep, inv_q = keep_mask(x.shape, p, x.device)  # (same shape as x) 0/1 uint8, 1 / P(keep)
    return keep.view(torch.bool), inv_q


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with torch's semantics; the cheap mask on CPU, torch's fused kernel elsewhere."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    keep, inv_q = _keep(x, p)
    return _MaskedScale.apply(x, keep, inv_q)  # m ⊙ x / q


class FastDropout(nn.Module):
    """Drop-in for `nn.Dropout(p)` (keeps `.p`, which attention modules read to pass to their kernel)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention interface: (module, q, k, v, mask, ...) -> (output (B, T, H, d), None).

    query (B, H, T, d), key/value (B, H, S, d), attention_mask additive float or bool (B or 1, 1 or H, T, S).
    The explicit path covers what an encoder needs while training (dropout > 0 on CPU, equal head counts, a mask
    or a non-causal module); everything else is transformers' sdpa call, untouched.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal  # as transformers' sdpa
    explicit = (
        dropout > 0.0
        and query.device.type == "cpu"
        and query.shape[1] == key.shape[1]
        and (attention_mask is not None or not causal)
        and not kwargs.get("output_attentions", False)
    )
    if not explicit:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # The two constants go on the (B, H, T, d) tensors, not on the 4x larger (B, H, T, S) ones: scale on Q, and
    # dropout's 1/q on the output, since (m ⊙ P / q)·V = ((m ⊙ P)·V) / q.
    scores = torch.matmul(query * scale, key.transpose(-2, -1))  # (B, H, T, S)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)  # (B, H, T, S)
    keep, inv_q = _keep(probs, dropout)
    out = torch.matmul(_MaskedScale.apply(probs, keep, 1.0), value).mul_(inv_q)  # (B, H, T, d)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)  # both registries are plain dicts: registering twice is fine
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks sdpa gets, built the same way


def fast_dropout(model: nn.Module) -> int:
    """Replace the model's dropout layers (and its sdpa attention's dropout) by the cheap ones; returns how many
    `nn.Dropout` layers were replaced. Idempotent; call it before training, after `add_lora` or not."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Dropout:  # not subclasses: their forward may do something else
                setattr(module, name, FastDropout(child.p))
                swapped += 1
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel) and model.config._attn_implementation == "sdpa":
        _register_attention()
        model.set_attn_implementation(ATTENTION)
    return swapped
