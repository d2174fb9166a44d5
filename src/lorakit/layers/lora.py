"""The LoRA layers: a frozen base layer plus a trainable low-rank update.

    h = W0·x + b + (alpha / r) · B·A·dropout(x)          (Hu et al. 2021, "LoRA", eq. 3 and section 4.1)

    A: (r, in_features)   initialised kaiming-uniform ("kaiming", a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in)), PEFT's and
                          loralib's default), N(0, 1/r^2) ("gaussian", PEFT's) or N(0, 1/r) ("normal_1_over_r")
    B: (out_features, r)  initialised to zero, so the adapted layer starts exactly equal to the base layer

`LoRALinear` wraps (does not subclass) an `nn.Linear`, a transformers GPT-2 `Conv1D` (weight stored fan-in first,
(in, out)) or a lorakit `QuantLinear` (QLoRA: the same layer on a quantized base). `LoRAEmbedding` wraps an
`nn.Embedding`. Every trainable tensor is named `lora_*`, which is all the rest of lorakit needs to know.

State is explicit: `merge()` / `unmerge()` fold the update into W0 and back, idempotently, and nothing else
(not `.eval()`, not forward) changes it. `disabled = True` makes the layer compute the base layer alone. A layer
can hold several named adapters (bank.py: the one in use in the layer's own fields, the others in `bank`); with
one, the forward is the one below.

Usage:
    layer = LoRALinear(nn.Linear(768, 768), r=8, alpha=16)
    y = layer(x)            # (B, T, 768)
    layer.merge()           # W0 <- W0 + (alpha/r)·B·A; y is unchanged up to rounding
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorakit.layers import mixed
from lorakit.quant.int8_adapters import adapter_weights
from lorakit.layers.fused import lora_linear
from lorakit.quant.linear import QuantLinear, qlora_linear
from lorakit.layers.bank import Slots

def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    """alpha / r (the paper), or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023: keeps the update's scale with r)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _linear_features(base: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear-like layer; Conv1D keeps its weight as (in, out)."""
    if isinstance(base, Conv1D):
        return base.weight.shape[0], base.weight.shape[1]
    if isinstance(base, (nn.Linear, QuantLinear)):
        return base.in_features, base.out_features
    raise TypeError(
        f"LoRALinear wraps nn.Linear, transformers Conv1D or lorakit QuantLinear, got {type(base).__name__}"
    )


def _adapter_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """Adapters train in fp32 over 16-bit or quantized bases (as PEFT's autocast_adapter_dtype does)."""
    return weight_dtype if weight_dtype == torch.float32 or weight_dtype == torch.float64 else torch.float32


class Mergeable:
    """merge() / unmerge() of a LoRA layer: W0 <- W0 ± ΔW, computed in fp32 and cast back, idempotent. The layer
    gives `merged`, `delta_weight()` (ΔW shaped like W0) and `dense_weight()` (W0, a tensor that can hold the sum)."""

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + ΔW. Idempotent."""
        if not self.merged:
            weight = self.dense_weight()
            weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - ΔW: restores W0 (exactly in fp32 up to rounding). Idempotent."""
        if self.merged:
            weight = self.dense_weight()
            weight.copy_((weight.float() - self.delta_weight()).to(weight.dtype))
            self.merged = False


class LoRALinear(Mergeable, Slots, nn.Module):
    """h = W0·x + b + (alpha/r)·B·A·dropout(x) around a frozen Linear, Conv1D or QuantLinear."""

    ADAPTER_FIELDS = ("lora_A", "lora_B", "r", "alpha", "scaling", "dropout", "adapter_dtype")
    LOW_RANK_FIELDS = ("lora_A", "lora_B")
    ROW_PLAN = mixed.LinearRows

    def __init__(
        self,
        base_layer: nn.Module,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        init: str = "kaiming",
        adapter_dtype: str = "float32",
    ):
        super().__init__()
        in_features, out_features = _linear_features(base_layer)
        self.base_layer = base_layer.requires_grad_(False)
        self.in_features, self.out_features = in_features, out_features
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)  # weight is (in, out), not (out, in)
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.scaling = lora_scaling(r, alpha, use_rslora)
        self.merged = False  # W0 currently holds W0 + scaling·B·A
        self.disabled = False  # compute the base layer alone
        self.adapter_dtype = adapter_dtype  # "int8": A and B fake-quantized to int8 per row (quant/int8_adapters.py)
        if isinstance(base_layer, QuantLinear):  # packed codes: adapters in fp32 on the codes' device
            device, dtype = base_layer.qweight.device, torch.float32
        else:
            device, dtype = base_layer.weight.device, _adapter_dtype(base_layer.weight.dtype)
        # Stored as nn.Linear so state-dict keys are PEFT's: "<path>.lora_A.weight", "<path>.lora_B.weight".
        self.lora_A = nn.Linear(in_features, r, bias=False, device=device, dtype=dtype)  # A: (r, in)
        self.lora_B = nn.Linear(r, out_features, bias=False, device=device, dtype=dtype)  # B: (out, r)
        self.reset_lora_parameters(init)
        self.init_slots()

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight, read-only (PEFT's layers answer so; some models read e.g. `layer.weight.dtype`).

        A QuantLinear base answers its packed codes `qweight`, as PEFT's layers do for quantized bases (bnb's
        Linear4bit.weight is its packed Params4bit): the dtype and device of the storage, not a dense matrix.
        """
        base = self.base_layer
        return base.qweight if isinstance(base, QuantLinear) else base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (None when it has none), read-only."""
        return self.base_layer.bias

    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "kaiming") -> None:
        """A random, B = 0: the product B·A starts at zero, so training starts from the base model."""
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's init_lora_weights=True
        elif init == "gaussian":
            nn.init.normal_(self.lora_A.weight, mean=0.0, std=1.0 / self.r)  # PEFT's "gaussian": N(0, 1/r^2)
        elif init == "normal_1_over_r":
            nn.init.normal_(self.lora_A.weight, mean=0.0, std=1.0 / math.sqrt(self.r))  # N(0, 1/r)
        else:
            raise ValueError(f"init={init!r} is not supported; accepted: ['kaiming', 'gaussian', 'normal_1_over_r']")
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> h: (..., out)
        """One path per kind of layer state and base; the base kind is read per call (quantize_model may swap it)."""
        if self.rows is not None or self.also_active:  # a mixed batch, or several adapters summed (mixed.py)
            return mixed.forward(self, x)
        if self.merged or self.disabled:  # h = W0·x + b, W0 holding ΔW when merged
            return self.base_layer(x)
        if isinstance(self.base_layer, QuantLinear):
            return self._quantized_forward(x)
        return self._dense_forward(x)

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """nn.Linear / Conv1D base: h = W0·x + b + s·B·A·drop(x), W0 (out, in) ((in, out) for Conv1D)."""
        base = self.base_layer
        A, B = adapter_weights(self)  # lora_A.weight, lora_B.weight; fake-quantized if adapter_dtype == "int8"
        if self._fusable(x, A, base.weight.dtype):  # one autograd node (fused.py): saves x, not a dropout copy
            return lora_linear(x, base.weight, base.bias, A, B, self.scaling, self._dropout_p(), self.fan_in_fan_out)
        return self._unfused_forward(x)

    def _quantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        """QuantLinear base: h = dq(W)·x + b + s·B·A·drop(x), dq(W) (out, in) from the packed codes."""
        base = self.base_layer
        A, B = adapter_weights(self)
        if self._fusable(x, A, base.compute_dtype):  # the fused node on codes: no dense W0 saved for backward
            return qlora_linear(x, base, A, B, self.scaling, self._dropout_p())
        return self._unfused_forward(x)

    def _fusable(self, x: torch.Tensor, A: torch.Tensor, base_dtype: torch.dtype) -> bool:
        """The fused nodes compute in one dtype: x's, the adapter's and the base's, with autocast off."""
        same_dtype = x.dtype == A.dtype and not torch.is_autocast_enabled(x.device.type)
        return same_dtype and x.dtype == base_dtype

    def _dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def _unfused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Autocast or differing dtypes: plain ops, autograd does the rest. h = base(x) + s·B·A·drop(x)."""
        h = self.base_layer(x)  # W0·x + b
        return h + self.adapter_output(x, self.adapter_name).to(h.dtype)

    def adapter_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """s·B·A·dropout(x) of adapter `name` by plain ops: (..., in) -> (..., out)."""
        entry = self.entry(name)
        A, B = adapter_weights(entry)
        xa = mixed.dropped(x.to(A.dtype), entry.dropout, self.training)
        return F.linear(F.linear(xa, A), B) * entry.scaling  # (..., r) -> (..., out)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """scaling·B·A in fp32 (summed over the adapters in use), shaped like the base weight ((in, out) for Conv1D)."""
        delta = None
        for name in (self.adapter_name, *self.also_active):
            entry = self.entry(name)
            A, B = adapter_weights(entry)
            term = (B.float() @ A.float()) * entry.scaling  # (out, in)
            delta = term if delta is None else delta + term
        return delta.t() if self.fan_in_fan_out else delta

    def dense_weight(self) -> torch.Tensor:
        if isinstance(self.base_layer, QuantLinear):
            raise TypeError(
                "cannot merge LoRA into a quantized (QLoRA) base in place: the sum does not fit the 4/8-bit codes. "
                "Use lorakit.merge_and_unload(model), which dequantizes and returns a 16/32-bit model."
            )
        return self.base_layer.weight

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}, merged={self.merged}"


class LoRAEmbedding(Mergeable, Slots, nn.Module):
    """h = W0[x] + (alpha/r)·(A^T[x])·B^T around a frozen nn.Embedding (both terms times embed_scale where the base
    is a scaled word embedding, as in PEFT).

    A: (r, num_embeddings) starts at zero and B: (embedding_dim, r) is random, the paper's choice for embeddings
    (and PEFT's): the lookup A^T[x] selects columns of A, so a random B with zero A still starts at B·A = 0.
    Parameter names match PEFT's on-disk keys: "<path>.lora_embedding_A", "<path>.lora_embedding_B".
    """

    ADAPTER_FIELDS = ("lora_embedding_A", "lora_embedding_B", "r", "alpha", "scaling")
    LOW_RANK_FIELDS = ("lora_embedding_A", "lora_embedding_B")
    ROW_PLAN = mixed.EmbeddingRows

    def __init__(self, base_layer: nn.Embedding, r: int, alpha: float, use_rslora: bool = False):
        super().__init__()
        if not isinstance(base_layer, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps nn.Embedding, got {type(base_layer).__name__}")
        self.base_layer = base_layer.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scaling = lora_scaling(r, alpha, use_rslora)
        self.merged = False
        self.disabled = False
        weight = base_layer.weight
        dtype = _adapter_dtype(weight.dtype)
        self.lora_embedding_A = nn.Parameter(torch.zeros(r, base_layer.num_embeddings, device=weight.device, dtype=dtype))
        self.lora_embedding_B = nn.Parameter(torch.empty(base_layer.embedding_dim, r, device=weight.device, dtype=dtype))
        nn.init.normal_(self.lora_embedding_B)
        self.init_slots()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T) token ids -> (B, T, dim)
        if self.rows is not None or self.also_active:  # a mixed batch, or several adapters summed
            return mixed.forward(self, x)
        h = self.base_layer(x)
        if self.merged or self.disabled:
            return h
        return h + self.adapter_output(x, self.adapter_name).to(h.dtype)

    def adapter_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """s·(A^T[x])·B^T of adapter `name`: (B, T) ids -> (B, T, dim), times the base's embed_scale if it has one."""
        a, b, s = self.low_rank(name)
        after_a = F.embedding(x, a.t(), padding_idx=self.base_layer.padding_idx)  # (B, T, r)
        out = after_a @ b.t() * s
        scale = self.embed_scale()
        return out if scale is None else out * scale.to(out.dtype)

    def embed_scale(self) -> torch.Tensor | None:
        """The scale a *ScaledWordEmbedding (Gemma, M2M100, ...) multiplies its lookup by, as PEFT reads it: the
        adapter's term is scaled alike, so W0·s + ΔW·s is exactly what the merged table (W0 + ΔW)·s computes."""
        scale = getattr(self.base_layer, "embed_scale", None)
        if isinstance(scale, (int, float)):
            return torch.tensor(scale, device=self.base_layer.weight.device, dtype=self.base_layer.weight.dtype)
        return scale if isinstance(scale, torch.Tensor) and scale.numel() == 1 else None

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """scaling·(B·A)^T in fp32 (summed over the adapters in use): (num_embeddings, dim), like the table."""
        delta = None
        for name in (self.adapter_name, *self.also_active):
            a, b, s = self.low_rank(name)
            term = (b.float() @ a.float()).t() * s
            delta = term if delta is None else delta + term
        return delta

    def dense_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


LORA_LAYERS = (LoRALinear, LoRAEmbedding)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, layer) of every LoRA layer in the model, in model order."""
    return [(p, m) for p, m in model.named_modules() if isinstance(m, LORA_LAYERS)]
