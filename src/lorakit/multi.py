"""Forward passes with more than one adapter: several summed, or a different adapter per batch row.

    summed (set_adapter([a, b])):   h = W0·x + b0 + Σ_k s_k·B_k·A_k·drop(x)
    mixed batch (mixed_batch):      h_i = W0·x_i + b0 + s_k(i)·B_k(i)·A_k(i)·x_i      for batch row i

A mixed batch is one batched computation, not one sub-batch per adapter (what PEFT does): the layer's adapters are
stacked once, zero-padded to the largest rank R, with a zero adapter for rows that use none,
    A_stack (K+1, R, in),  B_stack (K+1, out, R) with s_k folded in,
and each forward gathers every row's pair and runs two batched matmuls:
    xa = x_i · A_k(i)ᵀ  (rows, T, R),     h_i += xa · B_k(i)ᵀ  (rows, T, out)
The padding adds zero columns, so the result equals the adapter's own product; the cost is one rank-R LoRA.
Inference only: a plan holds the stacks it was built with (no gradient), and merged layers are refused.
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
    """The layer's adapters in stacking order and each row's index into them; len(names) = "no adapter here"."""
    names = layer.adapter_names()
    position = {name: k for k, name in enumerate(names)}
    index = [position.get(name, len(names)) if name is not None else len(names) for name in row_names]
    return names, torch.tensor(index, dtype=torch.long)


class LinearRows:
    """A mixed-batch plan for a LoRALinear: the stacked, padded adapters and each row's index (see module docstring)."""

    def __init__(self, layer: nn.Module, row_names: list[str | None]):
        names, self.index = row_index(layer, row_names)
        pairs = [layer.low_rank(name) for name in names]
        rank = max(a.shape[0] for a, _, _ in pairs)
        a0 = pairs[0][0]
        self.a_stack = a0.new_zeros(len(names) + 1, rank, layer.in_features)  # (K+1, R, in)
        self.b_stack = a0.new_zeros(len(names) + 1, layer.out_features, rank)  # (K+1, out, R)
        with torch.no_grad():
            for k, (a, b, s) in enumerate(pairs):
                self.a_stack[k, : a.shape[0]] = a
                self.b_stack[k, :, : a.shape[0]] = b * s
        self.index = self.index.to(a0.device)

    def forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:  # x: (rows, ..., in)
        h = layer.base_layer(x)
        rows = x.shape[0]
        if rows != self.index.numel():
            raise ValueError(f"mixed_batch was given {self.index.numel()} adapter names but the batch has {rows} rows")
        a = self.a_stack[self.index]  # (rows, R, in)
        b = self.b_stack[self.index]  # (rows, out, R)
        x3 = x.reshape(rows, -1, x.shape[-1]).to(a.dtype)  # (rows, T, in)
        delta = torch.bmm(torch.bmm(x3, a.transpose(1, 2)), b.transpose(1, 2))  # (rows, T, out)
        return h + delta.view(h.shape).to(h.dtype)


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
