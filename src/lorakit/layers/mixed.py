"""Forward passes with more than one adapter: several summed, or a different adapter per batch row.

    summed (set_adapter([a, b])):   h = W0·x + b0 + Σ_k s_k·B_k·A_k·drop(x)
    mixed batch (mixed_batch):      h_i = W0·x_i + b0 + s_k(i)·B_k(i)·A_k(i)·x_i      for batch row i

A mixed batch is one batched computation, not one sub-batch per adapter (what PEFT does). The adapters the batch
uses in a layer are concatenated once along the rank, with each scaling folded into B,
    A_cat (Σr, in) = [A_1; ...; A_K],     B_cat (out, Σr) = [s_1·B_1, ..., s_K·B_K],
and a 0/1 mask M (rows, Σr) keeps, for row i, the columns of its own adapter k(i) (none for a base-model row):
    h_i += ((x_i · A_catᵀ) ⊙ M_i) · B_catᵀ  =  s_k(i)·B_k(i)·A_k(i)·x_i
Two plain matrix products over the whole batch, whatever the adapters' ranks: for K adapters of rank r the low-rank
work is K times one adapter's, small against W0·x while K·r << in (4 x r 8 on a 384-wide layer: 8%).
Inference only: a plan holds the concatenations it was built with (no gradient), and merged layers are refused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A LoRA layer's forward when a mixed batch is in effect or bank adapters are summed with the slot's."""
    if layer.rows is not None:
        return layer.rows.forward(layer, x)
    h = layer.base_layer(x)
    if layer.merged or layer.disabled:
        return h
    for name in (layer.adapter_name, *layer.also_active):
        h = h + layer.adapter_output(x, name).to(h.dtype)  # s_k·B_k·A_k·drop(x)
    return h


def row_index(layer: nn.Module, row_names: list[str | None]) -> tuple[list[str], torch.Tensor]:
    """The layer's adapters that the rows use, and each row's index into them (len(names) = "none here")."""
    names = [n for n in dict.fromkeys(row_names) if n is not None and n in layer.adapter_names()]
    position = {name: k for k, name in enumerate(names)}
    index = [position.get(name, len(names)) for name in row_names]
    return names, torch.tensor(index, dtype=torch.long)


class LinearRows:
    """A mixed-batch plan for a LoRALinear: A_cat, B_cat and the row mask M (see the module docstring)."""

    def __init__(self, layer: nn.Module, row_names: list[str | None]):
        names, index = row_index(layer, row_names)
        self.rows = len(row_names)
        if not names:  # no row uses an adapter of this layer
            self.a_cat = None
            return
        with torch.no_grad():
            pairs = [layer.low_rank(name) for name in names]
            self.a_cat = torch.cat([a for a, _, _ in pairs])  # (Σr, in)
            self.b_cat = torch.cat([b * s for _, b, s in pairs], dim=1)  # (out, Σr)
            owner = torch.cat([torch.full((a.shape[0],), k) for k, (a, _, _) in enumerate(pairs)])  # (Σr,)
            self.mask = (index[:, None] == owner[None, :]).to(self.a_cat)[:, None, :]  # (rows, 1, Σr)

    def forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:  # x: (rows, ..., in)
        if x.shape[0] != self.rows:
            raise ValueError(f"mixed_batch was given {self.rows} adapter names but the batch has {x.shape[0]} rows")
        h = layer.base_layer(x)
        if self.a_cat is None:
            return h
        x3 = x.reshape(x.shape[0], -1, x.shape[-1]).to(self.a_cat.dtype)  # (rows, T, in)
        xa = (x3 @ self.a_cat.t()).mul_(self.mask)  # (rows, T, Σr): each row keeps its adapter's columns
        h2 = h.view(-1, h.shape[-1])  # (rows·T, out), h's storage: the product is added in place
        h2.addmm_(xa.view(-1, xa.shape[-1]).to(h.dtype), self.b_cat.t().to(h.dtype))
        return h


class EmbeddingRows:
    """A mixed-batch plan for a LoRAEmbedding: each adapter's lookup on its own rows (embedding LoRA is rare)."""

    def __init__(self, layer: nn.Module, row_names: list[str | None]):
        self.names, self.index = row_index(layer, row_names)

    def forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:  # x: (rows, T) token ids
        h = layer.base_layer(x)
        index = self.index.to(x.device)
        for k, name in enumerate(self.names):
            rows = (index == k).nonzero().flatten()
            if rows.numel():
                h[rows] += layer.adapter_output(x[rows], name).to(h.dtype)
        return h


def dropped(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """dropout_p(x) in training, x otherwise (the general, unfused path)."""
    return F.dropout(x, p, training=True) if p > 0 and training else x
